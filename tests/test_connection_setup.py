"""Connection set-up fast paths give what the general code gives.

Our transport parameters are encoded from a per-configuration tail plus the
connection's CIDs (transport/local_params.py): the bytes must be those of the full
encoder for every role, version, Retry and configuration, and a configuration changed
between connections must not reuse an old tail.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.keys import QUIC_V1, QUIC_V2
from quicflow.endpoint.endpoint import Endpoint
from quicflow.tls.certs import generate_self_signed
from quicflow.transport.config import Configuration
from quicflow.transport.factory import client_connection, server_connection
from quicflow.transport.local_params import encode_local_parameters
from quicflow.wire.tparams import decode_transport_parameters, encode_transport_parameters
from tests.support.memory_pair import SERVER_ADDR, MemoryPair

_CERT, _KEY = generate_self_signed(["localhost"])

_configs = st.fixed_dictionaries({
    "idle_timeout": st.sampled_from([0.0, 0.5, 30.0, 600.0]),
    "max_data": st.integers(0, 1 << 40),
    "max_stream_data": st.integers(0, 1 << 30),
    "max_streams_bidi": st.integers(0, 1000),
    "max_streams_uni": st.integers(0, 1000),
    "ack_delay_exponent": st.integers(0, 20),
    "max_ack_delay": st.sampled_from([0.001, 0.025, 0.2]),
    "active_connection_id_limit": st.integers(2, 8),
    "max_datagram_frame_size": st.sampled_from([0, 1200, 65535]),
    "disable_active_migration": st.booleans(),
    "versions": st.sampled_from([[QUIC_V1], [QUIC_V1, QUIC_V2], [QUIC_V2, QUIC_V1]]),
    "preferred_address": st.sampled_from([None, ("127.0.0.2", 4433)]),
    "connection_id_length": st.integers(4, 20),
})


@settings(max_examples=150, deadline=None)
@given(opts=_configs, server=st.booleans(), retry=st.booleans(),
       odcid=st.binary(min_size=8, max_size=20))
def test_local_parameters_match_the_full_encoder(opts: dict[str, object], server: bool,
                                                 retry: bool, odcid: bytes) -> None:
    cfg = Configuration(alpn_protocols=["x"], certificate_chain=[_CERT], private_key=_KEY,
                        **opts)  # type: ignore[arg-type]
    versions = cfg.versions
    if server:
        conn = server_connection(cfg, ("127.0.0.1", 5000), odcid, 1.0, client_scid=b"c" * 8,
                                 retry_scid=b"r" * 8 if retry else None,
                                 version=versions[0])
    else:
        conn = client_connection(cfg, ("127.0.0.1", 4433), 1.0)
    got = encode_local_parameters(conn)
    assert got == encode_transport_parameters(conn.local_params())
    params = decode_transport_parameters(got, from_server=server)
    assert params.initial_source_connection_id == conn.initial_scid
    assert params.initial_max_data == cfg.max_data


def test_changed_configuration_gets_new_parameters() -> None:
    cfg = Configuration(alpn_protocols=["x"], certificate_chain=[_CERT], private_key=_KEY,
                        max_data=1000)
    first = server_connection(cfg, ("127.0.0.1", 5000), b"o" * 8, 1.0, client_scid=b"c" * 8)
    assert decode_transport_parameters(encode_local_parameters(first),
                                       from_server=True).initial_max_data == 1000
    cfg.max_data = 5000
    second = server_connection(cfg, ("127.0.0.1", 5000), b"p" * 8, 1.0, client_scid=b"c" * 8)
    params = decode_transport_parameters(encode_local_parameters(second), from_server=True)
    assert params.initial_max_data == 5000
    assert params.original_destination_connection_id == b"p" * 8
    assert params.stateless_reset_token == second.host_cids[0].reset_token


def test_plaintext_cids_are_what_encode_cid_makes() -> None:
    from quicflow.endpoint.cids import CidGenerator
    from quicflow.endpoint.quiclb import QuicLbConfig, decode_server_id, encode_cid

    for config_id, sid_len, nonce_len in [(0, 2, 5), (3, 1, 4), (6, 8, 11)]:
        cfg = QuicLbConfig(config_id=config_id, server_id_len=sid_len, nonce_len=nonce_len)
        sid = bytes(range(1, sid_len + 1))
        gen = CidGenerator(cfg, sid)
        cids = {gen.generate() for _ in range(50)}
        assert len(cids) == 50  # random nonces
        for cid in cids:
            assert cid == encode_cid(cfg, sid, cid[1 + sid_len:])
            assert decode_server_id(cfg, cid) == sid and gen.is_ours(cid)


def test_server_tls_config_is_shared_until_a_value_changes() -> None:
    """A server's TlsConfig is made once per set of configuration values and shared by
    its connections; any value it is made of (changed in place or replaced, a new
    certificate or key object) gives the next connection a TlsConfig with the new
    value."""
    cert, key = generate_self_signed(["localhost"])
    cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                        ticket_key=bytes(32))

    def tls_of_new() -> object:
        conn = server_connection(cfg, ("127.0.0.1", 4433), b"\x01" * 8, 0.0)
        assert conn.tls is not None
        return conn.tls._hs.config

    first = tls_of_new()
    assert tls_of_new() is first
    cfg.alpn_protocols.append("h3")  # in place
    second = tls_of_new()
    assert second is not first and second.alpn_protocols == ["perf", "h3"]
    cfg.groups = ["secp256r1"]
    assert tls_of_new().groups == ["secp256r1"]
    cfg.max_data = 12345  # a limit a ticket remembers
    third = tls_of_new()
    assert third.ticket_parameters != second.ticket_parameters
    cfg.ticket_key = None
    assert tls_of_new().ticket_sealer is None
    cert2, key2 = generate_self_signed(["localhost"])
    cfg.certificate_chain, cfg.private_key = [cert2], key2
    fourth = tls_of_new()
    assert fourth.certificate_chain == [cert2] and fourth.private_key is key2
    assert tls_of_new() is fourth


def test_server_tls_config_checked_for_every_new_set_of_values() -> None:
    """The shared server TlsConfig is validated once, when made: a configuration TLS
    cannot use is refused with TlsConfig.validate's ValueError on every connection
    (nothing invalid is kept), also when a valid one is changed in place."""
    cert, key = generate_self_signed(["localhost"])
    cfg = Configuration(alpn_protocols=["x" * 256], certificate_chain=[cert],
                        private_key=key)
    for _ in range(2):
        with pytest.raises(ValueError, match="bad ALPN protocol"):
            server_connection(cfg, ("127.0.0.1", 4433), b"\x01" * 8, 0.0)
    cfg.alpn_protocols[0] = "perf"
    conn = server_connection(cfg, ("127.0.0.1", 4433), b"\x01" * 8, 0.0)
    assert conn.tls is not None and conn.tls._hs.config.alpn_protocols == ["perf"]
    cfg.alpn_protocols.append("")  # in place: an empty protocol name
    with pytest.raises(ValueError, match="bad ALPN protocol"):
        server_connection(cfg, ("127.0.0.1", 4433), b"\x01" * 8, 0.0)
    cfg.alpn_protocols.pop()
    cfg.certificate_chain = []  # a server without its certificate
    with pytest.raises(ValueError, match="needs certificate_chain"):
        server_connection(cfg, ("127.0.0.1", 4433), b"\x01" * 8, 0.0)


def test_a_second_servers_initial_is_discarded_by_the_client() -> None:
    """RFC 9000 §7.2: two servers behind one address both answer the client's Initial;
    the client keeps the first and discards every long-header packet with the other's
    Source Connection ID (counted), and completes its handshake with the first."""
    pair = MemoryPair(seed=22)
    second = Endpoint(Configuration(alpn_protocols=["perf"], certificate_chain=[_CERT],
                                    private_key=_KEY), is_server=True)
    client = pair.client
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
        second.receive(d, pair.client_addr, pair.now)
    (first_conn,), (second_conn,) = pair.server_conns, list(second.all_connections)
    answer = pair.server.datagrams_to_send(first_conn, pair.now)
    other = second.datagrams_to_send(second_conn, pair.now)
    for d in answer + other:
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    assert client.counters.dropped_other_scid >= len(other) > 0
    assert client.peer_initial_scid in first_conn.host_cid_list()
    pair.run(lambda: client.handshake_confirmed or client.terminated, max_time=5)
    assert client.handshake_confirmed and not client.terminated


@pytest.mark.parametrize("when", ["first", "later"])
def test_a_server_initial_with_a_token_is_discarded(when: str) -> None:
    """RFC 9000 §17.2.2: a server's Initial has Token Length 0; a client discards one
    with a token (before, it was processed: as the server's first Initial it would have
    picked the server's connection ID). A PING-only server Initial with a 3-byte token,
    as the first packet the client sees or after the server's flight: dropped and
    counted, and the handshake completes."""
    from quicflow.crypto.epoch import Epoch
    from quicflow.wire.packet import INITIAL, build_long_header

    pair = MemoryPair()
    client = pair.client
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    (server,) = pair.server_conns
    flight = pair.server.datagrams_to_send(server, pair.now)
    if when == "later":
        for d in flight:
            pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    payload = b"\x01" + bytes(1160)  # PING, PADDING (a datagram of 1200 bytes or more)
    space = server.spaces[0]
    pn = space.next_pn
    space.next_pn += 1
    header = build_long_header(INITIAL, server.version, server.peer_cid, server.initial_scid,
                               b"tok", 4 + len(payload) + 16, pn, 4)
    protector = server.send_protectors[Epoch.INITIAL]
    assert protector is not None
    packet = protector.seal(header, payload, pn)
    received = client.counters.packets_received
    dropped = client.counters.dropped_malformed
    assert len(packet) >= 1200
    pair.client_ep.receive(packet, SERVER_ADDR, pair.now)
    assert client.counters.packets_received == received, "the packet was processed"
    assert client.counters.dropped_malformed == dropped + 1
    if when == "first":
        assert client.peer_initial_scid is None
        for d in flight:
            pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    pair.run(lambda: client.handshake_confirmed or client.terminated, max_time=5)
    assert client.handshake_confirmed and not client.terminated


def test_a_server_discards_a_known_connections_initial_in_a_short_datagram() -> None:
    """RFC 9000 §14.1: a server discards an Initial packet in a datagram under 1200
    bytes. The endpoint did so for a first Initial only; one for a connection it holds
    was processed (and acknowledged: an amplification an attacker gets for 50 bytes).
    The same PING padded to 1200 bytes is taken."""
    from quicflow.crypto.epoch import Epoch

    from .support.forge import forge, raw

    pair = MemoryPair()
    client = pair.client
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    (server,) = pair.server_conns
    received = server.counters.packets_received
    short = forge(client, Epoch.INITIAL, raw(0x01))
    assert len(short) < 1200
    pair.server.receive(short, pair.client_addr, pair.now)
    assert server.counters.packets_received == received
    assert server.counters.dropped_short_initial == 1
    padded = forge(client, Epoch.INITIAL, raw(0x01), pad_to=1200)
    assert len(padded) >= 1200
    pair.server.receive(padded, pair.client_addr, pair.now)
    assert server.counters.packets_received == received + 1
