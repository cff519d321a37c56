"""A GRO batch's segments taken as one run when they all belong to it.

``Endpoint.receive_batch`` walks a batch segment by segment: a short-header segment
whose DCID is that of the run before it joins the run, anything else ends it. In the
usual batch every segment from the first on is a short-header packet of one
connection; ``short_run`` finds that out with a few strided slices (one byte of every
segment per slice) and gives the run's entries at once, exactly what the walk would
have given (tests/test_endpoint_segments.py compares both). One call per GRO buffer:
the check and the entries are one function (two were two Python calls per buffer)."""

from __future__ import annotations

from itertools import repeat


def short_run(data: bytes | memoryview, pos: int, segment_size: int, key: bytes
              ) -> list[tuple[int, int, bytes]] | None:
    """The run entries ``(offset, length, dcid)`` of the segments of ``data`` from
    ``pos`` on (the last one may be shorter) when every one of them has a short header
    (first bit clear) and the DCID ``key`` right after its first byte; else None."""
    total = len(data)
    last = pos + (total - pos - 1) // segment_size * segment_size  # the last segment
    if total - last < 1 + len(key):  # too short to hold the DCID: not a run member
        return None
    if max(data[pos:total:segment_size]) & 0x80:
        return None
    count = (total - pos + segment_size - 1) // segment_size
    i = pos + 1
    for byte in key:  # the DCID's i-th byte of every segment, compared in one C loop
        if data[i:total:segment_size] != _ONE_BYTE[byte] * count:
            return None
        i += 1
    # (built in C: a comprehension is one more Python frame per GRO buffer)
    run = list(zip(range(pos, total, segment_size), repeat(segment_size), repeat(key)))
    if total - last != segment_size:
        run[-1] = (last, total - last, key)
    return run


_ONE_BYTE = [bytes((b,)) for b in range(256)]
