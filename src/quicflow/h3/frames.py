"""HTTP/3 frames, stream types and settings (RFC 9114 §7, §6.2, §7.2.4): bytes <-> values.

:class:`FrameParser` reads a stream's frames incrementally without ever holding a DATA
payload or an unknown frame whole: DATA arrives as chunks, unknown (grease) frames are
skipped as they stream past, and any other frame larger than ``max_frame_size`` is
refused with H3_EXCESSIVE_LOAD before it is buffered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..wire.errors import WireError
from ..wire.varint import decode_varint, encode_varint
from .errors import H3_EXCESSIVE_LOAD, H3_FRAME_ERROR, H3_SETTINGS_ERROR, H3Error

# frame types
DATA = 0x0
HEADERS = 0x1
CANCEL_PUSH = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
GOAWAY = 0x7
MAX_PUSH_ID = 0xD
#: HTTP/2 frame types that RFC 9114 §11.2.1 reserves: receiving one is H3_FRAME_UNEXPECTED
HTTP2_RESERVED_FRAMES = frozenset({0x2, 0x6, 0x8, 0x9})
KNOWN_FRAMES = frozenset({DATA, HEADERS, CANCEL_PUSH, SETTINGS, PUSH_PROMISE, GOAWAY,
                          MAX_PUSH_ID}) | HTTP2_RESERVED_FRAMES

# unidirectional stream types
STREAM_CONTROL = 0x00
STREAM_PUSH = 0x01
STREAM_QPACK_ENCODER = 0x02
STREAM_QPACK_DECODER = 0x03

# settings
SETTINGS_QPACK_MAX_TABLE_CAPACITY = 0x1
SETTINGS_MAX_FIELD_SECTION_SIZE = 0x6
SETTINGS_QPACK_BLOCKED_STREAMS = 0x7
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8  # RFC 9220
SETTINGS_H3_DATAGRAM = 0x33  # RFC 9297
#: HTTP/2 settings that RFC 9114 §7.2.4.1 forbids: H3_SETTINGS_ERROR
HTTP2_RESERVED_SETTINGS = frozenset({0x0, 0x2, 0x3, 0x4, 0x5})
BOOLEAN_SETTINGS = frozenset({SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_H3_DATAGRAM})

#: largest non-DATA frame we buffer (a HEADERS frame is also held to the field-section limit)
DEFAULT_MAX_FRAME_SIZE = 1 << 16


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    return encode_varint(frame_type) + encode_varint(len(payload)) + payload


def data_frame_header(length: int) -> bytes:
    return encode_varint(DATA) + encode_varint(length)


def encode_settings(settings: dict[int, int]) -> bytes:
    out = bytearray()
    for key, value in settings.items():
        out += encode_varint(key)
        out += encode_varint(value)
    return bytes(out)


def parse_settings(payload: bytes) -> dict[int, int]:
    """The SETTINGS payload as a dict; H3_SETTINGS_ERROR / H3_FRAME_ERROR when invalid."""
    settings: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(payload):
            key, pos = decode_varint(payload, pos)
            value, pos = decode_varint(payload, pos)
            if key in settings:
                raise H3Error(H3_SETTINGS_ERROR, f"setting {key:#x} sent twice")
            if key in HTTP2_RESERVED_SETTINGS:
                raise H3Error(H3_SETTINGS_ERROR, f"HTTP/2 setting {key:#x} is not allowed")
            if key in BOOLEAN_SETTINGS and value > 1:
                raise H3Error(H3_SETTINGS_ERROR, f"setting {key:#x} must be 0 or 1")
            settings[key] = value
    except WireError as exc:
        raise H3Error(H3_FRAME_ERROR, "truncated SETTINGS frame") from exc
    return settings


def parse_single_varint(payload: bytes, what: str) -> int:
    """GOAWAY, MAX_PUSH_ID and CANCEL_PUSH carry exactly one varint."""
    try:
        value, pos = decode_varint(payload, 0)
    except WireError as exc:
        raise H3Error(H3_FRAME_ERROR, f"malformed {what} frame") from exc
    if pos != len(payload):
        raise H3Error(H3_FRAME_ERROR, f"malformed {what} frame")
    return value


def encode_datagram(stream_id: int, payload: bytes) -> bytes:
    """An HTTP/3 datagram (RFC 9297 §2.1): quarter stream ID, then the payload."""
    if stream_id & 3:
        raise ValueError("HTTP datagrams belong to client-initiated bidirectional streams")
    return encode_varint(stream_id >> 2) + payload


def parse_datagram(data: bytes) -> tuple[int, bytes]:
    """(stream id, payload) of an HTTP/3 datagram; WireError if the prefix is truncated."""
    quarter, pos = decode_varint(data, 0)
    return quarter << 2, data[pos:]


@dataclass(slots=True)
class FrameParser:
    """Incremental frame reader for one stream (plain data)."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    buf: bytearray = field(default_factory=bytearray)
    frame_type: int = -1  # -1: between frames
    remaining: int = 0  # payload bytes of the current frame still to come
    payload: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> None:
        self.buf += data

    @property
    def in_frame(self) -> bool:
        """A frame has started and is not complete (truncated if the stream ends here)."""
        return self.frame_type != -1 or bool(self.buf)

    def next(self) -> tuple[int, bytes] | None:
        """The next item: ``(DATA, chunk)`` for DATA payload pieces (one empty chunk for an
        empty DATA frame), ``(type, payload)`` for
        a complete frame of any other known type; unknown frames are skipped. None: more
        bytes needed."""
        while True:
            if self.frame_type == -1:
                buf = self.buf
                try:
                    frame_type, pos = decode_varint(buf, 0)
                    length, pos = decode_varint(buf, pos)
                except WireError:
                    if len(buf) > 16:  # two varints never need more
                        raise H3Error(H3_FRAME_ERROR, "malformed frame header") from None
                    return None
                del buf[:pos]
                if frame_type != DATA and frame_type in KNOWN_FRAMES:
                    if length > self.max_frame_size:
                        raise H3Error(
                            H3_EXCESSIVE_LOAD, f"frame {frame_type:#x} of {length} bytes"
                        )
                self.frame_type = frame_type
                self.remaining = length
                if frame_type == DATA and length == 0:
                    # an empty DATA frame is still a DATA frame: where none may be it is
                    # an error like any other (RFC 9114 §4.1, §7.2.1)
                    self.frame_type = -1
                    return DATA, b""
            ftype = self.frame_type
            take = min(self.remaining, len(self.buf))
            if ftype == DATA:
                if take == 0:
                    return None
                if take == len(self.buf):
                    chunk = bytes(self.buf)
                    self.buf.clear()
                else:
                    chunk = bytes(self.buf[:take])
                    del self.buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.frame_type = -1
                return DATA, chunk
            if ftype in KNOWN_FRAMES:
                self.payload += self.buf[:take]
            del self.buf[:take]
            self.remaining -= take
            if self.remaining:
                return None
            self.frame_type = -1
            if ftype in KNOWN_FRAMES:
                payload = bytes(self.payload)
                self.payload.clear()
                return ftype, payload
            # unknown/grease frame: skipped
