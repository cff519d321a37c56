"""The receive path's shortcuts keep the protocol's behaviour: frames forbidden in 0-RTT
are refused by type (RFC 9000 §12.4), the 1-RTT header-protection keys read back from
the offload engine are the RFC 9001 §5.4 "quic hp" expansion on both engines, and the
received-packet bookkeeping (in-order ranges grown inline) still finds duplicates and
gaps."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quicflow.crypto import native
from quicflow.crypto.epoch import Epoch
from quicflow.crypto.keys import derive_hp_key
from quicflow.crypto.native import NativeOffloadEngine
from quicflow.crypto.offload import OffloadEngine, SoftwareOffloadEngine
from quicflow.transport.errors import PROTOCOL_VIOLATION, QuicError
from quicflow.transport.receive import _process_frames
from quicflow.transport.state import DRAINING

from .support.forge import forge, raw
from .support.memory_pair import MemoryPair


def _established() -> MemoryPair:
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_complete)
    return pair


# RFC 9000 §12.4, Table 3: the frame types a 0-RTT packet must not carry
FORBIDDEN_IN_0RTT = {
    "ACK": raw(0x02, 0, 0, 0, 0),
    "CRYPTO": raw(0x06, 0, 3, b"abc"),
    "NEW_TOKEN": raw(0x07, 4, b"abcd"),
    "RETIRE_CONNECTION_ID": raw(0x19, 0),
    "PATH_RESPONSE": raw(0x1B, bytes(8)),
    "HANDSHAKE_DONE": raw(0x1E),
}


@pytest.mark.parametrize("name", sorted(FORBIDDEN_IN_0RTT))
def test_frame_forbidden_in_0rtt_is_a_protocol_violation_naming_its_type(name: str) -> None:
    pair = _established()
    server = pair.server_conns[0]
    payload = raw(0x01) + FORBIDDEN_IN_0RTT[name]  # after a PING, which is allowed
    with pytest.raises(QuicError) as info:
        _process_frames(server, payload, Epoch.ZERO_RTT, pair.now)
    assert info.value.code == PROTOCOL_VIOLATION
    assert info.value.frame_type == FORBIDDEN_IN_0RTT[name][0]
    assert "not allowed in 0-RTT" in str(info.value)


def test_application_close_is_allowed_in_0rtt() -> None:
    pair = _established()
    server = pair.server_conns[0]
    assert not _process_frames(server, raw(0x1D, 7, 0), Epoch.ZERO_RTT, pair.now)
    assert server.state == DRAINING  # the peer's close was taken, not refused


@pytest.mark.parametrize("engine", ["native", "python"])
def test_one_rtt_header_protection_keys_are_the_quic_hp_expansion(
    engine: str, require: Callable[[bool, str], None]
) -> None:
    if engine == "native":
        require(native.available(), "the native engine is not built (make venv builds it)")
    pair = MemoryPair()
    chosen: OffloadEngine = (NativeOffloadEngine() if engine == "native"
                             else SoftwareOffloadEngine())
    pair.server.engine = chosen
    # the client confirms on the server's HANDSHAKE_DONE: a 1-RTT packet it opened
    pair.run(lambda: pair.client.handshake_confirmed)
    server = pair.server_conns[0]
    assert server.engine is chosen
    for conn in (server, pair.client):
        suite, version = conn.cipher_suite, conn.version
        assert conn.one_rtt_recv_hp == derive_hp_key(suite, conn.one_rtt_recv_secret, version)
        assert conn.one_rtt_send_hp == derive_hp_key(suite, conn.one_rtt_send_secret, version)
    received = server.counters.packets_received
    pair.server.receive(forge(pair.client, Epoch.ONE_RTT, raw(0x01)), pair.client_addr, pair.now)
    assert server.counters.packets_received == received + 1  # the server opened it


def test_duplicates_and_gaps_in_one_rtt_packet_numbers() -> None:
    pair = _established()
    client, server = pair.client, pair.server_conns[0]
    space = server.spaces[2]
    first = forge(client, Epoch.ONE_RTT, raw(0x01))
    pn = client.spaces[2].next_pn - 1
    pair.server.receive(first, pair.client_addr, pair.now)
    second = forge(client, Epoch.ONE_RTT, raw(0x01))
    pair.server.receive(second, pair.client_addr, pair.now)
    assert space.largest_received == pn + 1
    assert space.received.ends[-1] == pn + 2  # in order: one range grew
    ranges = len(space.received.starts)

    duplicates = server.counters.duplicate_packets
    pair.server.receive(first, pair.client_addr, pair.now)  # an old one again
    pair.server.receive(second, pair.client_addr, pair.now)  # the newest again
    assert server.counters.duplicate_packets == duplicates + 2
    assert space.largest_received == pn + 1

    client.spaces[2].next_pn += 3  # three packet numbers never arrive
    space.ack_immediately = False
    pair.server.receive(forge(client, Epoch.ONE_RTT, raw(0x01)), pair.client_addr, pair.now)
    assert space.ack_immediately  # a gap: acknowledged at once (RFC 9000 §13.2.1)
    assert len(space.received.starts) == ranges + 1
    assert space.largest_received == pn + 5
