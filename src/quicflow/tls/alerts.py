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
CERTIFICATE_REQUIRED = 116
NO_APPLICATION_PROTOCOL = 120


#: The QUIC transport error PROTOCOL_VIOLATION, for the few TLS rules RFC 9001 makes
#: QUIC connection errors rather than alerts (e.g. §8.4).
QUIC_PROTOCOL_VIOLATION = 0x0A


class TlsAlert(Exception):
    """A fatal TLS alert.

    ``description`` is the RFC 8446 alert number; QUIC turns it into the transport error
    ``0x0100 + description`` (RFC 9001 §4.8), or into ``transport_error`` when that is
    given (a QUIC-specific rule such as RFC 9001 §8.4).
    """

    def __init__(self, description: int, message: str,
                 transport_error: int | None = None) -> None:
        super().__init__(f"TLS alert {description}: {message}")
        self.description = description
        self.message = message
        self.transport_error = transport_error

    @property
    def quic_error_code(self) -> int:
        """The QUIC transport error code this failure closes the connection with."""
        if self.transport_error is not None:
            return self.transport_error
        return 0x100 + self.description
