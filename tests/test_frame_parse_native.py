"""The C engine's frame parser (transport/frame_parse.py) against the Python reference
(wire/frames.parse_frames).

For any payload, ``transport.frame_parse.parse_frames`` gives what the reference gives:
equal frames, or ``FrameEncodingError`` with the same frame type and message. C parses
payloads of the frames handshakes and plain 1-RTT packets carry (the test checks it
does not hand well-formed ones back) and returns None for everything else.
"""

from __future__ import annotations

import dataclasses
import gc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.crypto import native
from quicflow.transport import frame_parse
from quicflow.wire.errors import FrameEncodingError
from quicflow.wire.frames import (
    ConnectionClose,
    Frame,
    HandshakeDone,
    MaxData,
    MaxStreamData,
    MaxStreams,
    Padding,
    Ping,
    encode_frame,
    parse_frames,
)
from quicflow.wire.varint import VARINT_MAX, encode_varint
from tests import test_wire_frames
from tests.support.prereq import require
from tests.test_wire_frames import (
    ack_frames,
    any_frame,
    crypto_frames,
    new_cid_frames,
    stream_frames,
)

#: the frames C parses itself
common_frame: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Padding, st.integers(min_value=1, max_value=50)),
    st.just(Ping()),
    ack_frames(),
    crypto_frames(),
    stream_frames(),
    new_cid_frames(),
    st.builds(ConnectionClose, st.integers(0, VARINT_MAX),
              st.none() | st.integers(0, VARINT_MAX), st.binary(max_size=64)),
    st.just(HandshakeDone()),
    st.builds(MaxData, st.integers(0, VARINT_MAX)),
    st.builds(MaxStreamData, st.integers(0, VARINT_MAX), st.integers(0, VARINT_MAX)),
)


@pytest.fixture(autouse=True)
def _need_native() -> None:
    require(native.available(), f"native crypto extension not built "
            f"({native.unavailable_reason()})")


def _enc(frames: list[Frame]) -> bytes:
    out = bytearray()
    for frame in frames:
        encode_frame(frame, out)
    return bytes(out)


def _both_agree(payload: bytes | bytearray | memoryview) -> list[Frame] | None:
    try:
        expected: list[Frame] | tuple[int, str] = parse_frames(payload)
    except FrameEncodingError as exc:
        expected = (exc.frame_type, str(exc))
    fast: list[Frame] | None = native._ext.parse_frames(payload, frame_parse.CLASSES)
    if fast is not None:
        assert fast == expected
        assert [type(f) for f in fast] == [type(f) for f in expected]  # type: ignore[union-attr]
    try:
        got: list[Frame] | tuple[int, str] = frame_parse.parse_frames(payload)
    except FrameEncodingError as exc:
        got = (exc.frame_type, str(exc))
    assert got == expected
    return fast


def _merged(frames: list[Frame]) -> list[Frame]:
    """What parsing gives back for ``frames``: adjacent PADDING frames are one run."""
    out: list[Frame] = []
    for frame in frames:
        if isinstance(frame, Padding) and out and isinstance(out[-1], Padding):
            out[-1] = Padding(out[-1].length + frame.length)
        else:
            out.append(frame)
    return out


@given(st.lists(common_frame, max_size=8))
def test_common_frames_parse_in_c_as_in_python(frames: list[Frame]) -> None:
    payload = _enc(frames)
    for data in (payload, bytearray(payload), memoryview(payload)):
        fast = _both_agree(data)
        assert fast is not None and fast == _merged(frames)


@given(st.lists(any_frame, min_size=1, max_size=6))
def test_any_frames_parse_or_fail_alike(frames: list[Frame]) -> None:
    _both_agree(_enc(frames))


@given(st.lists(common_frame, min_size=1, max_size=4), st.data())
def test_truncated_and_damaged_payloads_fail_alike(
    frames: list[Frame], d: st.DataObject
) -> None:
    payload = _enc(frames)
    cut = d.draw(st.integers(0, len(payload)))
    _both_agree(payload[:cut])
    flipped = bytearray(payload)
    flipped[d.draw(st.integers(0, len(payload) - 1))] ^= d.draw(st.integers(1, 255))
    _both_agree(bytes(flipped))


@given(st.binary(max_size=120))
def test_arbitrary_bytes_parse_or_fail_alike(raw: bytes) -> None:
    _both_agree(raw)


@given(st.integers(min_value=0, max_value=0x1E), st.binary(max_size=60))
def test_known_type_then_garbage_parses_or_fails_alike(ftype: int, body: bytes) -> None:
    _both_agree(bytes([ftype]) + body)


@pytest.mark.parametrize("raw", [
    case[0] for case in test_wire_frames.test_malformed.pytestmark[0].args[1]  # type: ignore[attr-defined]
])
def test_each_malformed_frame_fails_alike(raw: bytes) -> None:
    assert _both_agree(b"\x01" + raw) is None


def test_what_c_leaves_to_python() -> None:
    assert _both_agree(b"\x40\x01\x80\x00\x00\x1e") is None  # non-minimal frame types
    assert _both_agree(_enc([MaxStreams(True, 5)])) is None  # another frame type
    assert _both_agree(b"\x02\x05\x00" + encode_varint(2**40) + b"\x00") is None  # count
    assert _both_agree(b"") == []
    assert _both_agree(bytes(70000)) == [Padding(70000)]  # longer than the zeros table


def test_the_receive_path_uses_the_c_parser() -> None:
    if frame_parse.NATIVE_PARSE is None:  # QUICFLOW_ENGINE=python: the reference alone
        assert frame_parse.parse_frames is parse_frames
        return
    from quicflow.transport import receive

    assert vars(receive)["parse_frames"] is frame_parse.parse_frames
    assert frame_parse.parse_frames is frame_parse._parse_frames


def test_frame_classes_are_plain_dataclasses() -> None:
    """C builds these classes' objects without their __init__: that is only the same
    object when __init__ is the generated one that assigns the fields in __slots__
    order, and nothing runs after it."""
    for cls in frame_parse.CLASSES:
        assert dataclasses.is_dataclass(cls) and cls.__new__ is object.__new__
        assert cls.__slots__ == tuple(f.name for f in dataclasses.fields(cls))
        assert not hasattr(cls, "__post_init__")
        assert cls.__init__.__code__.co_filename == "<string>"  # (dataclass-generated)
    frames = native._ext.parse_frames(_enc([Ping(), HandshakeDone()]) + b"\x00\x00",
                                      frame_parse.CLASSES)
    assert frames == [Ping(), HandshakeDone(), Padding(2)]
    assert all(gc.is_tracked(f) for f in frames[2:])


def test_other_classes_are_called() -> None:
    """A class C cannot build directly (its own __init__, __post_init__, no slots) is
    called with the fields, as before."""
    made: list[tuple[object, ...]] = []

    class Called:
        def __init__(self, *args: object) -> None:
            made.append(args)

    @dataclasses.dataclass(slots=True)
    class Checked:
        offset: int
        data: bytes

        def __post_init__(self) -> None:
            made.append(("post", self.offset))

    classes = list(frame_parse.CLASSES)
    classes[1] = Called  # Ping
    classes[3] = Checked  # Crypto
    frames = native._ext.parse_frames(b"\x01\x06\x05\x01x", tuple(classes))
    assert [type(f) for f in frames] == [Called, Checked]
    assert made == [(), ("post", 5)] and frames[1].data == b"x"
    # and the real classes again (the layouts follow the tuple passed)
    assert native._ext.parse_frames(b"\x01", frame_parse.CLASSES) == [Ping()]


def test_window_updates_beside_an_ack_parse_in_c() -> None:
    """A receiver's ACK with its MAX_DATA and MAX_STREAM_DATA (what a download's client
    sends the server) stays in C; a truncated one goes to the reference and fails alike."""
    from quicflow.wire.frames import Ack

    frames: list[Frame] = [Ack([(90, 100)], 7, None), MaxData(1 << 30),
                           MaxStreamData(4, (1 << 40) + 3), Padding(3)]
    assert _both_agree(_enc(frames)) == frames
    payload = _enc(frames[:3])
    for cut in range(1, len(payload)):
        _both_agree(payload[:cut])
