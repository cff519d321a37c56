"""The runner's split of a send buffer into GSO sends (``aio.gso.gso_batches``).

The split decides which datagrams share one sendmsg: every send must be a run of
equal-size datagrams of which only the last may be shorter, within the segment and byte
limits, and together the sends must cover the buffer in order. The fast path (a whole
full-size stretch compared at once) must split exactly as the datagram-by-datagram rule,
and so must the C twin (``gso_batches_native``, ``datapath/_udp_src``) that the runner
takes when the extension is built.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.aio.gso import (
    BUILD_BYTES,
    MAX_GSO_BYTES,
    MAX_GSO_SEGMENTS,
    TURN_DATAGRAMS,
    gso_batches,
    gso_batches_native,
    gso_batches_python,
    gso_run,
)
from quicflow.crypto.extension import python_forced
from quicflow.datapath.backends import udp_extension


def reference(bounds: list[int]) -> list[tuple[int, int, int]]:
    """The datagram-by-datagram rule (the runner's loop before the fast path)."""
    out = []
    n = len(bounds)
    i = 0
    start = 0
    while i < n:
        size = bounds[i] - start
        j = i + 1
        while j < n and j - i < MAX_GSO_SEGMENTS and bounds[j] - start <= MAX_GSO_BYTES:
            seg = bounds[j] - bounds[j - 1]
            if seg > size:
                break
            j += 1
            if seg < size:
                break
        out.append((start, bounds[j - 1], size))
        start = bounds[j - 1]
        i = j
    return out


def _bounds(sizes: list[int]) -> list[int]:
    out, end = [], 0
    for size in sizes:
        end += size
        out.append(end)
    return out


def _check_valid(bounds: list[int], batches: list[tuple[int, int, int]]) -> None:
    at = 0
    ends = set(bounds)
    for start, end, size in batches:
        assert start == at and end > start and end in ends
        inner = [x for x in bounds if start < x <= end]
        segments = [b - a for a, b in zip([start, *inner[:-1]], inner, strict=True)]
        assert segments[0] == size
        assert all(s == size for s in segments[:-1]) and segments[-1] <= size
        assert len(segments) <= MAX_GSO_SEGMENTS
        assert len(segments) == 1 or end - start <= MAX_GSO_BYTES
        at = end
    assert at == (bounds[-1] if bounds else 0)


def test_bulk_runs_split_at_the_segment_and_byte_limits() -> None:
    # 200 datagrams of 1200 bytes and a shorter last one: 54 fit in 65,000 bytes
    bounds = _bounds([1200] * 200 + [700])
    batches = gso_batches(bounds)
    assert [(e - s) // 1200 for s, e, _ in batches[:3]] == [54, 54, 54]
    assert batches[-1] == (54 * 3 * 1200, 200 * 1200 + 700, 1200)
    assert batches == reference(bounds)
    # small datagrams: the 64-segment limit
    small = _bounds([100] * 130)
    assert [(e - s) // 100 for s, e, _ in gso_batches(small)] == [64, 64, 2]
    assert gso_batches([]) == []
    # a zero-length entry (never built) does not break the split
    assert gso_batches([0, 0, 1200]) == reference([0, 0, 1200])


@given(st.lists(st.one_of(st.integers(1, 1500), st.sampled_from([1200, 1200, 1200, 1452])),
                max_size=300))
def test_split_matches_the_datagram_by_datagram_rule(sizes: list[int]) -> None:
    bounds = _bounds(sizes)
    batches = gso_batches(bounds)
    assert batches == reference(bounds)
    _check_valid(bounds, batches)


@given(st.integers(1, 1500), st.integers(1, 400), st.integers(1, 1500), st.integers(0, 5))
def test_long_equal_runs_with_a_tail(size: int, count: int, tail: int, extra: int) -> None:
    bounds = _bounds([size] * count + [tail] + [size] * extra)
    batches = gso_batches(bounds)
    assert batches == reference(bounds)
    _check_valid(bounds, batches)


def test_a_build_is_a_turn_of_whole_gso_sends() -> None:
    """``gso_run``: the datagrams one build asks for fill whole GSO sends exactly, as many
    as a turn holds within ``BUILD_BYTES`` (builds of two sends made a 400-datagram turn
    in four engine calls); a jumbo datagram size still builds at least one send."""
    for mds in (1200, 1350, 1452, 9000, 65000, 65527):
        n = gso_run(mds)
        per_send = min(MAX_GSO_BYTES // mds, MAX_GSO_SEGMENTS) or 1
        assert n % per_send == 0 and n <= TURN_DATAGRAMS
        assert n == per_send or n * mds <= BUILD_BYTES
        assert n + per_send > TURN_DATAGRAMS or (n + per_send) * mds > BUILD_BYTES
        batches = gso_batches(_bounds([mds] * n))
        assert batches == reference(_bounds([mds] * n)), mds
        assert all(end - start == per_send * mds for start, end, _ in batches), mds
    assert gso_run(1200) == 864 and gso_run(1452) == 704
    assert gso_run(100) == 1024 and gso_run(9000) == 112 and gso_run(65527) == 16


def test_a_bulk_download_sends_full_gso_batches() -> None:
    """One 16 MiB download over loopback in 1200-byte datagrams: the server's sends carry
    48.7 datagrams per sendmsg (31.0 with 64-datagram builds; 296 sendmsg calls against
    466), its engine calls 222-233 packets (82-84 with builds of two sends, 55 with 64
    datagrams), and the bytes arrive intact."""
    from tests.support.quic_helpers import loopback_download

    _, stats = loopback_download(16 << 20, seed=3)
    assert stats["datapath"]["segments_per_gso_call"] >= 40, stats["datapath"]
    assert stats["endpoint"]["packets_per_engine_call"] >= 150, stats["endpoint"]


@pytest.fixture
def _udp_built(require: Callable[[bool, str], None]) -> None:
    require(udp_extension() is not None, "quicflow.datapath._udp is not built")


def test_the_runner_splits_with_the_c_twin_when_it_is_built(_udp_built: None) -> None:
    want = gso_batches_python if python_forced() else gso_batches_native
    assert gso_batches is want


@given(st.lists(st.one_of(st.integers(0, 1500), st.sampled_from([1200, 1200, 1200, 1452]),
                          st.integers(1, 65000)), max_size=300))
def test_the_c_twin_splits_as_the_reference(sizes: list[int]) -> None:
    if gso_batches_native is None:
        return  # (the fixture above says so once; hypothesis runs this many times)
    bounds = _bounds(sizes)
    batches = gso_batches_native(bounds)
    assert batches == gso_batches_python(bounds) == reference(bounds)
    assert all(type(v) is int for run in batches for v in run)


@given(st.integers(1, 1500), st.integers(1, 900), st.integers(0, 1500), st.integers(0, 5))
def test_the_c_twin_splits_long_runs_with_a_tail_as_the_reference(
        size: int, count: int, tail: int, extra: int) -> None:
    if gso_batches_native is None:
        return
    bounds = _bounds([size] * count + [tail] + [size] * extra)
    assert gso_batches_native(bounds) == gso_batches_python(bounds) == reference(bounds)


def test_the_c_twin_refuses_what_the_reference_cannot_split(_udp_built: None) -> None:
    assert gso_batches_native is not None
    with pytest.raises(TypeError):
        gso_batches_python([1200, "x"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        gso_batches_native([1200, "x"])  # type: ignore[list-item]
