"""The client's first flight: what a configuration fixes is encoded once, and every
ClientHello still carries its own random, key share and transport parameters."""

from __future__ import annotations

from quicflow.tls.client import ClientHandshake
from quicflow.tls.config import TlsConfig
from quicflow.tls.messages import (
    CLIENT_HELLO,
    EXT_ALPN,
    EXT_KEY_SHARE,
    EXT_PSK_KEY_EXCHANGE_MODES,
    EXT_QUIC_TRANSPORT_PARAMETERS,
    EXT_SERVER_NAME,
    EXT_SIGNATURE_ALGORITHMS,
    EXT_SUPPORTED_GROUPS,
    EXT_SUPPORTED_VERSIONS,
    TLS13,
    ClientHello,
    decode_client_hello,
    parse_alpn,
    parse_server_name,
    parse_supported_versions_client,
)


def _hello(alpn: list[str], server_name: str | None, params: bytes) -> tuple[bytes, ClientHello]:
    hs = ClientHandshake(TlsConfig(is_client=True, alpn_protocols=alpn,
                                   server_name=server_name, verify_peer=False), params)
    hs.start()
    (_, data), = hs.output
    assert data[0] == CLIENT_HELLO
    return data, decode_client_hello(data[4:])


def test_client_hellos_of_one_configuration_differ_only_where_they_must() -> None:
    a_bytes, a = _hello(["perf", "h3"], "example.test", b"\x0f\x01\xaa")
    b_bytes, b = _hello(["perf", "h3"], "example.test", b"\x0f\x01\xbb")
    assert a_bytes != b_bytes
    assert a.random != b.random
    ea, eb = a.ext_map, b.ext_map
    assert [t for t, _ in a.extensions] == [
        EXT_SERVER_NAME, EXT_SUPPORTED_VERSIONS, EXT_SUPPORTED_GROUPS, EXT_KEY_SHARE,
        EXT_SIGNATURE_ALGORITHMS, EXT_ALPN, EXT_QUIC_TRANSPORT_PARAMETERS,
        EXT_PSK_KEY_EXCHANGE_MODES,
    ]
    assert ea[EXT_KEY_SHARE] != eb[EXT_KEY_SHARE]  # a fresh key each time
    assert (ea[EXT_QUIC_TRANSPORT_PARAMETERS], eb[EXT_QUIC_TRANSPORT_PARAMETERS]) == (
        b"\x0f\x01\xaa", b"\x0f\x01\xbb")
    for ext in (EXT_SUPPORTED_VERSIONS, EXT_SUPPORTED_GROUPS, EXT_SIGNATURE_ALGORITHMS,
                EXT_ALPN, EXT_PSK_KEY_EXCHANGE_MODES, EXT_SERVER_NAME):
        assert ea[ext] == eb[ext]
    assert parse_supported_versions_client(ea[EXT_SUPPORTED_VERSIONS]) == [TLS13]
    assert parse_alpn(ea[EXT_ALPN]) == ["perf", "h3"]
    assert parse_server_name(ea[EXT_SERVER_NAME]) == "example.test"


def test_each_configuration_gets_its_own_protocols_and_name() -> None:
    _, h3 = _hello(["h3"], "other.test", b"")
    _, perf = _hello(["perf"], "127.0.0.1", b"")
    assert parse_alpn(h3.ext_map[EXT_ALPN]) == ["h3"]
    assert parse_alpn(perf.ext_map[EXT_ALPN]) == ["perf"]
    assert parse_server_name(h3.ext_map[EXT_SERVER_NAME]) == "other.test"
    assert EXT_SERVER_NAME not in perf.ext_map  # no SNI for an IP literal
