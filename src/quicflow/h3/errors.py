"""HTTP/3 (RFC 9114 §8.1) and QPACK (RFC 9204 §6) error codes, and the error they raise."""

from __future__ import annotations

H3_DATAGRAM_ERROR = 0x33  # RFC 9297 §5.2
H3_NO_ERROR = 0x100
H3_GENERAL_PROTOCOL_ERROR = 0x101
H3_INTERNAL_ERROR = 0x102
H3_STREAM_CREATION_ERROR = 0x103
H3_CLOSED_CRITICAL_STREAM = 0x104
H3_FRAME_UNEXPECTED = 0x105
H3_FRAME_ERROR = 0x106
H3_EXCESSIVE_LOAD = 0x107
H3_ID_ERROR = 0x108
H3_SETTINGS_ERROR = 0x109
H3_MISSING_SETTINGS = 0x10A
H3_REQUEST_REJECTED = 0x10B
H3_REQUEST_CANCELLED = 0x10C
H3_REQUEST_INCOMPLETE = 0x10D
H3_MESSAGE_ERROR = 0x10E
H3_CONNECT_ERROR = 0x10F
H3_VERSION_FALLBACK = 0x110
QPACK_DECOMPRESSION_FAILED = 0x200
QPACK_ENCODER_STREAM_ERROR = 0x201
QPACK_DECODER_STREAM_ERROR = 0x202

ERROR_NAMES = {
    value: name
    for name, value in dict(globals()).items()
    if name.startswith(("H3_", "QPACK_")) and isinstance(value, int)
}


class H3Error(Exception):
    """A connection error: the HTTP/3 layer closes the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{ERROR_NAMES.get(code, hex(code))}: {reason}")
        self.code = code
        self.reason = reason


class H3StreamError(Exception):
    """A stream error: the request stream is reset (and stopped) with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{ERROR_NAMES.get(code, hex(code))}: {reason}")
        self.code = code
        self.reason = reason
