"""A sorted set of half-open integer ranges, for packet numbers and stream offsets."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class RangeSet:
    """Disjoint, non-adjacent, sorted ``[start, end)`` ranges kept as two flat lists."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def add(self, start: int, end: int) -> None:
        """Add ``[start, end)``, merging with overlapping or adjacent ranges."""
        if start >= end:
            return
        starts, ends = self.starts, self.ends
        # fast path: append at the end (the common in-order case)
        if not ends or start > ends[-1]:
            starts.append(start)
            ends.append(end)
            return
        if start <= ends[-1] and start >= starts[-1]:
            if end > ends[-1]:
                ends[-1] = end
            return
        lo = bisect_left(ends, start)
        hi = bisect_right(starts, end)
        if lo == hi:
            starts.insert(lo, start)
            ends.insert(lo, end)
            return
        new_start = min(start, starts[lo])
        new_end = max(end, ends[hi - 1])
        starts[lo:hi] = [new_start]
        ends[lo:hi] = [new_end]

    def subtract(self, start: int, end: int) -> None:
        """Remove ``[start, end)``."""
        if start >= end or not self.starts:
            return
        starts, ends = self.starts, self.ends
        lo = bisect_right(ends, start)
        hi = bisect_left(starts, end)
        if lo >= hi:
            return
        new_starts: list[int] = []
        new_ends: list[int] = []
        if starts[lo] < start:
            new_starts.append(starts[lo])
            new_ends.append(start)
        if ends[hi - 1] > end:
            new_starts.append(end)
            new_ends.append(ends[hi - 1])
        starts[lo:hi] = new_starts
        ends[lo:hi] = new_ends

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self.starts, value) - 1
        return i >= 0 and value < self.ends[i]

    def covers(self, start: int, end: int) -> bool:
        """True when all of ``[start, end)`` is in the set."""
        i = bisect_right(self.starts, start) - 1
        return i >= 0 and end <= self.ends[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.starts, self.ends, strict=True))

    def __len__(self) -> int:
        return len(self.starts)

    def __bool__(self) -> bool:
        return bool(self.starts)

    def largest(self) -> int:
        """Largest value in the set; the set must not be empty."""
        return self.ends[-1] - 1

    def shift_below(self, value: int) -> None:
        """Forget everything below ``value``."""
        self.subtract(-1 << 63, value)

    def copy(self) -> RangeSet:
        return RangeSet(list(self.starts), list(self.ends))
