"""Reserved header bits (RFC 9000 §17.2, §17.3.1): a packet that opens, once both packet
and header protection are removed, with its reserved bits set is a connection error of
type PROTOCOL_VIOLATION. On two sans-I/O endpoints, with the native and the pure-Python
engine, through the three ways a packet is opened: a 1-RTT datagram alone, a GRO batch's
run (``open_run``) and a long-header packet (``open_frames``)."""

from __future__ import annotations

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.keys import PacketProtector, derive_packet_keys
from quicflow.transport.connection import Connection
from quicflow.transport.errors import PROTOCOL_VIOLATION
from quicflow.transport.events import ConnectionTerminated
from quicflow.transport.state import CLOSING
from quicflow.wire.packet import HANDSHAKE, build_long_header, build_short_header

from .support.memory_pair import SERVER_ADDR, MemoryPair

PING_AND_PADDING = b"\x01" + b"\x00" * 40


def _confirmed(pair: MemoryPair) -> tuple[Connection, Connection]:
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    return pair.client, pair.server_conns[0]


def _one_rtt(client: Connection, reserved: int) -> bytes:
    """A 1-RTT packet from ``client`` (a PING), sealed with its keys, reserved bits
    ``reserved`` (0..3) in its first byte."""
    keys = derive_packet_keys(client.cipher_suite, client.one_rtt_send_secret,
                              client.version)  # fmt: skip
    header = bytearray(build_short_header(client.peer_cid, client.spaces[2].next_pn + 5, 2,
                                          client.send_key_phase))  # fmt: skip
    header[0] |= reserved << 3
    return PacketProtector(keys).seal(bytes(header), PING_AND_PADDING,
                                      client.spaces[2].next_pn + 5)  # fmt: skip


def _closed_for_reserved_bits(pair: MemoryPair, client: Connection, server: Connection) -> None:
    assert server.close_error is not None and server.close_error[0] == PROTOCOL_VIOLATION
    for d in pair.server.datagrams_to_send(server, pair.now):
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    ends = [e for e in client.events if isinstance(e, ConnectionTerminated)]
    assert ends and ends[0].error_code == PROTOCOL_VIOLATION and ends[0].by_peer


@pytest.mark.parametrize("path", ["datagram", "gro-batch"])
def test_a_one_rtt_packet_with_reserved_bits_closes_the_connection(engine: str,
                                                                   path: str) -> None:
    pair = MemoryPair(seed=31)
    client, server = _confirmed(pair)
    clean = _one_rtt(client, 0)  # the same packet without them is taken
    pair.server.receive(clean, pair.client_addr, pair.now)
    assert server.state < CLOSING and server.counters.packets_received > 0
    bad = _one_rtt(client, 2)
    if path == "datagram":
        pair.server.receive(bad, pair.client_addr, pair.now)
    else:
        pair.server.receive_batch(bad, len(bad), pair.client_addr, pair.now)
    _closed_for_reserved_bits(pair, client, server)


def test_a_handshake_packet_with_reserved_bits_closes_the_connection(engine: str) -> None:
    pair = MemoryPair(seed=32)
    client = pair.client
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    (server,) = pair.server_conns
    for d in pair.server.datagrams_to_send(server, pair.now):
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    protector = client.send_protectors[Epoch.HANDSHAKE]
    assert protector is not None and not server.handshake_complete
    pn = 50
    header = bytearray(build_long_header(HANDSHAKE, client.version, client.peer_cid,
                                         client.initial_scid, b"",
                                         2 + len(PING_AND_PADDING) + 16, pn, 2))  # fmt: skip
    header[0] |= 0x04  # one of the two reserved bits of a long header
    pair.server.receive(protector.seal(bytes(header), PING_AND_PADDING, pn), pair.client_addr,
                        pair.now)  # fmt: skip
    _closed_for_reserved_bits(pair, client, server)
