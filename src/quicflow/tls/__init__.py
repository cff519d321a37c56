"""The TLS 1.3 handshake as QUIC uses it (RFC 9001), client and server, and certificates."""

from .alerts import TlsAlert
from .certs import (
    certificate_pem,
    generate_ca,
    generate_self_signed,
    issue_certificate,
    load_pem_chain,
    load_pem_key,
    private_key_pem,
)
from .config import PrivateKey, TlsConfig
from .session import TlsSession

__all__ = [
    "PrivateKey",
    "TlsAlert",
    "TlsConfig",
    "TlsSession",
    "certificate_pem",
    "generate_ca",
    "generate_self_signed",
    "issue_certificate",
    "load_pem_chain",
    "load_pem_key",
    "private_key_pem",
]
