"""A GRO batch taken as one run at once (``endpoint.segments``).

``Endpoint.receive_batch`` walks a batch segment by segment; when a run starts and every
segment to the end would join it, it takes them all at once. The shortcut must say yes
exactly when the walk would have put every remaining segment in the run, and give the
same entries: checked here against the walk on generated batches (short and long
headers, DCIDs that match or differ in one byte, a shorter or too-short last segment,
zero-length CIDs, bytes and memoryview buffers)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quicflow.endpoint.segments import short_run, short_run_python


def listed(entries: object) -> list[tuple[int, int, bytes]] | None:
    """``short_run``'s answer as a list (the native twin gives a read-only sequence)."""
    return None if entries is None else list(entries)  # type: ignore[call-overload]


def walk(data: bytes | memoryview, pos: int, segment_size: int, cid_len: int
         ) -> list[tuple[int, int, bytes]] | None:
    """The run entries the segment-by-segment walk gives from ``pos``, or None when
    some segment does not join the run (a long header, another DCID)."""
    total = len(data)
    key = bytes(data[pos + 1 : pos + 1 + cid_len])
    out = []
    while pos < total:
        end = min(pos + segment_size, total)
        if data[pos] & 0x80 or bytes(data[pos + 1 : pos + 1 + cid_len]) != key:
            return None
        out.append((pos, end - pos, key))
        pos = end
    return out


@st.composite
def batches(draw: st.DrawFn) -> tuple[bytes, int, int, int]:
    cid_len = draw(st.sampled_from([0, 1, 4, 8, 20]))
    segment_size = draw(st.integers(cid_len + 1, cid_len + 40))
    count = draw(st.integers(1, 12))
    key = draw(st.binary(min_size=cid_len, max_size=cid_len))
    segments = []
    for _ in range(count):
        first = draw(st.sampled_from([0x40, 0x41, 0x7F, 0x80, 0xC0]))
        dcid = bytearray(key)
        if cid_len and draw(st.integers(0, 5)) == 0:  # another connection: one byte off
            i = draw(st.integers(0, cid_len - 1))
            dcid[i] ^= draw(st.integers(1, 255))
        rest = draw(st.binary(min_size=segment_size, max_size=segment_size))
        segments.append((bytes([first]) + bytes(dcid) + rest)[:segment_size])
    last = draw(st.integers(1, segment_size))  # a shorter last segment, maybe too short
    segments[-1] = segments[-1][:last]
    pos = segment_size * draw(st.integers(0, count - 1))
    return b"".join(segments), segment_size, cid_len, pos


@given(batches(), st.booleans())
def test_short_run_agrees_with_the_walk(
    batch: tuple[bytes, int, int, int], as_view: bool
) -> None:
    raw, segment_size, cid_len, pos = batch
    data: bytes | memoryview = memoryview(raw) if as_view else raw
    if raw[pos] & 0x80:
        return  # a run starts only at a short header
    key = bytes(data[pos + 1 : pos + 1 + cid_len])
    if len(key) < cid_len:
        return  # (the receive path drops such a segment before a run starts)
    expected = walk(data, pos, segment_size, cid_len)
    assert short_run_python(data, pos, segment_size, key) == expected
    assert listed(short_run(data, pos, segment_size, key)) == expected


def test_a_full_batch_of_one_connection() -> None:
    key = bytes(range(8))
    segment = bytes([0x41]) + key + bytes(1191)
    data = segment * 63 + segment[:700]
    entries = listed(short_run(data, 0, 1200, key))
    assert entries is not None and len(entries) == 64
    assert entries[0] == (0, 1200, key)
    assert entries[-1] == (63 * 1200, 700, key)
    # the last segment from another connection, or a long header: not one run
    assert short_run(data[:-700] + bytes([0x41]) + bytes(8) + bytes(691), 0, 1200, key) is None
    assert short_run(data[:-700] + bytes([0xC1]) + key + bytes(691), 0, 1200, key) is None
