"""Interop in memory with aioquic's and qh3's TLS 1.3 implementations.

Neither library implements HelloRetryRequest, so HRR is covered by our own pair only.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.suites import CipherSuite
from quicflow.tls import (
    PrivateKey,
    TlsAlert,
    TlsConfig,
    TlsSession,
    certificate_pem,
    generate_ca,
    generate_self_signed,
    issue_certificate,
    private_key_pem,
)

QUIC_TP_EXT = 0x39
OUR_TP = b"quicflow-transport-parameters"
THEIR_TP = b"their-transport-parameters"
LIBS = ["aioquic", "qh3"]


@pytest.fixture(scope="module")
def ca() -> tuple[x509.Certificate, PrivateKey]:
    return generate_ca()


def tls_module(lib: str) -> Any:
    return importlib.import_module(f"{lib}.tls")


def buffer_class(lib: str) -> Any:
    if lib == "aioquic":
        return importlib.import_module("aioquic.buffer").Buffer
    return importlib.import_module("qh3._hazmat").Buffer


class Peer:
    """Drives an aioquic-style ``tls.Context`` the way its QUIC connection does."""

    def __init__(self, lib: str, *, is_client: bool, **kw: Any) -> None:
        self.lib = lib
        self.mod = tls_module(lib)
        self.ctx = self.mod.Context(is_client=is_client, alpn_protocols=["h3", "perf"], **kw)
        self.ctx.handshake_extensions = [(QUIC_TP_EXT, THEIR_TP)]
        self.ctx.update_traffic_key_cb = self._on_key
        self.secrets: dict[tuple[Epoch, bool], tuple[int, bytes]] = {}

    def set_certificate(self, cert: x509.Certificate, key: PrivateKey) -> None:
        if self.lib == "aioquic":
            self.ctx.certificate, self.ctx.certificate_private_key = cert, key
        else:  # qh3 has its own certificate and key types
            pem = cert.public_bytes(serialization.Encoding.PEM)
            self.ctx.certificate = self.mod.load_pem_x509_certificates(pem)[0]
            self.ctx.certificate_private_key = self.mod.load_pem_private_key(private_key_pem(key))

    def _on_key(self, direction: Any, epoch: Any, suite: Any, secret: bytes) -> None:
        is_send = direction == self.mod.Direction.ENCRYPT
        self.secrets[(Epoch(int(epoch.value)), is_send)] = (int(suite), bytes(secret))

    def handle(self, data: bytes) -> list[tuple[Epoch, bytes]]:
        bufs = {e: buffer_class(self.lib)(capacity=65536) for e in self.mod.Epoch}
        self.ctx.handle_message(data, bufs)
        return [(Epoch(int(e.value)), bytes(b.data)) for e, b in bufs.items() if b.data]

    @property
    def complete(self) -> bool:
        return bool(self.ctx.state.name.endswith("POST_HANDSHAKE"))

    def peer_tp(self) -> bytes | None:
        for ext_type, value in self.ctx.received_extensions or []:
            if ext_type == QUIC_TP_EXT:
                return bytes(value)
        return None


def run(ours: TlsSession, theirs: Peer) -> None:
    """Shuttle handshake bytes until neither side has anything to send."""
    if ours.is_client:
        ours.start()
        to_them: list[tuple[Epoch, bytes]] = ours.pop_output()
        to_us: list[tuple[Epoch, bytes]] = []
    else:
        to_them, to_us = [], theirs.handle(b"")
    while to_them or to_us:
        for epoch, data in to_us:
            ours.receive(epoch, data)
        to_us = []
        for _epoch, data in to_them:
            to_us += theirs.handle(data)
        to_them = ours.pop_output()


def check(ours: TlsSession, theirs: Peer, suite: CipherSuite) -> None:
    assert ours.handshake_complete and theirs.complete
    assert ours.alpn_protocol == theirs.ctx.alpn_negotiated == "perf"
    assert ours.peer_transport_parameters == THEIR_TP
    assert theirs.peer_tp() == OUR_TP
    assert ours.cipher_suite == suite
    mine = {(e, s): (int(c), secret) for e, s, c, secret in ours.pop_secrets()}
    assert len(mine) == 4
    for (epoch, is_send), value in mine.items():
        assert value == theirs.secrets[(epoch, not is_send)], (epoch, is_send)
        assert value[0] == suite


def our_client(ca_cert: x509.Certificate, **kw: Any) -> TlsSession:
    cfg = TlsConfig(
        is_client=True,
        alpn_protocols=["perf"],
        server_name=kw.pop("server_name", "localhost"),
        cadata=certificate_pem(ca_cert),
        **kw,
    )
    return TlsSession(cfg, OUR_TP)


def our_server(cert: x509.Certificate, key: PrivateKey, **kw: Any) -> TlsSession:
    cfg = TlsConfig(
        is_client=False,
        alpn_protocols=["perf"],
        certificate_chain=[cert],
        private_key=key,
        **kw,
    )
    return TlsSession(cfg, OUR_TP)


def their_client(lib: str, ca_cert: x509.Certificate) -> Peer:
    return Peer(lib, is_client=True, server_name="localhost", cadata=certificate_pem(ca_cert))


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("suite", list(CipherSuite))
@pytest.mark.parametrize("group", ["x25519", "secp256r1"])
def test_our_client_their_server(
    ca: tuple[x509.Certificate, PrivateKey], lib: str, suite: CipherSuite, group: str
) -> None:
    leaf, key = issue_certificate(*ca, ["localhost"])
    theirs = Peer(lib, is_client=False)
    theirs.set_certificate(leaf, key)
    ours = our_client(ca[0], cipher_suites=[suite], groups=[group])
    run(ours, theirs)
    check(ours, theirs, suite)
    assert ours.peer_certificates[0] == leaf


# qh3's client does not offer ed25519 in signature_algorithms
@pytest.mark.parametrize(
    ("lib", "key_type"),
    [("aioquic", "ec"), ("aioquic", "ed25519"), ("aioquic", "rsa"), ("qh3", "ec"), ("qh3", "rsa")],
)
def test_their_client_our_server_key_types(
    ca: tuple[x509.Certificate, PrivateKey], lib: str, key_type: str
) -> None:
    leaf, key = issue_certificate(*ca, ["localhost"], key_type)  # type: ignore[arg-type]
    theirs = their_client(lib, ca[0])
    ours = our_server(leaf, key)
    run(ours, theirs)
    check(ours, theirs, CipherSuite.AES_128_GCM_SHA256)  # our preference order wins


@pytest.mark.parametrize("key_type", ["ec", "ed25519", "rsa"])
def test_our_client_their_server_key_types(
    ca: tuple[x509.Certificate, PrivateKey], key_type: str
) -> None:
    leaf, key = issue_certificate(*ca, ["localhost"], key_type)  # type: ignore[arg-type]
    theirs = Peer("aioquic", is_client=False)
    theirs.set_certificate(leaf, key)
    ours = our_client(ca[0])
    run(ours, theirs)
    check(ours, theirs, ours.cipher_suite or CipherSuite.AES_128_GCM_SHA256)


# qh3 sends only X25519MLKEM768 and X25519 key shares, so a secp256r1-only server would
# answer with a HelloRetryRequest, which qh3 does not implement.
@pytest.mark.parametrize(
    ("lib", "group"), [("aioquic", "x25519"), ("aioquic", "secp256r1"), ("qh3", "x25519")]
)
@pytest.mark.parametrize("suite", list(CipherSuite))
def test_their_client_our_server(
    ca: tuple[x509.Certificate, PrivateKey], lib: str, suite: CipherSuite, group: str
) -> None:
    leaf, key = issue_certificate(*ca, ["localhost"])
    theirs = their_client(lib, ca[0])
    ours = our_server(leaf, key, cipher_suites=[suite], groups=[group])
    run(ours, theirs)
    check(ours, theirs, suite)


def test_their_client_accepts_our_self_signed() -> None:
    """aioquic (OpenSSL) trusts our self-signed leaf as its own anchor.

    (qh3 only takes CA certificates as anchors, so it needs ``generate_ca``.)"""
    cert, key = generate_self_signed(["localhost"])
    theirs = their_client("aioquic", cert)
    ours = our_server(cert, key)
    run(ours, theirs)
    check(ours, theirs, CipherSuite.AES_128_GCM_SHA256)


def test_their_server_wrong_host(ca: tuple[x509.Certificate, PrivateKey]) -> None:
    leaf, key = issue_certificate(*ca, ["localhost"])
    theirs = Peer("aioquic", is_client=False)
    theirs.set_certificate(leaf, key)
    ours = our_client(ca[0], server_name="example.org")
    with pytest.raises(TlsAlert) as exc:
        run(ours, theirs)
    assert exc.value.description == 42
    assert "example.org" in exc.value.message
