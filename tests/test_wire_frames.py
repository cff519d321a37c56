"""Tests for quicflow.wire.frames (RFC 9000 §19)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.wire import (
    VARINT_MAX,
    Ack,
    ConnectionClose,
    Crypto,
    DataBlocked,
    Frame,
    FrameEncodingError,
    HandshakeDone,
    MaxData,
    MaxStreamData,
    MaxStreams,
    NewConnectionId,
    NewToken,
    Padding,
    PathChallenge,
    PathResponse,
    Ping,
    ResetStream,
    RetireConnectionId,
    StopSending,
    Stream,
    StreamDataBlocked,
    StreamsBlocked,
    WireError,
    encode_frame,
    encode_stream_header,
    encode_varint,
    frame_size,
    frame_type_of,
    parse_frames,
)

v = st.integers(min_value=0, max_value=VARINT_MAX)
small = st.integers(min_value=0, max_value=2**20)
data = st.binary(max_size=64)


@st.composite
def ack_frames(draw: st.DrawFn) -> Ack:
    largest = draw(st.integers(min_value=0, max_value=2**40))
    ranges = []
    hi = largest
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        lo = hi - draw(st.integers(min_value=0, max_value=min(hi, 1000)))
        ranges.append((lo, hi))
        hi = lo - 2 - draw(st.integers(min_value=0, max_value=1000))
        if hi < 0:
            break
    ecn = draw(st.none() | st.tuples(v, v, v))
    return Ack(ranges, draw(v), ecn)


@st.composite
def stream_frames(draw: st.DrawFn) -> Stream:
    payload = draw(data)
    offset = draw(st.integers(min_value=0, max_value=VARINT_MAX - len(payload)))
    return Stream(draw(v), offset, payload, draw(st.booleans()))


@st.composite
def crypto_frames(draw: st.DrawFn) -> Crypto:
    payload = draw(data)
    return Crypto(draw(st.integers(min_value=0, max_value=VARINT_MAX - len(payload))), payload)


@st.composite
def new_cid_frames(draw: st.DrawFn) -> NewConnectionId:
    seq = draw(v)
    return NewConnectionId(
        seq,
        draw(st.integers(min_value=0, max_value=seq)),
        draw(st.binary(min_size=1, max_size=20)),
        draw(st.binary(min_size=16, max_size=16)),
    )


streams_limit = st.integers(min_value=0, max_value=2**60)
eight = st.binary(min_size=8, max_size=8)

any_frame: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Padding, st.integers(min_value=1, max_value=50)),
    st.just(Ping()),
    ack_frames(),
    st.builds(ResetStream, v, v, v),
    st.builds(StopSending, v, v),
    crypto_frames(),
    st.builds(NewToken, st.binary(min_size=1, max_size=64)),
    stream_frames(),
    st.builds(MaxData, v),
    st.builds(MaxStreamData, v, v),
    st.builds(MaxStreams, st.booleans(), streams_limit),
    st.builds(DataBlocked, v),
    st.builds(StreamDataBlocked, v, v),
    st.builds(StreamsBlocked, st.booleans(), streams_limit),
    new_cid_frames(),
    st.builds(RetireConnectionId, v),
    st.builds(PathChallenge, eight),
    st.builds(PathResponse, eight),
    st.builds(ConnectionClose, v, st.none() | v, data),
    st.just(HandshakeDone()),
)


def enc(*frames: Frame) -> bytes:
    out = bytearray()
    for f in frames:
        encode_frame(f, out)
    return bytes(out)


# --- round trips -------------------------------------------------------------------


@given(any_frame)
def test_round_trip_every_frame(frame: Frame) -> None:
    raw = enc(frame)
    assert parse_frames(raw) == [frame]
    assert parse_frames(memoryview(raw)) == [frame]
    assert parse_frames(bytearray(raw)) == [frame]
    assert frame_size(frame) == len(raw)
    if not isinstance(frame, Padding):
        assert raw[0] == frame_type_of(frame)


@given(st.lists(any_frame, max_size=8))
def test_round_trip_sequences(frames: list[Frame]) -> None:
    # Adjacent Padding frames merge on parse; normalise the expectation the same way.
    expected: list[Frame] = []
    for f in frames:
        if isinstance(f, Padding) and expected and isinstance(expected[-1], Padding):
            expected[-1] = Padding(expected[-1].length + f.length)
        else:
            expected.append(f)
    assert parse_frames(enc(*frames)) == expected


def test_every_frame_type_code_parses() -> None:
    bodies = {
        0x00: b"", 0x01: b"", 0x02: b"\x00\x00\x00\x00", 0x03: b"\x00" * 7,
        0x04: b"\x00\x00\x00", 0x05: b"\x00\x00", 0x06: b"\x00\x00", 0x07: b"\x01t",
        0x10: b"\x00", 0x11: b"\x00\x00", 0x12: b"\x00", 0x13: b"\x00", 0x14: b"\x00",
        0x15: b"\x00\x00", 0x16: b"\x00", 0x17: b"\x00",
        0x18: b"\x00\x00\x01c" + bytes(16), 0x19: b"\x00", 0x1A: bytes(8),
        0x1B: bytes(8), 0x1C: b"\x00\x00\x00", 0x1D: b"\x00\x00", 0x1E: b"",
    }
    for t in range(0x08, 0x10):  # stream id, offset if OFF, length 1 if LEN, data "z"
        bodies[t] = b"\x00" + (b"\x05" if t & 4 else b"") + (b"\x01" if t & 2 else b"") + b"z"
    assert set(bodies) == set(range(0x1F))
    for ftype, body in bodies.items():
        (frame,) = parse_frames(bytes([ftype]) + body)
        if ftype:
            assert frame_type_of(frame) == ftype or isinstance(frame, Stream)
        raw = enc(frame)
        assert parse_frames(raw) == [frame]


# --- byte-exact encodings --------------------------------------------------------------


def test_stream_encoding() -> None:
    assert enc(Stream(4, 0, b"hi", False)) == b"\x0a\x04\x02hi"
    assert enc(Stream(4, 0, b"hi", True)) == b"\x0b\x04\x02hi"
    assert enc(Stream(4, 100, b"", True)) == b"\x0f\x04\x40\x64\x00"
    assert encode_stream_header(0, 64, 1200, False) == b"\x0e\x00\x40\x40\x44\xb0"


def test_stream_without_length_runs_to_end() -> None:
    assert parse_frames(b"\x0c\x01\x05hello") == [Stream(1, 5, b"hello", False)]
    assert parse_frames(b"\x09\x01") == [Stream(1, 0, b"", True)]


def test_ack_encoding() -> None:
    # largest 10, delay 3, two ranges: [8..10], [2..5] -> gap = 8-5-2 = 1, len 3.
    raw = enc(Ack([(8, 10), (2, 5)], 3, None))
    assert raw == bytes([0x02, 10, 3, 1, 2, 1, 3])
    assert enc(Ack([(0, 0)], 0, (1, 2, 3))) == bytes([0x03, 0, 0, 0, 0, 1, 2, 3])


def test_connection_close_encoding() -> None:
    assert enc(ConnectionClose(0x0A, 0x08, b"x")) == b"\x1c\x0a\x08\x01x"
    assert enc(ConnectionClose(0x100, None, b"")) == b"\x1d\x41\x00\x00"


def test_padding_collapses_and_nonminimal_types() -> None:
    payload = bytes(5) + b"\x01" + bytes(1000)
    assert parse_frames(payload) == [Padding(5), Ping(), Padding(1000)]
    # Non-minimal frame type encodings are accepted.
    assert parse_frames(b"\x40\x01\x80\x00\x00\x1e") == [Ping(), HandshakeDone()]
    assert parse_frames(b"") == []


# --- malformed -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "ftype"),
    [
        (b"\x20", 0x20),  # unknown (0x1f is IMMEDIATE_ACK, ack-frequency)
        (b"\x40\x32", 0x32),  # unknown, 2-byte type (0x30, 0x31: DATAGRAM)
        (b"\x80", 0x80),  # truncated type
        (b"\x02\x05\x00\x00\x06", 0x02),  # first ACK range below zero
        (b"\x02\x05\x00\x01\x00\x04\x00", 0x02),  # second range below zero
        (b"\x02\x05\x00\x01\x00", 0x02),  # truncated
        (b"\x03\x00\x00\x00\x00\x01\x01", 0x03),  # ECN counts truncated
        (b"\x04\x00\x00", 0x04),
        (b"\x05\x00", 0x05),
        (b"\x06\x00\x05abc", 0x06),  # crypto data truncated
        (b"\x07\x00", 0x07),  # empty NEW_TOKEN
        (b"\x07\x05ab", 0x07),
        (b"\x0a\x00\x05ab", 0x0A),
        (b"\x0e\x00" + encode_varint(VARINT_MAX) + b"\x01x", 0x0E),  # offset+len > 2^62-1
        (b"\x0c\x00" + encode_varint(VARINT_MAX) + b"x", 0x0C),
        (b"\x12" + encode_varint(2**60 + 1), 0x12),
        (b"\x17" + encode_varint(2**60 + 1), 0x17),
        (b"\x18\x01\x00\x00" + bytes(16), 0x18),  # zero-length cid
        (b"\x18\x01\x00\x15" + bytes(21 + 16), 0x18),  # 21-byte cid
        (b"\x18\x01\x02\x01\x01" + bytes(16), 0x18),  # retire_prior_to > sequence
        (b"\x18\x01\x00\x04abcd" + bytes(15), 0x18),  # short reset token
        (b"\x18\x01\x00", 0x18),
        (b"\x1a" + bytes(7), 0x1A),
        (b"\x1b", 0x1B),
        (b"\x1c\x00\x00\x05abc", 0x1C),
        (b"\x1d\x00", 0x1D),
        (b"\x10", 0x10),
        (b"\x11\x00", 0x11),
        (b"\x14", 0x14),
        (b"\x15\x00", 0x15),
        (b"\x19", 0x19),
    ],
)
def test_malformed(raw: bytes, ftype: int) -> None:
    with pytest.raises(FrameEncodingError) as info:
        parse_frames(b"\x01" + raw)
    assert info.value.frame_type == ftype
    assert info.value.error_code == 0x07
    assert isinstance(info.value, WireError)


def test_max_streams_limit_exact() -> None:
    assert parse_frames(b"\x13" + encode_varint(2**60)) == [MaxStreams(False, 2**60)]


def test_encode_rejects_invalid() -> None:
    bad: list[Frame] = [
        Padding(0),
        Ack([], 0, None),
        Ack([(5, 3)], 0, None),
        Ack([(5, 6), (3, 4)], 0, None),  # adjacent ranges (gap would be -1)
        NewToken(b""),
        NewConnectionId(1, 0, b"", bytes(16)),
        NewConnectionId(1, 2, b"a", bytes(16)),
        NewConnectionId(1, 0, b"a", bytes(15)),
        PathChallenge(b"1234567"),
        PathResponse(b"123456789"),
        MaxStreams(True, 2**60 + 1),
        StreamsBlocked(True, 2**60 + 1),
        MaxData(VARINT_MAX + 1),
    ]
    for frame in bad:
        with pytest.raises(ValueError):
            enc(frame)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_frame_encoding_error(raw: bytes) -> None:
    try:
        frames = parse_frames(raw)
    except FrameEncodingError:
        return
    # Whatever parsed re-encodes (lengths may differ only through non-minimal varints).
    for f in frames:
        if isinstance(f, Ack):
            assert all(0 <= lo <= hi for lo, hi in f.ranges)


@given(st.lists(any_frame, min_size=1, max_size=4), st.data())
def test_truncation_raises_frame_encoding_error(frames: list[Frame], d: st.DataObject) -> None:
    raw = enc(*frames)
    cut = d.draw(st.integers(min_value=0, max_value=len(raw)))
    try:
        parse_frames(raw[:cut])
    except FrameEncodingError:
        pass


@given(st.integers(min_value=0, max_value=0x1E), st.binary(max_size=60))
def test_known_type_then_garbage_only_frame_encoding_error(ftype: int, body: bytes) -> None:
    try:
        parse_frames(bytes([ftype]) + body)
    except FrameEncodingError:
        pass
