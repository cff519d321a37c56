"""A FIN sent alone (a STREAM frame of no bytes at the stream's end) is acknowledged
while bytes before it are not: the sender takes the acknowledgment and still resends
the missing bytes.

The stall this guards against (tests/test_takeover_native_clients.py, picoquic, about 1
in 7 runs): a server sent a file's last bytes, then the FIN alone; the client's receive
buffer dropped the last data packets and acknowledged the FIN's packet. Taking that
acknowledgment raised IndexError in ``SendStream.on_acked`` (an empty range added to an
empty acknowledged-ranges set, then its first range read), after loss detection had
already removed the lost packets from the sent record but before their bytes were marked
lost: nothing in flight, nothing to resend, the client waiting for bytes that never came
until the idle timeout.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport import receive
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.errors import INTERNAL_ERROR
from quicflow.transport.events import ConnectionTerminated
from quicflow.transport.streams import SendStream
from quicflow.wire import frames as F
from tests.support.memory_pair import _CERT, SERVER_ADDR, MemoryPair


def test_send_stream_takes_a_fin_acknowledged_before_the_bytes() -> None:
    send = SendStream(max_data=1 << 20)
    data = bytes(range(256)) * 12  # 3072 bytes
    send.write(data)
    assert send.next_chunk(1000, 1 << 20) == (0, data[:1000], False, 1000)
    assert send.next_chunk(4000, 1 << 20) == (1000, data[1000:], False, 2072)
    send.write(b"", fin=True)
    assert send.next_chunk(4000, 1 << 20) == (3072, b"", True, 0)  # the FIN alone
    assert send.on_acked(3072, 0, True) == 0  # its packet first: nothing released yet
    assert send.fin_acked and send.acked_offset == 0 and not send.is_complete()
    send.on_lost(0, 1000, False)
    send.on_lost(1000, 2072, False)
    assert send.has_data_to_send()
    assert send.next_chunk(4000, 0) == (0, data, False, 0)  # resent, no new credit
    assert send.on_acked(0, 3072, False) == 3072
    assert send.is_complete()


def test_acknowledged_fin_alone_does_not_strand_lost_bytes() -> None:
    cert, key = _CERT
    server = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key)
    client_cfg = Configuration(alpn_protocols=["perf"], verify_peer=False)
    pair = MemoryPair(server_config=server, client_config=client_cfg)
    client = pair.client
    pair.run(lambda: client.handshake_confirmed and not client.spaces[2].ack_pending
             and not client.loss.bytes_in_flight)
    srv = pair.server_conns[0]
    body = hashlib.sha256(b"body").digest() * (6 * 1024 // 32)
    sid = client.open_stream()
    client.send_stream_data(sid, body)
    data_flight = pair.client_ep.datagrams_to_send(client, pair.now)
    assert len(data_flight) >= 4  # enough packets after them for the packet threshold
    client.send_stream_data(sid, b"", end_stream=True)
    fin_flight = pair.client_ep.datagrams_to_send(client, pair.now)
    assert len(fin_flight) == 1
    # the data is lost on the way; only the FIN's datagram arrives and is acknowledged
    pair.now += 0.001
    pair.server.receive(fin_flight[0], pair.client_addr, pair.now)
    acks = pair.server.datagrams_to_send(srv, pair.now + 0.03)  # (its ACK delay)
    assert acks
    for datagram in acks:
        pair.client_ep.receive(datagram, SERVER_ADDR, pair.now + 0.031)
    send = client.streams[sid].send
    assert send is not None and send.fin_acked and send.acked_offset == 0
    # the data packets three or more below the FIN's are lost at once (the packet
    # threshold), the rest by time later: the first bytes wait to be resent
    assert send.lost.starts == [0] and 0 < send.lost.ends[0] <= len(body)
    got = bytearray()

    def done() -> bool:
        got.extend(srv.read_stream(sid, -1, pair.now))
        return len(got) >= len(body) and srv.stream_at_eof(sid)

    pair.run(done, max_time=10.0)
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert client.counters.packets_lost >= len(data_flight)


def test_a_bug_in_taking_a_packet_closes_that_connection_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception that is no protocol violation (a bug of ours, injected here into the
    MAX_DATA handler of one server connection) closes that connection with
    INTERNAL_ERROR, is logged with its traceback, and leaves the other connection of the
    same endpoint working (it used to escape the endpoint: the round's other datagrams
    were never taken and the connection stayed half-updated)."""
    pair = MemoryPair()
    one, two = pair.client, pair.add_client()
    pair.run(lambda: one.handshake_confirmed and two.handshake_confirmed
             and len(pair.server_conns) == 2)
    broken = next(c for c in pair.server_conns if c.peer_cids[0].cid == one.host_cids[0].cid)
    real = receive._HANDLERS[F.MaxData]
    assert real is not None

    def buggy(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
        if conn is broken:
            raise RuntimeError("injected")
        real(conn, frame, epoch, now)

    monkeypatch.setitem(receive._HANDLERS, F.MaxData, buggy)
    one.flow.pending_max_data = two.flow.pending_max_data = True
    events: list[object] = []

    def one_closed() -> bool:
        events.extend(one.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    with caplog.at_level(logging.ERROR, logger="quicflow.transport"):
        pair.run(one_closed, max_time=10.0)
    term = next(e for e in events if isinstance(e, ConnectionTerminated))
    assert isinstance(term, ConnectionTerminated)
    assert (term.error_code, term.by_peer) == (INTERNAL_ERROR, True)
    assert any(r.exc_info and "injected" in str(r.exc_info[1]) for r in caplog.records)
    # the other connection goes on: a stream's bytes arrive whole
    body = hashlib.sha256(b"two").digest() * 2048
    sid = two.open_stream()
    two.send_stream_data(sid, body, end_stream=True)
    other = next(c for c in pair.server_conns if c is not broken)
    got = bytearray()

    def done() -> bool:
        got.extend(other.read_stream(sid, -1, pair.now))
        return len(got) >= len(body) and other.stream_at_eof(sid)

    pair.run(done, max_time=10.0)
    assert bytes(got) == body and two.state < 2
