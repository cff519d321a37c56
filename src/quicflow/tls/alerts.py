"""TLS alerts: the one exception type the handshake raises (RFC 8446 §6)."""

from __future__ import annotations

UNEXPECTED_MESSAGE = 10
BAD_RECORD_MAC = 20
HANDSHAKE_FAILURE = 40
BAD_CERTIFICATE = 42
UNSUPPORTED_CERTIFICATE = 43
CERTIFICATE_EXPIRED = 45
CERTIFICATE_UNKNOWN = 46
ILLEGAL_PARAMETER = 47
UNKNOWN_CA = 48
DECODE_ERROR = 50
DECRYPT_ERROR = 51
PROTOCOL_VERSION = 70
INTERNAL_ERROR = 80
MISSING_EXTENSION = 109
UNSUPPORTED_EXTENSION = 110
NO_APPLICATION_PROTOCOL = 120


class TlsAlert(Exception):
    """A fatal TLS alert.

    ``description`` is the RFC 8446 alert number; QUIC turns it into the transport error
    ``0x0100 + description`` (RFC 9001 §4.8).
    """

    def __init__(self, description: int, message: str) -> None:
        super().__init__(f"TLS alert {description}: {message}")
        self.description = description
        self.message = message
