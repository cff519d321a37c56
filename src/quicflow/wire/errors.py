"""Exceptions raised by the wire layer when bytes do not decode."""

from __future__ import annotations

__all__ = [
    "FRAME_ENCODING_ERROR",
    "TRANSPORT_PARAMETER_ERROR",
    "FrameEncodingError",
    "TransportParameterError",
    "WireError",
]

#: RFC 9000 §20.1 transport error codes the wire layer's errors map to.
FRAME_ENCODING_ERROR = 0x07
TRANSPORT_PARAMETER_ERROR = 0x08


class WireError(ValueError):
    """Malformed bytes: truncated varint, bad length, invalid field value."""


class FrameEncodingError(WireError):
    """A frame could not be decoded; ``frame_type`` is the offending frame's type.

    ``error_code`` is the RFC 9000 transport error code to close the connection with.
    """

    frame_type: int
    error_code: int

    def __init__(self, frame_type: int, message: str = "malformed frame") -> None:
        super().__init__(f"{message} (frame type 0x{frame_type:x})")
        self.frame_type = frame_type
        self.error_code = FRAME_ENCODING_ERROR


class TransportParameterError(WireError):
    """Transport parameters that are malformed, duplicated or not allowed."""

    error_code: int = TRANSPORT_PARAMETER_ERROR
