"""A packet overtaken by its CID's retirement gets no stateless reset.

A client that moves to a new address retires the old path's CID in its first packets
from the new one; the server reads the two paths from different sockets, so the
retirement can be read before the last packets sent on the old path. Seen with ngtcp2's
gtlsclient (``--change-local-addr``) on a loaded machine: the server answered such a late
packet with a stateless reset carrying the retired CID's token, gtlsclient accepted it
and the connection died mid-download. The server now remembers retired CIDs for a while
(``endpoint/retired.py``) and drops those packets, counted; the data they carried comes
again.
"""

from __future__ import annotations

import hashlib
import os

from quicflow.endpoint import retired
from quicflow.endpoint.retired import RetiredCids
from quicflow.transport import pathprobe, stream_api
from tests.support.memory_pair import MemoryPair


def _switched_pair() -> tuple[MemoryPair, bytes, list[bytes], bytes]:
    """A confirmed connection whose client sent ``late`` (stream 0 data, the old CID) just
    before it switched to a new CID of the server's and retired the old one; the server
    has processed the retirement but not ``late``. Returns (pair, old CID, late, data)."""
    pair = MemoryPair(seed=31)
    client = pair.client
    pair.run(lambda: client.handshake_confirmed and len(client.peer_cids) > 1)
    (server,) = pair.server_conns
    old_cid = client.peer_cid
    data = os.urandom(20_000)
    sid = stream_api.open_stream(client)
    stream_api.send_stream_data(client, sid, data, True)
    late = [bytes(d) for d in pair.client_ep.datagrams_to_send(client, pair.now)]
    assert late and all(d[1:1 + len(old_cid)] == old_cid for d in late)
    pathprobe.use_fresh_peer_cid(client)  # a new CID, and RETIRE_CONNECTION_ID(old)
    assert client.peer_cid != old_cid
    pair.run(lambda: old_cid not in server.host_cid_list())
    return pair, old_cid, late, data


def test_a_late_packet_with_a_retired_cid_is_dropped_without_a_reset() -> None:
    pair, old_cid, late, data = _switched_pair()
    (server,) = pair.server_conns
    dropped = pair.server.counters.dropped_retired_cid
    for d in late:
        pair.server.receive(d, pair.client_addr, pair.now)
    assert pair.server.pop_stateless() == [], "no stateless reset for a retired CID"
    assert pair.server.counters.dropped_retired_cid == dropped + len(late)
    assert pair.server.stats()["dropped_retired_cid"] == dropped + len(late)
    got = bytearray()

    def done() -> bool:
        got.extend(stream_api.read_stream(server, 0, -1, pair.now))
        return len(got) == len(data)

    pair.run(done)  # what the dropped packets carried came again
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert not pair.client.terminated and not server.terminated


def test_a_retired_cid_is_forgotten_after_its_lifetime() -> None:
    """Remembered for a bounded time: past it, the CID is unknown again (a stateless reset
    is allowed then, RFC 9000 §10.3: the client must no longer match its token)."""
    pair, _, late, _ = _switched_pair()
    later = pair.now + retired.MAX_LIFETIME
    unknown = pair.server.counters.dropped_unknown_cid
    pair.server.receive(late[0], pair.client_addr, later)
    assert pair.server.counters.dropped_unknown_cid == unknown + 1
    assert len(pair.server.retired) == 0


def test_the_memory_is_bounded() -> None:
    cids = RetiredCids()
    for n in range(retired.MAX_RETIRED + 10):
        cids.record(n.to_bytes(8, "big"), 0.0, 0.01)
    assert len(cids) == retired.MAX_RETIRED
    assert not cids.holds((0).to_bytes(8, "big"), 0.5), "the oldest went first"
    assert cids.holds((retired.MAX_RETIRED + 9).to_bytes(8, "big"), 0.5)
    assert not cids.holds((retired.MAX_RETIRED + 9).to_bytes(8, "big"),
                          retired.MIN_LIFETIME)
    # a long PTO is capped, a short one raised to the floor
    cids.record(b"long-pto", 0.0, 3600.0)
    assert not cids.holds(b"long-pto", retired.MAX_LIFETIME)
