"""QUIC version 2 (RFC 9369) end to end, and compatible version negotiation (RFC 9368)."""

from __future__ import annotations

from collections.abc import Callable

from quicflow.transport.events import ConnectionTerminated
from quicflow.wire.packet import QUIC_V1, QUIC_V2, parse_header
from tests.support.memory_pair import MemoryPair
from tests.test_retry_tokens import _echo_transfer, client_config, server_config


def _spy(seen: set[int]) -> Callable[[int, bytes], int]:
    """An ECN callable for MemoryPair that notes the version of every long header."""

    def ecn(index: int, datagram: bytes) -> int:
        if datagram and datagram[0] & 0x80:
            seen.add(parse_header(datagram, 0, 8).version)
        return 0

    return ecn


def test_v2_client_and_server() -> None:
    seen: set[int] = set()
    pair = MemoryPair(server_config=server_config(),
                      client_config=client_config(versions=[QUIC_V2]), ecn=_spy(seen))
    pair.run(lambda: pair.client.handshake_confirmed)
    assert pair.client.version == QUIC_V2 and pair.server_conns[0].version == QUIC_V2
    assert seen == {QUIC_V2}
    _echo_transfer(pair)


def test_compatible_negotiation_upgrades_to_v2() -> None:
    """The client starts in v1 offering v2 then v1; the server answers in v2 and both
    continue in v2 (RFC 9368 §2.3), with a key update on the way."""
    seen: set[int] = set()
    pair = MemoryPair(server_config=server_config(),
                      client_config=client_config(versions=[QUIC_V2, QUIC_V1],
                                                  initial_version=QUIC_V1),
                      ecn=_spy(seen))
    pair.run(lambda: pair.client.handshake_confirmed)
    server = pair.server_conns[0]
    assert pair.client.version == QUIC_V2 and server.version == QUIC_V2
    assert seen == {QUIC_V1, QUIC_V2}  # the first Initial in v1, the rest in v2
    assert pair.client.peer_params is not None
    assert pair.client.peer_params.version_information == [QUIC_V2, QUIC_V1, QUIC_V2]
    pair.client.initiate_key_update()
    _echo_transfer(pair)
    assert server.key_updates_received == 1


def test_default_server_keeps_the_clients_version() -> None:
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed)
    assert pair.client.version == QUIC_V1 == pair.server_conns[0].version
    # a server without v2 keeps a client that prefers v2 but starts in v1 on v1
    pair = MemoryPair(server_config=server_config(versions=[QUIC_V1]),
                      client_config=client_config(versions=[QUIC_V2, QUIC_V1],
                                                  initial_version=QUIC_V1))
    pair.run(lambda: pair.client.handshake_confirmed)
    assert pair.client.version == QUIC_V1 == pair.server_conns[0].version


def test_v2_with_retry() -> None:
    pair = MemoryPair(server_config=server_config(retry="always"),
                      client_config=client_config(versions=[QUIC_V2]))
    pair.run(lambda: pair.client.handshake_confirmed)
    assert pair.client.retry_scid is not None and pair.client.version == QUIC_V2
    _echo_transfer(pair)


def test_version_negotiation_when_the_server_lacks_the_version() -> None:
    pair = MemoryPair(server_config=server_config(versions=[QUIC_V2]),
                      client_config=client_config(versions=[QUIC_V1]))
    for _ in range(4):
        pair.step()
    events = [e for e in pair.client.pop_events() if isinstance(e, ConnectionTerminated)]
    assert events and events[0].reason == "server does not support QUIC version 1"
    assert pair.server.counters.version_negotiations_sent == 1


def test_version_information_parameter() -> None:
    import pytest

    from quicflow.wire.errors import TransportParameterError
    from quicflow.wire.tparams import (
        TransportParameters,
        decode_transport_parameters,
        encode_transport_parameters,
    )

    tp = TransportParameters(version_information=[QUIC_V2, QUIC_V1, QUIC_V2],
                             max_datagram_frame_size=1200)
    back = decode_transport_parameters(encode_transport_parameters(tp), from_server=True)
    assert back.version_information == [QUIC_V2, QUIC_V1, QUIC_V2]
    assert back.max_datagram_frame_size == 1200
    for bad in (b"\x11\x03\x00\x00\x01", b"\x11\x04\x00\x00\x00\x00"):  # length 3; chosen 0
        with pytest.raises(TransportParameterError):
            decode_transport_parameters(bad, from_server=True)


def test_incompatible_negotiation_restarts_in_a_common_version() -> None:
    """A client that starts in v2 against a v1-only server gets Version Negotiation and
    starts over in v1 (RFC 9368 §2.1), once, with a new destination CID."""
    pair = MemoryPair(server_config=server_config(versions=[QUIC_V1]),
                      client_config=client_config(versions=[QUIC_V2, QUIC_V1]))
    first_dcid = pair.client.original_dcid
    pair.run(lambda: pair.client.handshake_confirmed)
    server = pair.server_conns[0]
    assert pair.client.version == QUIC_V1 == server.version
    assert pair.client.version_restarted and pair.client.original_dcid != first_dcid
    assert pair.server.counters.version_negotiations_sent == 1
    _echo_transfer(pair)
