"""Handshake failures end in the right TLS alert with a useful message."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from quicflow.crypto.epoch import Epoch
from quicflow.tls import (
    PrivateKey,
    TlsAlert,
    TlsConfig,
    TlsSession,
    certificate_pem,
    generate_ca,
    generate_self_signed,
    issue_certificate,
)
from quicflow.tls.messages import (
    CLIENT_HELLO,
    EXT_ALPN,
    EXT_QUIC_TRANSPORT_PARAMETERS,
    EXT_SUPPORTED_VERSIONS,
    decode_client_hello,
    encode_client_hello,
)
from quicflow.tls.verify import load_trust_store


@pytest.fixture(scope="module")
def cert() -> tuple[x509.Certificate, PrivateKey]:
    return generate_self_signed(["localhost"])


def pair(
    cert: x509.Certificate,
    key: PrivateKey,
    *,
    server_name: str = "localhost",
    cadata: bytes | None = None,
    client_alpn: list[str] | None = None,
    server_alpn: list[str] | None = None,
    client_kw: dict[str, object] | None = None,
    server_kw: dict[str, object] | None = None,
) -> tuple[TlsSession, TlsSession]:
    client = TlsSession(
        TlsConfig(
            is_client=True,
            alpn_protocols=client_alpn or ["perf"],
            server_name=server_name,
            cadata=cadata if cadata is not None else certificate_pem(cert),
            **(client_kw or {}),  # type: ignore[arg-type]
        ),
        b"ctp",
    )
    server = TlsSession(
        TlsConfig(
            is_client=False,
            alpn_protocols=server_alpn or ["perf"],
            certificate_chain=[cert],
            private_key=key,
            **(server_kw or {}),  # type: ignore[arg-type]
        ),
        b"stp",
    )
    return client, server


def run(client: TlsSession, server: TlsSession) -> None:
    client.start()
    while True:
        moved = False
        for src, dst in ((client, server), (server, client)):
            for epoch, data in src.pop_output():
                moved = True
                dst.receive(epoch, data)
        if not moved:
            return


def client_hello_bytes(cert: tuple[x509.Certificate, PrivateKey]) -> bytes:
    client, _ = pair(*cert)
    client.start()
    ((_, data),) = client.pop_output()
    return data


def test_wrong_host_name(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = pair(*cert, server_name="wrong.example")
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description in (42, 46)
    assert "wrong.example" in exc.value.message
    assert not client.handshake_complete


def test_unknown_ca(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    ca, _ = generate_ca("some other CA")
    client, server = pair(*cert, cadata=certificate_pem(ca))
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 48
    assert "localhost" in exc.value.message


def test_trust_store_is_parsed_once_and_reread_when_the_file_changes(
    cert: tuple[x509.Certificate, PrivateKey], tmp_path: Path
) -> None:
    # the parsed anchors are kept per (cafile, cadata, file stamp): the same store for
    # every handshake, a new one when the CA file is replaced (a handshake then fails
    # with unknown_ca against the new anchors), an alert when the file disappears
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(certificate_pem(cert[0]))
    kw = {"cafile": str(cafile)}
    client, server = pair(*cert, cadata=b"", client_kw=kw)
    run(client, server)
    assert client.handshake_complete
    first = load_trust_store(str(cafile), None)
    assert load_trust_store(str(cafile), None) is first
    other, _ = generate_ca("another CA")
    cafile.write_bytes(certificate_pem(other) + b"\n")  # another size: another stamp
    assert load_trust_store(str(cafile), None) is not first
    client, server = pair(*cert, cadata=b"", client_kw=kw)
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 48
    cafile.unlink()
    client, server = pair(*cert, cadata=b"", client_kw=kw)
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 46 and "trust anchors" in exc.value.message


def test_parsed_certificate_is_reused_but_still_verified(
    cert: tuple[x509.Certificate, PrivateKey]
) -> None:
    # the client keeps the parsed certificate of a server it saw (by DER): the next
    # handshake gets the same object, and it is verified again (a client trusting
    # another CA refuses it with unknown_ca)
    first, server = pair(*cert)
    run(first, server)
    again, server = pair(*cert)
    run(again, server)
    assert again.peer_certificates[0] is first.peer_certificates[0]
    ca, _ = generate_ca("not the issuer")
    client, server = pair(*cert, cadata=certificate_pem(ca))
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 48


def test_chain_from_other_ca(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    ca1, ca1_key = generate_ca("CA one")
    ca2, _ = generate_ca("CA two")
    leaf, key = issue_certificate(ca1, ca1_key, ["localhost"])
    client, server = pair(leaf, key, cadata=certificate_pem(ca2))
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 48


def test_no_alpn_overlap(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = pair(*cert, client_alpn=["h3"], server_alpn=["perf"])
    client.start()
    ((epoch, data),) = client.pop_output()
    with pytest.raises(TlsAlert) as exc:
        server.receive(epoch, data)
    assert exc.value.description == 120
    assert "h3" in exc.value.message


def _rewrite_client_hello(raw: bytes, drop: int) -> bytes:
    hello = decode_client_hello(raw[4:])
    hello.extensions = [(t, d) for t, d in hello.extensions if t != drop]
    out = encode_client_hello(hello)
    assert out[0] == CLIENT_HELLO
    return out


@pytest.mark.parametrize(
    ("drop", "description"),
    [(EXT_QUIC_TRANSPORT_PARAMETERS, 109), (EXT_ALPN, 120), (EXT_SUPPORTED_VERSIONS, 70)],
)
def test_missing_client_extension(
    cert: tuple[x509.Certificate, PrivateKey], drop: int, description: int
) -> None:
    _, server = pair(*cert)
    with pytest.raises(TlsAlert) as exc:
        server.receive(Epoch.INITIAL, _rewrite_client_hello(client_hello_bytes(cert), drop))
    assert exc.value.description == description


def test_no_common_cipher_suite(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    from quicflow.crypto.suites import CipherSuite

    client, server = pair(
        *cert,
        client_kw={"cipher_suites": [CipherSuite.AES_128_GCM_SHA256]},
        server_kw={"cipher_suites": [CipherSuite.CHACHA20_POLY1305_SHA256]},
    )
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 40


def test_no_common_group(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = pair(
        *cert, client_kw={"groups": ["x25519"]}, server_kw={"groups": ["secp256r1"]}
    )
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 40


def _server_flight(cert: tuple[x509.Certificate, PrivateKey]) -> tuple[TlsSession, bytes, bytes]:
    client, server = pair(*cert)
    client.start()
    for epoch, data in client.pop_output():
        server.receive(epoch, data)
    (_, sh), (_, flight) = server.pop_output()
    return client, sh, flight


def test_tampered_server_finished(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, sh, flight = _server_flight(cert)
    client.receive(Epoch.INITIAL, sh)
    bad = flight[:-1] + bytes([flight[-1] ^ 1])
    with pytest.raises(TlsAlert) as exc:
        client.receive(Epoch.HANDSHAKE, bad)
    assert exc.value.description == 51
    assert client.pop_secrets()[-1][0] == Epoch.HANDSHAKE  # no 1-RTT secrets


def test_tampered_certificate_verify(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, sh, flight = _server_flight(cert)
    client.receive(Epoch.INITIAL, sh)
    # locate CertificateVerify (type 15) by walking the messages
    pos = 0
    while flight[pos] != 15:
        pos += 4 + int.from_bytes(flight[pos + 1 : pos + 4], "big")
    bad = bytearray(flight)
    bad[pos + 12] ^= 0x40  # inside the signature
    with pytest.raises(TlsAlert) as exc:
        client.receive(Epoch.HANDSHAKE, bytes(bad))
    assert exc.value.description in (51, 50)


def test_server_flight_in_wrong_epoch(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, sh, flight = _server_flight(cert)
    client.receive(Epoch.INITIAL, sh)
    with pytest.raises(TlsAlert) as exc:
        client.receive(Epoch.INITIAL, flight)
    assert exc.value.description == 10


def test_client_hello_in_handshake_epoch(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    _, server = pair(*cert)
    with pytest.raises(TlsAlert) as exc:
        server.receive(Epoch.HANDSHAKE, client_hello_bytes(cert))
    assert exc.value.description == 10


def test_tampered_client_finished(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = pair(*cert)
    client.start()
    for epoch, data in client.pop_output():
        server.receive(epoch, data)
    for epoch, data in server.pop_output():
        client.receive(epoch, data)
    ((epoch, fin),) = client.pop_output()
    with pytest.raises(TlsAlert) as exc:
        server.receive(epoch, fin[:-1] + bytes([fin[-1] ^ 0x80]))
    assert exc.value.description == 51
    assert not server.handshake_complete


def test_garbage_after_client_hello_rejected(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    _, server = pair(*cert)
    with pytest.raises(TlsAlert) as exc:
        server.receive(Epoch.INITIAL, client_hello_bytes(cert) + b"\x14\x00")
    assert exc.value.description == 10


def test_key_update_forbidden_after_handshake(cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = pair(*cert)
    run(client, server)
    from quicflow.tls.tickets import NewSessionTicket, encode_new_session_ticket

    # a NewSessionTicket is taken (kept as a ticket), a KeyUpdate is refused
    client.receive(Epoch.ONE_RTT, encode_new_session_ticket(
        NewSessionTicket(60, 0, b"\x00", b"ticket", None)))
    with pytest.raises(TlsAlert) as exc:
        client.receive(Epoch.ONE_RTT, b"\x18\x00\x00\x01\x00")
    assert exc.value.description == 10
