"""Configuration of one side of a TLS 1.3 handshake."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from quicflow.crypto.suites import CipherSuite

from .tickets import SessionTicket, TicketSealer

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

SUPPORTED_GROUPS = ("x25519", "secp256r1")
CLIENT_CERTIFICATE_MODES = ("none", "request", "require")


def _all_suites() -> list[CipherSuite]:
    return [
        CipherSuite.AES_128_GCM_SHA256,
        CipherSuite.AES_256_GCM_SHA384,
        CipherSuite.CHACHA20_POLY1305_SHA256,
    ]


def _default_groups() -> list[str]:
    return ["x25519", "secp256r1"]


@dataclass
class TlsConfig:
    """Settings of a client or server handshake.

    A server needs ``certificate_chain`` (leaf first) and ``private_key``. A client
    verifies the server against ``cadata`` (PEM) and/or ``cafile``, else the system store,
    unless ``verify_peer`` is False. ``groups`` are names from ``SUPPORTED_GROUPS``; the
    client sends a key share for the first one. ``cipher_suites`` is the preference order
    (the server's order wins).

    Client certificates (RFC 8446 §4.3.2, §4.4.2): a server with ``client_certificates``
    "request" sends a CertificateRequest and accepts a client without a certificate;
    "require" closes such a handshake with certificate_required (116); "none" (default)
    asks for none. A presented chain is verified against ``cafile``/``cadata`` (else the
    system store) for the clientAuth use, unless ``verify_peer`` is False. A client
    presents ``certificate_chain``/``private_key`` when asked and has them, else it
    answers with an empty Certificate.

    Resumption (RFC 8446 §4.6.1, RFC 9001 §4.6): a server with a ``ticket_sealer``
    sends one NewSessionTicket after the handshake (valid ``ticket_lifetime`` seconds,
    allowing 0-RTT when ``early_data``) and resumes sessions from the tickets it (or
    any server with the same key) sealed. A client offers ``session_ticket`` when it
    matches the server name, an ALPN protocol and a cipher suite it offers, and sends
    0-RTT with it when ``early_data`` and the ticket allows it. A server that asks for
    client certificates neither issues nor accepts tickets.
    """

    is_client: bool
    alpn_protocols: list[str] = field(default_factory=list)
    server_name: str | None = None
    certificate_chain: list[x509.Certificate] = field(default_factory=list)
    private_key: PrivateKey | None = None
    cafile: str | None = None
    cadata: bytes | None = None
    verify_peer: bool = True
    cipher_suites: list[CipherSuite] = field(default_factory=_all_suites)
    groups: list[str] = field(default_factory=_default_groups)
    keylog_file: str | None = None
    client_certificates: str = "none"
    session_ticket: SessionTicket | None = None
    early_data: bool = True
    ticket_sealer: TicketSealer | None = None
    ticket_lifetime: int = 86400
    ticket_age_window: float = 10.0
    ticket_parameters: bytes = b""  # (server) remembered limits for tickets, pre-encoded

    def validate(self) -> None:
        """Raise ``ValueError`` for a configuration that cannot work."""
        if not self.alpn_protocols:
            raise ValueError("TlsConfig.alpn_protocols must not be empty (QUIC requires ALPN)")
        for proto in self.alpn_protocols:
            if not 0 < len(proto.encode()) < 256:
                raise ValueError(f"bad ALPN protocol {proto!r}")
        if not self.cipher_suites:
            raise ValueError("TlsConfig.cipher_suites must not be empty")
        if not self.groups:
            raise ValueError("TlsConfig.groups must not be empty")
        for group in self.groups:
            if group not in SUPPORTED_GROUPS:
                raise ValueError(f"unsupported group {group!r}; use one of {SUPPORTED_GROUPS}")
        if self.client_certificates not in CLIENT_CERTIFICATE_MODES:
            raise ValueError(
                f"client_certificates must be one of {CLIENT_CERTIFICATE_MODES}, "
                f"not {self.client_certificates!r}"
            )
        if not 0 < self.ticket_lifetime <= 7 * 86400:
            raise ValueError("ticket_lifetime must be between 1 s and 7 days")
        if self.is_client and bool(self.certificate_chain) != (self.private_key is not None):
            raise ValueError("a client certificate needs both certificate_chain and private_key")
        if not self.is_client and (not self.certificate_chain or self.private_key is None):
            raise ValueError("a server TlsConfig needs certificate_chain and private_key")
