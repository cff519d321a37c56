"""ClientHello checks a QUIC server must make (issue 10, item 11): pre_shared_key
without psk_key_exchange_modes (RFC 8446 §4.2.9/§9.2: missing_extension), a
pre_shared_key that is not the last extension (§4.2.11: illegal_parameter), and a
non-empty legacy_session_id (RFC 9001 §8.4: PROTOCOL_VIOLATION), in TLS alone and over
QUIC, where the client sees the error code."""

from __future__ import annotations

import pytest
from cryptography import x509

from quicflow.crypto.epoch import Epoch
from quicflow.tls import PrivateKey, TlsAlert, generate_self_signed
from quicflow.tls.messages import (
    EXT_PRE_SHARED_KEY,
    EXT_PSK_KEY_EXCHANGE_MODES,
    decode_client_hello,
    encode_client_hello,
)
from quicflow.transport.events import ConnectionTerminated
from quicflow.transport.streams import SendStream

from .support.memory_pair import MemoryPair
from .test_tls_errors import client_hello_bytes, pair

# a syntactically valid PreSharedKeyExtension: one identity, one 32-byte binder
_PSK = (b"\x00\x0a" + b"\x00\x04" + b"abcd" + b"\x00\x00\x00\x01"
        + b"\x00\x21" + b"\x20" + bytes(32))


def _rewrite(raw: bytes, *, session_id: bytes | None = None,
             add: list[tuple[int, bytes]] = (), drop: int | None = None) -> bytes:
    hello = decode_client_hello(raw[4:])
    if session_id is not None:
        hello.session_id = session_id
    hello.extensions = [(t, d) for t, d in hello.extensions if t != drop] + list(add)
    return encode_client_hello(hello)


@pytest.fixture(scope="module")
def cert() -> tuple[x509.Certificate, PrivateKey]:
    return generate_self_signed(["localhost"])


def _server_refuses(cert: tuple[x509.Certificate, PrivateKey], hello: bytes) -> TlsAlert:
    _, server = pair(*cert)
    with pytest.raises(TlsAlert) as exc:
        server.receive(Epoch.INITIAL, hello)
    return exc.value


def test_pre_shared_key_without_psk_key_exchange_modes_is_refused(
    cert: tuple[x509.Certificate, PrivateKey],
) -> None:
    raw = client_hello_bytes(cert)
    alert = _server_refuses(cert, _rewrite(raw, drop=EXT_PSK_KEY_EXCHANGE_MODES,
                                           add=[(EXT_PRE_SHARED_KEY, _PSK)]))
    assert alert.description == 109 and alert.quic_error_code == 0x100 + 109
    assert "psk_key_exchange_modes" in alert.message


def test_pre_shared_key_not_last_is_refused(
    cert: tuple[x509.Certificate, PrivateKey],
) -> None:
    raw = client_hello_bytes(cert)
    hello = decode_client_hello(raw[4:])
    hello.extensions = ([(EXT_PRE_SHARED_KEY, _PSK), (EXT_PSK_KEY_EXCHANGE_MODES, b"\x01\x01")]
                        + [(t, d) for t, d in hello.extensions
                           if t != EXT_PSK_KEY_EXCHANGE_MODES])
    alert = _server_refuses(cert, encode_client_hello(hello))
    assert alert.description == 47


def test_non_empty_legacy_session_id_is_a_protocol_violation(
    cert: tuple[x509.Certificate, PrivateKey],
) -> None:
    alert = _server_refuses(cert, _rewrite(client_hello_bytes(cert), session_id=bytes(32)))
    assert alert.quic_error_code == 0x0A and "legacy_session_id" in alert.message


def _quic_client_sends(pair_: MemoryPair, **rewrite: object) -> ConnectionTerminated:
    client = pair_.client
    space = client.spaces[0]
    raw = b"".join(space.crypto_send.chunks)
    space.crypto_send = SendStream(max_data=1 << 62)
    space.crypto_send.write(_rewrite(raw, **rewrite))  # type: ignore[arg-type]
    events: list[object] = []

    def closed() -> bool:
        events.extend(client.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    pair_.run(closed)
    return next(e for e in events if isinstance(e, ConnectionTerminated))


def test_over_quic_the_client_sees_protocol_violation_for_a_session_id() -> None:
    term = _quic_client_sends(MemoryPair(), session_id=b"\x01" * 8)
    assert (term.error_code, term.by_peer) == (0x0A, True)


def test_over_quic_the_client_sees_missing_extension_for_a_bare_psk() -> None:
    term = _quic_client_sends(MemoryPair(), drop=EXT_PSK_KEY_EXCHANGE_MODES,
                              add=[(EXT_PRE_SHARED_KEY, _PSK)])
    assert (term.error_code, term.by_peer) == (0x100 + 109, True)


#: extension bodies whose list is empty where RFC 8446 asks for at least one entry
_EMPTY_LISTS = {"supported_versions": (43, b"\x00"), "signature_algorithms": (13, b"\x00\x00"),
                "supported_groups": (10, b"\x00\x00"),
                "key_exchange": (51, b"\x00\x04\x00\x1d\x00\x00")}


@pytest.mark.parametrize("field", ["session_id", "cipher_suites", *_EMPTY_LISTS])
def test_an_out_of_range_length_is_a_decode_error(
    cert: tuple[x509.Certificate, PrivateKey], field: str,
) -> None:
    """RFC 8446 §6: a field whose length is outside its vector's range (a 33-byte
    legacy_session_id<0..32>, an empty cipher_suites<2..2^16-2>, supported_versions,
    signature_algorithms or supported_groups list, an empty key_exchange<1..2^16-1>)
    is a decode_error (before: illegal_parameter, handshake_failure or
    protocol_version), with the native ClientHello parser and the Python one alike."""
    hello = decode_client_hello(client_hello_bytes(cert)[4:])
    if field == "session_id":
        hello.session_id = bytes(33)
    elif field == "cipher_suites":
        hello.cipher_suites = []
    else:
        ext_type, body = _EMPTY_LISTS[field]
        hello.extensions = [(t, body if t == ext_type else d) for t, d in hello.extensions]
    alert = _server_refuses(cert, encode_client_hello(hello))
    assert alert.description == 50 and alert.quic_error_code == 0x132


def test_a_resumption_server_hello_without_key_share_is_illegal_parameter() -> None:
    """RFC 8446 §4.2.11: a client that offered psk_dhe_ke only aborts with
    illegal_parameter when the server selects its PSK without a key_share (before:
    missing_extension)."""
    import os
    import struct
    import time

    from quicflow.tls import TlsConfig, TlsSession, certificate_pem
    from quicflow.tls.messages import (
        EXT_SUPPORTED_VERSIONS,
        SERVER_HELLO,
        encode_extensions,
        handshake,
    )
    from quicflow.tls.tickets import ticket_sealer

    cert, key = generate_self_signed(["localhost"])
    sealer = ticket_sealer(b"ticket key".ljust(32, b"."))
    now = time.time()

    def sessions(ticket: object = None) -> tuple[TlsSession, TlsSession]:
        c = TlsSession(TlsConfig(is_client=True, alpn_protocols=["perf"],
                                 server_name="localhost", cadata=certificate_pem(cert),
                                 session_ticket=ticket), b"c")
        s = TlsSession(TlsConfig(is_client=False, alpn_protocols=["perf"],
                                 certificate_chain=[cert], private_key=key,
                                 ticket_sealer=sealer), b"s")
        c.set_wall_time(now)
        s.set_wall_time(now)
        return c, s

    client, server = sessions()
    client.start()
    for _ in range(4):
        for a, b in ((client, server), (server, client)):
            for epoch, data in a.pop_output():
                b.receive(epoch, data)
    (ticket,) = client.pop_tickets()
    client, _ = sessions(ticket)
    client.start()
    client.pop_output()
    body = (struct.pack("!H", 0x0303) + os.urandom(32) + b"\x00"
            + struct.pack("!HB", ticket.suite, 0)
            + encode_extensions([(EXT_SUPPORTED_VERSIONS, b"\x03\x04"),
                                 (EXT_PRE_SHARED_KEY, b"\x00\x00")]))
    with pytest.raises(TlsAlert) as exc:
        client.receive(Epoch.INITIAL, handshake(SERVER_HELLO, body))
    assert exc.value.description == 47
