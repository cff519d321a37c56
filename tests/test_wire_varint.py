"""Tests for quicflow.wire.varint (RFC 9000 §16, A.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.wire import (
    VARINT_MAX,
    WireError,
    decode_varint,
    encode_varint,
    push_varint,
    varint_len,
)

# RFC 9000 A.1 / Table 5 sample encodings.
RFC_SAMPLES = [
    ("c2197c5eff14e88c", 151288809941952652),
    ("9d7f3e7d", 494878333),
    ("7bbd", 15293),
    ("25", 37),
]


@pytest.mark.parametrize(("hexstr", "value"), RFC_SAMPLES)
def test_rfc_samples(hexstr: str, value: int) -> None:
    data = bytes.fromhex(hexstr)
    assert decode_varint(data, 0) == (value, len(data))
    assert encode_varint(value) == data
    assert varint_len(value) == len(data)


def test_non_minimal_decodes() -> None:
    # RFC 9000 A.1: 0x4025 also decodes to 37.
    assert decode_varint(bytes.fromhex("4025"), 0) == (37, 2)
    assert decode_varint(bytes.fromhex("8000002500"), 0) == (37, 4)
    assert decode_varint(bytes.fromhex("c000000000000025"), 0) == (37, 8)


@pytest.mark.parametrize(
    ("value", "length"),
    [(0, 1), (63, 1), (64, 2), (16383, 2), (16384, 4), (2**30 - 1, 4), (2**30, 8),
     (VARINT_MAX, 8)],
)
def test_boundaries(value: int, length: int) -> None:
    enc = encode_varint(value)
    assert len(enc) == length == varint_len(value)
    assert decode_varint(enc, 0) == (value, length)


@pytest.mark.parametrize("value", [-1, VARINT_MAX + 1, 2**64])
def test_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        encode_varint(value)
    with pytest.raises(ValueError):
        varint_len(value)
    with pytest.raises(ValueError):
        push_varint(bytearray(), value)


@pytest.mark.parametrize("data", [b"", b"\x40", b"\x80\x00\x00", b"\xc0" + bytes(6)])
def test_truncated(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_varint(data, 0)


def test_decode_at_offset_and_buffer_types() -> None:
    raw = b"\xff\xff" + encode_varint(15293) + b"\x00"
    for buf in (raw, bytearray(raw), memoryview(raw)):
        assert decode_varint(buf, 2) == (15293, 4)
        assert decode_varint(buf, 4) == (0, 5)
    with pytest.raises(WireError):
        decode_varint(raw, 5)


@given(st.integers(min_value=0, max_value=VARINT_MAX), st.binary(max_size=4))
def test_round_trip(value: int, prefix: bytes) -> None:
    out = bytearray(prefix)
    push_varint(out, value)
    assert bytes(out[len(prefix):]) == encode_varint(value)
    assert decode_varint(out, len(prefix)) == (value, len(out))
    assert varint_len(value) == len(out) - len(prefix)


@given(st.binary(max_size=9))
def test_arbitrary_bytes_only_wire_error(data: bytes) -> None:
    try:
        value, pos = decode_varint(data, 0)
    except WireError:
        return
    assert 0 <= value <= VARINT_MAX
    assert pos in (1, 2, 4, 8)
