"""TLS 1.3 extension rules a server can break (RFC 8446 §4.2), checked by quicflow's
client: "Upon receiving [an extension response without its request], an endpoint MUST
abort the handshake with an unsupported_extension alert", and one "which is not
specified for the message in which it appears" gets illegal_parameter. A real server's
EncryptedExtensions gets one more extension (its encoder patched in this process, so
the transcript, CertificateVerify and Finished stay valid). Before, the client checked
only a short list of forbidden types and completed the handshake with the rest.
"""

from __future__ import annotations

import pytest

from quicflow.tls import TlsAlert, TlsConfig, TlsSession, certificate_pem, generate_self_signed
from quicflow.tls import server as tls_server
from quicflow.tls.messages import (
    EXT_ALPN,
    EXT_PSK_KEY_EXCHANGE_MODES,
    EXT_QUIC_TRANSPORT_PARAMETERS,
    encode_encrypted_extensions,
)

from .test_tls_errors import run

CERT, KEY = generate_self_signed(["localhost"])


def _handshake(monkeypatch: pytest.MonkeyPatch, extra: list[tuple[int, bytes]]) -> int | None:
    """A handshake whose EncryptedExtensions also holds ``extra``: the client's alert
    (None: it completed)."""
    def with_extra(alpn_entry: bytes, tp: bytes, early: bool) -> bytes:
        return encode_encrypted_extensions([(EXT_ALPN, alpn_entry[4:]),
                                            (EXT_QUIC_TRANSPORT_PARAMETERS, tp), *extra])

    monkeypatch.setattr(tls_server, "encrypted_extensions_bytes", with_extra)
    client = TlsSession(TlsConfig(is_client=True, alpn_protocols=["perf"],
                                  server_name="localhost", cadata=certificate_pem(CERT)), b"c")
    server = TlsSession(TlsConfig(is_client=False, alpn_protocols=["perf"],
                                  certificate_chain=[CERT], private_key=KEY), b"s")
    try:
        run(client, server)
    except TlsAlert as alert:
        return alert.description
    assert client.handshake_complete
    return None


def test_the_encrypted_extensions_the_client_asked_for_complete(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _handshake(monkeypatch, []) is None


@pytest.mark.parametrize("ext_type, body", [(0x1234, b""), (15, b"\x01"), (1, b"\x01")])
def test_an_extension_the_client_did_not_offer_is_unsupported_extension(
        monkeypatch: pytest.MonkeyPatch, ext_type: int, body: bytes) -> None:
    assert _handshake(monkeypatch, [(ext_type, body)]) == 110


def test_an_offered_extension_that_has_no_place_there_is_illegal_parameter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _handshake(monkeypatch, [(EXT_PSK_KEY_EXCHANGE_MODES, b"\x01\x01")]) == 47


@pytest.mark.parametrize("ext_type", [5, 0x1234])
def test_certificate_entry_extensions_nobody_asked_for(monkeypatch: pytest.MonkeyPatch,
                                                       ext_type: int) -> None:
    """RFC 8446 §4.4.2: a Certificate's entry extensions answer the ClientHello's; ours
    asks for none (no status_request, no signed_certificate_timestamp), so the client
    aborts with unsupported_extension (before, they were parsed and dropped)."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from quicflow.tls.messages import CERTIFICATE, handshake, vec

    original = tls_server._identity

    def with_entry_extension(cfg: TlsConfig) -> tuple[bytes, object, object]:
        _, schemes, signer = original(cfg)
        ext = vec(2, ext_type.to_bytes(2, "big") + vec(2, b""))
        entries = b"".join(vec(3, c.public_bytes(Encoding.DER)) + ext
                           for c in cfg.certificate_chain)
        return handshake(CERTIFICATE, vec(1, b"") + vec(3, entries)), schemes, signer

    monkeypatch.setattr(tls_server, "_identity", with_entry_extension)
    assert _handshake(monkeypatch, []) == 110


def test_an_expired_server_certificate_is_certificate_expired() -> None:
    """The alert for a certificate outside its validity is certificate_expired (45):
    cryptography's message ("cert is not valid at validation time") was not among the
    phrases looked for, so it went out as certificate_unknown (46)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    old = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(key.public_key()).serial_number(1234)
           .not_valid_before(now - datetime.timedelta(days=30))
           .not_valid_after(now - datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                          False)
           .sign(key, hashes.SHA256()))
    client = TlsSession(TlsConfig(is_client=True, alpn_protocols=["perf"],
                                  server_name="localhost", cadata=certificate_pem(old)), b"c")
    server = TlsSession(TlsConfig(is_client=False, alpn_protocols=["perf"],
                                  certificate_chain=[old], private_key=key), b"s")
    with pytest.raises(TlsAlert) as exc:
        run(client, server)
    assert exc.value.description == 45
