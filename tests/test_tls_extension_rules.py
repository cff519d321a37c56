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
    client.start()
    try:
        moved = True
        while moved:
            moved = False
            for sender, receiver in ((client, server), (server, client)):
                for epoch, data in sender.pop_output():
                    moved = True
                    receiver.receive(epoch, data)
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
