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

from quicflow.endpoint.segments import join_continuing, one_short_run, short_run_entries


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
def test_one_short_run_agrees_with_the_walk(
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
    assert one_short_run(data, pos, segment_size, key) == (expected is not None)
    if expected is not None:
        assert short_run_entries(pos, segment_size, len(data), key) == expected


def test_a_full_batch_of_one_connection() -> None:
    key = bytes(range(8))
    segment = bytes([0x41]) + key + bytes(1191)
    data = segment * 63 + segment[:700]
    assert one_short_run(data, 0, 1200, key)
    entries = short_run_entries(0, 1200, len(data), key)
    assert len(entries) == 64
    assert entries[0] == (0, 1200, key)
    assert entries[-1] == (63 * 1200, 700, key)
    # the last segment from another connection, or a long header: not one run
    assert not one_short_run(data[:-700] + bytes([0x41]) + bytes(8) + bytes(691), 0, 1200, key)
    assert not one_short_run(data[:-700] + bytes([0xC1]) + key + bytes(691), 0, 1200, key)


# ------------------------------------------------------------- join_continuing


def _segments(batch: list[tuple[bytes | memoryview, int, object, int]]
              ) -> list[tuple[bytes, object, int]]:
    """Every datagram of ``batch`` with its address and ECN bits, in order."""
    out = []
    for data, seg, addr, ecn in batch:
        raw = bytes(data)
        for pos in range(0, len(raw), seg):
            out.append((raw[pos : pos + seg], addr, ecn))
    return out


@st.composite
def receive_rounds(draw: st.DrawFn) -> list[tuple[bytes | memoryview, int, object, int]]:
    """Entries as a receive round gives them: GRO buffers (whole segments, or a shorter
    last one) and plain datagrams, from one or two addresses, with one or two ECN
    marks and segment sizes."""
    out: list[tuple[bytes | memoryview, int, object, int]] = []
    for _ in range(draw(st.integers(0, 10))):
        seg = draw(st.sampled_from([5, 7, 1200]))
        count = draw(st.integers(1, 5))
        last = draw(st.integers(1, seg)) if draw(st.booleans()) else seg
        size = seg * (count - 1) + last
        data = draw(st.binary(min_size=size, max_size=size))
        addr = draw(st.sampled_from([("127.0.0.1", 4433), ("127.0.0.1", 4434), None]))
        ecn = draw(st.sampled_from([0, 2]))
        entry_seg = seg if size > seg else size  # one datagram: its own length
        out.append((memoryview(data) if draw(st.booleans()) else data, entry_seg, addr, ecn))
    return out


@given(receive_rounds())
def test_join_continuing_keeps_every_datagram_and_its_marks(
    batch: list[tuple[bytes | memoryview, int, object, int]]
) -> None:
    joined = join_continuing(batch)
    assert _segments(joined) == _segments(batch)
    assert len(joined) <= len(batch)
    for data, seg, _, _ in joined:  # each entry: whole segments, the last maybe shorter
        assert 0 < seg <= len(data) or len(data) == seg == 0
    # a buffer continues the one before only if nothing told them apart
    for (a, sa, pa, ea), (_, sb, pb, eb) in zip(joined, joined[1:], strict=False):
        if sa < len(a) and len(a) % sa == 0:
            assert (sb, pb, eb) != (sa, pa, ea)


def test_join_continuing_joins_the_buffers_of_one_flight() -> None:
    addr = ("127.0.0.1", 4433)
    a, b, c = b"a" * 3600, b"b" * 2400, b"c" * 1000
    batch = [(a, 1200, addr, 2), (b, 1200, addr, 2), (c, 1000, addr, 2)]
    assert join_continuing(batch) == [(a + b, 1200, addr, 2), (c, 1000, addr, 2)]
    # another address, ECN mark or segment size starts a new buffer
    assert len(join_continuing([(a, 1200, addr, 2), (b, 1200, ("::1", 1), 2)])) == 2
    assert len(join_continuing([(a, 1200, addr, 2), (b, 1200, addr, 0)])) == 2
    assert len(join_continuing([(a, 1200, addr, 2), (b[:2000], 1000, addr, 2)])) == 2
    # after a shorter last segment nothing can continue the buffer
    assert len(join_continuing([(a[:3500], 1200, addr, 2), (b, 1200, addr, 2)])) == 2
    # a datagram of one segment's size continues a buffer; a lone one is left alone
    assert join_continuing([(a, 1200, addr, 2), (b[:1200], 1200, addr, 2)]) == [
        (a + b[:1200], 1200, addr, 2)]
    assert join_continuing([(c, 1000, addr, 2), (c, 1000, addr, 2)]) == [
        (c, 1000, addr, 2), (c, 1000, addr, 2)]
