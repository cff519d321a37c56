"""Client certificates (RFC 8446 §4.3.2, §4.4.2-4.4.3), our TLS client and server in memory:
a server that requests or requires one, a client that presents a chain or answers with
an empty Certificate, and the alerts a wrong CA, a missing certificate and a bad
signature get."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.tls import (
    PrivateKey,
    TlsAlert,
    TlsConfig,
    TlsSession,
    certificate_pem,
    generate_ca,
    issue_certificate,
)
from quicflow.tls.messages import (
    CERTIFICATE_REQUEST,
    CERTIFICATE_VERIFY,
    Reader,
    decode_certificate_request,
    encode_certificate_request,
    parse_u16_list,
    u16_list,
)

Pki = tuple[x509.Certificate, PrivateKey, x509.Certificate, PrivateKey]


@pytest.fixture(scope="module")
def pki() -> Pki:
    """(CA, CA key, server certificate, server key); the server is 'localhost'."""
    ca, ca_key = generate_ca("quicflow client-cert test CA")
    cert, key = issue_certificate(ca, ca_key, ["localhost"])
    return ca, ca_key, cert, key


def sessions(
    pki: Pki,
    mode: str,
    client_chain: list[x509.Certificate] | None = None,
    client_key: PrivateKey | None = None,
    server_ca: x509.Certificate | None = None,
) -> tuple[TlsSession, TlsSession]:
    ca, _, cert, key = pki
    client = TlsSession(
        TlsConfig(
            is_client=True,
            alpn_protocols=["perf"],
            server_name="localhost",
            cadata=certificate_pem(ca),
            certificate_chain=client_chain or [],
            private_key=client_key,
        ),
        b"c",
    )
    server = TlsSession(
        TlsConfig(
            is_client=False,
            alpn_protocols=["perf"],
            certificate_chain=[cert],
            private_key=key,
            cadata=certificate_pem(server_ca or ca),
            client_certificates=mode,
        ),
        b"s",
    )
    return client, server


def messages(data: bytes) -> list[tuple[int, int, int]]:
    """(type, start, end) of each handshake message in ``data``."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        out.append((data[pos], pos, pos + 4 + length))
        pos += 4 + length
    return out


def run(client: TlsSession, server: TlsSession, tamper: bool = False) -> None:
    client.start()
    while True:
        moved = False
        for src, dst in ((client, server), (server, client)):
            for epoch, data in src.pop_output():
                moved = True
                if tamper and src is client and epoch == Epoch.HANDSHAKE:
                    for msg_type, _, end in messages(data):
                        if msg_type == CERTIFICATE_VERIFY:  # flip the signature's last byte
                            data = data[: end - 1] + bytes([data[end - 1] ^ 1]) + data[end:]
                dst.receive(epoch, data)
        if not moved:
            return


@pytest.mark.parametrize("key_type", ["ec", "ed25519", "rsa"])
def test_required_and_presented(pki: Pki, key_type: str) -> None:
    ca, ca_key, server_cert, _ = pki
    cert, key = issue_certificate(ca, ca_key, ["client.example"], key_type,  # type: ignore[arg-type]
                                  client_auth=True)
    client, server = sessions(pki, "require", [cert], key)
    run(client, server)
    assert client.handshake_complete and server.handshake_complete
    assert server.peer_certificates == [cert]
    assert client.peer_certificates == [server_cert]
    assert server.peer_certificate_ders == [cert.public_bytes(Encoding.DER)]
    # both sides derived the same 1-RTT secrets (the client Certificate/CV are in both
    # transcripts)
    c_sec = {(e, s): sec for e, s, _, sec in client.pop_secrets()}
    s_sec = {(e, s): sec for e, s, _, sec in server.pop_secrets()}
    assert c_sec[(Epoch.ONE_RTT, True)] == s_sec[(Epoch.ONE_RTT, False)]


def test_request_without_certificate_completes(pki: Pki) -> None:
    client, server = sessions(pki, "request")
    run(client, server)
    assert client.handshake_complete and server.handshake_complete
    assert server.peer_certificates == []


def test_no_request_sends_no_certificate_request(pki: Pki) -> None:
    ca, ca_key, _, _ = pki
    cert, key = issue_certificate(ca, ca_key, ["client.example"], client_auth=True)
    client, server = sessions(pki, "none", [cert], key)
    client.start()
    for epoch, data in client.pop_output():
        server.receive(epoch, data)
    flight = b"".join(d for e, d in server.pop_output() if e == Epoch.HANDSHAKE)
    assert CERTIFICATE_REQUEST not in [t for t, _, _ in messages(flight)]


def test_certificate_request_lists_signature_algorithms(pki: Pki) -> None:
    client, server = sessions(pki, "request")
    client.start()
    for epoch, data in client.pop_output():
        server.receive(epoch, data)
    flight = b"".join(d for e, d in server.pop_output() if e == Epoch.HANDSHAKE)
    [(start, end)] = [(s, e) for t, s, e in messages(flight) if t == CERTIFICATE_REQUEST]
    r = Reader(flight, start + 4, end)
    assert r.vec(1) == b""  # certificate_request_context is empty during the handshake
    ext = r.sub(2)
    assert ext.u16() == 13  # signature_algorithms
    schemes = ext.sub(2).sub(2).items(Reader.u16)
    assert 0x0403 in schemes and 0x0807 in schemes


def test_required_and_missing_is_certificate_required(pki: Pki) -> None:
    client, server = sessions(pki, "require")
    with pytest.raises(TlsAlert) as info:
        run(client, server)
    assert info.value.description == 116
    assert info.value.quic_error_code == 0x100 + 116
    assert "requires" in info.value.message


def test_wrong_ca_is_unknown_ca(pki: Pki) -> None:
    other_ca, other_key = generate_ca("some other CA")
    cert, key = issue_certificate(other_ca, other_key, ["client.example"], client_auth=True)
    client, server = sessions(pki, "request", [cert], key)
    with pytest.raises(TlsAlert) as info:
        run(client, server)
    assert info.value.description == 48
    assert "not issued by a trusted CA" in info.value.message


def test_server_auth_only_certificate_is_refused(pki: Pki) -> None:
    ca, ca_key, _, _ = pki
    cert, key = issue_certificate(ca, ca_key, ["client.example"])  # serverAuth EKU only
    client, server = sessions(pki, "require", [cert], key)
    with pytest.raises(TlsAlert) as info:
        run(client, server)
    assert info.value.description == 43  # unsupported_certificate
    assert "EKU" in info.value.message
    assert not server.handshake_complete


def test_bad_signature_is_decrypt_error(pki: Pki) -> None:
    ca, ca_key, _, _ = pki
    cert, key = issue_certificate(ca, ca_key, ["client.example"], client_auth=True)
    client, server = sessions(pki, "require", [cert], key)
    with pytest.raises(TlsAlert) as info:
        run(client, server, tamper=True)
    assert info.value.description == 51  # decrypt_error
    assert "CertificateVerify" in info.value.message
    assert not server.handshake_complete


def test_client_config_needs_key_with_chain(pki: Pki) -> None:
    ca, ca_key, _, _ = pki
    cert, _ = issue_certificate(ca, ca_key, ["client.example"], client_auth=True)
    with pytest.raises(ValueError, match="both certificate_chain and private_key"):
        TlsConfig(is_client=True, alpn_protocols=["perf"], certificate_chain=[cert]).validate()
    with pytest.raises(ValueError, match="client_certificates"):
        TlsConfig(is_client=True, alpn_protocols=["perf"], client_certificates="maybe").validate()


@given(st.binary(max_size=64),
       st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8, unique=True))
def test_certificate_request_round_trip(context: bytes, schemes: list[int]) -> None:
    raw = encode_certificate_request(context, [(13, u16_list(schemes))])
    assert raw[0] == CERTIFICATE_REQUEST
    got_context, ext = decode_certificate_request(raw[4:])
    assert got_context == context and parse_u16_list(ext[13]) == schemes


@given(st.binary(max_size=80))
def test_certificate_request_parser_never_crashes(body: bytes) -> None:
    try:
        decode_certificate_request(body)
    except TlsAlert as alert:
        assert alert.description in (47, 50)  # duplicate extension / decode_error
