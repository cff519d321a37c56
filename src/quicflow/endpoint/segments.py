"""A GRO batch's segments taken as one run when they all belong to it.

``Endpoint.receive_batch`` walks a batch segment by segment: a short-header segment
whose DCID is that of the run before it joins the run, anything else ends it. In the
usual batch every segment from the first on is a short-header packet of one
connection; these two functions find that out with a few strided slices (one byte of
every segment per slice) and give the run's entries at once, exactly what the walk
would have given (tests/test_endpoint_segments.py compares both)."""

from __future__ import annotations

from itertools import repeat


def one_short_run(data: bytes | memoryview, pos: int, segment_size: int, key: bytes) -> bool:
    """Whether every segment of ``data`` from ``pos`` on has a short header (first bit
    clear) and the DCID ``key`` right after its first byte, the last (possibly shorter)
    one included."""
    total = len(data)
    last = pos + (total - pos - 1) // segment_size * segment_size  # the last segment
    if total - last < 1 + len(key):  # too short to hold the DCID: not a run member
        return False
    if max(data[pos:total:segment_size]) & 0x80:
        return False
    count = (total - pos + segment_size - 1) // segment_size
    i = pos + 1
    for byte in key:  # the DCID's i-th byte of every segment, compared in one C loop
        if data[i:total:segment_size] != _ONE_BYTE[byte] * count:
            return False
        i += 1
    return True


_ONE_BYTE = [bytes((b,)) for b in range(256)]


def short_run_entries(pos: int, segment_size: int, total: int, key: bytes
                      ) -> list[tuple[int, int, bytes]]:
    """The run entries ``(offset, length, dcid)`` of the segments from ``pos`` to
    ``total`` (the last one may be shorter)."""
    # (built in C: a comprehension is a Python frame per GRO buffer, ~20 k per GiB)
    run = list(zip(range(pos, total, segment_size), repeat(segment_size), repeat(key)))
    p = run[-1][0]
    if total - p != segment_size:
        run[-1] = (p, total - p, key)
    return run
