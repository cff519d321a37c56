"""QUIC variable-length integers (RFC 9000 §16)."""

from __future__ import annotations

import struct

from .errors import WireError

__all__ = ["VARINT_MAX", "decode_varint", "encode_varint", "push_varint", "varint_len"]

VARINT_MAX = 2**62 - 1

_unpack32 = struct.Struct(">L").unpack_from
_unpack64 = struct.Struct(">Q").unpack_from


def encode_varint(value: int) -> bytes:
    """Encode ``value`` in the shortest form; ``ValueError`` if out of range."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"varint out of range: {value}")
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    if value <= VARINT_MAX:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError(f"varint out of range: {value}")


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos]``; returns ``(value, new_pos)``."""
    try:
        first = buf[pos]
        prefix = first >> 6
        if prefix == 0:
            return first, pos + 1
        if prefix == 1:
            return ((first & 0x3F) << 8) | buf[pos + 1], pos + 2
        if prefix == 2:
            return _unpack32(buf, pos)[0] & 0x3FFFFFFF, pos + 4
        return _unpack64(buf, pos)[0] & 0x3FFFFFFFFFFFFFFF, pos + 8
    except (IndexError, struct.error):
        raise WireError("truncated varint") from None


def varint_len(value: int) -> int:
    """Number of bytes of the shortest encoding of ``value``."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"varint out of range: {value}")
        return 1
    if value < 0x4000:
        return 2
    if value < 0x40000000:
        return 4
    if value <= VARINT_MAX:
        return 8
    raise ValueError(f"varint out of range: {value}")


def push_varint(out: bytearray, value: int) -> None:
    """Append the shortest encoding of ``value`` to ``out`` (the one- and two-byte forms,
    the common ones in frames, without a further call)."""
    if 0 <= value < 0x40:
        out.append(value)
    elif 0x40 <= value < 0x4000:
        out += (value | 0x4000).to_bytes(2, "big")
    else:
        out += encode_varint(value)
