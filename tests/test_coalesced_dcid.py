"""A datagram is one connection's: packets coalesced after the first with another
Destination Connection ID are dropped (RFC 9000 §12.2), on two sans-I/O endpoints.

The server's offload engine holds every connection's 1-RTT keys by CID. Before this
check, another client's captured 1-RTT packet, appended to a junk long-header packet
addressed to an attacker's connection, was opened with the victim's keys and its frames
applied to the attacker's connection: the victim's request reached the attacker's
handler.
"""

from __future__ import annotations

from quicflow.transport import stream_api
from quicflow.transport.connection import Connection
from quicflow.wire.varint import push_varint

from .support.memory_pair import MemoryPair


def _server_of(pair: MemoryPair, client: Connection) -> Connection:
    (conn,) = [c for c in pair.server_conns if client.peer_cid in c.host_cid_list()]
    return conn


def _long_header_to(dcid: bytes) -> bytes:
    """A Handshake packet (QUIC v1) to ``dcid`` whose payload opens with no key."""
    out = bytearray([0xE0]) + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid + b"\x00"
    payload = b"\x00" * 30
    push_varint(out, len(payload))
    return bytes(out + payload)


def test_another_connections_packet_coalesced_after_ours_is_dropped() -> None:
    pair = MemoryPair(seed=11)
    attacker, victim = pair.client, pair.add_client()
    pair.run(lambda: len(pair.server_conns) == 2
             and all(c.handshake_confirmed for c in (*pair.server_conns, attacker, victim)))
    at_server, victim_at_server = _server_of(pair, attacker), _server_of(pair, victim)
    sid = stream_api.open_stream(victim)
    stream_api.send_stream_data(victim, sid, b"the victim's request", True)
    (captured,) = pair.client_ep.datagrams_to_send(victim, pair.now)
    assert not captured[0] & 0x80  # a 1-RTT packet: it can only come last in a datagram
    dropped = at_server.counters.dropped_other_dcid
    pair.server.receive(_long_header_to(attacker.peer_cid) + captured, pair.client_addr,
                        pair.now)
    assert at_server.counters.dropped_other_dcid == dropped + 1
    assert sid not in at_server.streams  # nothing of the victim's reached the attacker's
    assert not at_server.terminated
    # the victim's own copy still arrives, to its own connection, intact
    pair.server.receive(captured, pair.client_addr, pair.now)
    assert stream_api.read_stream(victim_at_server, sid, -1, pair.now) == b"the victim's request"
