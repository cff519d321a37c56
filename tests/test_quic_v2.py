"""QUIC version 2 (RFC 9369) end to end, and compatible version negotiation (RFC 9368)."""

from __future__ import annotations

from collections.abc import Callable

from quicflow.transport.events import ConnectionTerminated
from quicflow.wire.packet import (
    QUIC_V1,
    QUIC_V2,
    VERSION_NEGOTIATION,
    build_version_negotiation,
    parse_header,
)
from tests.support.memory_pair import SERVER_ADDR, MemoryPair
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


def _server_initial_as_version_negotiation(pair: MemoryPair) -> bytes:
    """The server's first datagram with one corruption that makes it a well-formed
    Version Negotiation packet: the version field zeroed (and a tail of whole versions).
    Its connection IDs are the server's, not an echo of the client's."""
    for datagram in pair.client_ep.datagrams_to_send(pair.client, pair.now):
        pair.server.receive(datagram, pair.client_addr, pair.now)
    server_datagram = pair.server.datagrams_to_send(pair.server_conns[0], pair.now)[0]
    forged = bytearray(server_datagram)
    forged[1:5] = bytes(4)
    dcid_len = forged[5]
    versions_at = 7 + dcid_len + forged[6 + dcid_len]
    # what follows reads as versions; keep none that is ours (else the packet is
    # ignored for listing our version, the other rule)
    forged = forged[:versions_at] + bytes.fromhex("1a2a3a4aff00001d")
    header = parse_header(bytes(forged), 0, 8)
    assert header.packet_type == VERSION_NEGOTIATION
    assert header.scid != pair.client.original_dcid and QUIC_V1 not in header.supported_versions
    return bytes(forged)


def test_a_corrupted_packet_that_parses_as_version_negotiation_is_ignored() -> None:
    """RFC 9000 §6.2 and §17.2.1: a Version Negotiation packet that does not echo the
    client's connection IDs is dropped (counted), and the handshake goes on."""
    pair = MemoryPair()
    forged = _server_initial_as_version_negotiation(pair)
    dropped = pair.client.counters.packets_dropped
    pair.client_ep.receive(forged, SERVER_ADDR, pair.now)
    assert pair.client.counters.packets_dropped == dropped + 1
    assert not pair.client.terminated
    pair.run(lambda: pair.client.handshake_confirmed)
    assert pair.client.version == QUIC_V1


def test_version_negotiation_after_a_retry_is_ignored() -> None:
    """A client that has processed a Retry ignores Version Negotiation, even one that
    echoes its Initial's connection IDs and lists no version in common."""
    pair = MemoryPair(server_config=server_config(retry="always"),
                      client_config=client_config(versions=[QUIC_V1]))
    pair.run(lambda: pair.client.retry_scid is not None)
    client = pair.client
    vn = build_version_negotiation(client.initial_scid, client.original_dcid, [0x1A2A3A4A])
    dropped = client.counters.packets_dropped
    pair.client_ep.receive(vn, SERVER_ADDR, pair.now)
    assert client.counters.packets_dropped == dropped + 1 and not client.terminated
    pair.run(lambda: client.handshake_confirmed)


def test_version_negotiation_that_echoes_the_ids_ends_the_attempt() -> None:
    """The same packet before any other, echoing the client's IDs: the attempt ends
    (no version in common), as RFC 9000 §6.2 says."""
    pair = MemoryPair(client_config=client_config(versions=[QUIC_V1]))
    client = pair.client
    vn = build_version_negotiation(client.initial_scid, client.original_dcid, [0x1A2A3A4A])
    pair.client_ep.receive(vn, SERVER_ADDR, pair.now)
    events = [e for e in client.pop_events() if isinstance(e, ConnectionTerminated)]
    assert events and events[0].reason == "server does not support QUIC version 1"


def test_version_negotiation_after_a_server_initial_with_an_empty_cid_is_ignored() -> None:
    """A server may choose a zero-length connection ID: its Initial, once processed,
    still counts as "another packet" (RFC 9000 §6.2), so a Version Negotiation that
    echoes the client's IDs is ignored afterwards. (quicflow's own server always issues
    QUIC-LB IDs of 7 bytes or more: the empty SCID such a server's Initial leaves is set
    here directly.)"""
    pair = MemoryPair(client_config=client_config(versions=[QUIC_V1]))
    pair.run(lambda: pair.client.handshake_confirmed)
    client = pair.client
    client.peer_initial_scid = b""
    vn = build_version_negotiation(client.initial_scid, client.original_dcid, [0x1A2A3A4A])
    dropped = client.counters.packets_dropped
    pair.client_ep.receive(vn, SERVER_ADDR, pair.now)
    assert client.counters.packets_dropped == dropped + 1 and not client.terminated
    _echo_transfer(pair)


def test_a_second_version_negotiation_is_ignored() -> None:
    """RFC 9000 §6.2 (and RFC 9368 §2.1): a client discards Version Negotiation once it
    processed any other packet, an earlier Version Negotiation packet included. After
    the restart in v1, a second one that echoes the new IDs is dropped and the
    handshake goes on (before, the client gave up)."""
    pair = MemoryPair(server_config=server_config(versions=[QUIC_V1]),
                      client_config=client_config(versions=[QUIC_V2, QUIC_V1]))
    client = pair.client
    first = build_version_negotiation(client.initial_scid, client.original_dcid, [QUIC_V1])
    pair.client_ep.receive(first, SERVER_ADDR, pair.now)
    assert client.version_restarted and client.version == QUIC_V1
    second = build_version_negotiation(client.initial_scid, client.original_dcid,
                                       [0x1A2A3A4A])
    dropped = client.counters.packets_dropped
    pair.client_ep.receive(second, SERVER_ADDR, pair.now)
    assert client.counters.packets_dropped == dropped + 1 and not client.terminated
    pair.run(lambda: client.handshake_confirmed)
    _echo_transfer(pair)
