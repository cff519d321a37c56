"""A GRO batch's segments taken as one run when they all belong to it.

``Endpoint.receive_batch`` walks a batch segment by segment: a short-header segment
whose DCID is that of the run before it joins the run, anything else ends it. In the
usual batch every segment from the first on is a short-header packet of one
connection; ``short_run`` finds that out with a few strided slices (one byte of every
segment per slice) and gives the run's entries at once, exactly what the walk would
have given (tests/test_endpoint_segments.py compares both). One call per GRO buffer:
the check and the entries are one function (two were two Python calls per buffer).

``short_run`` is the native engine's C twin of ``short_run_python`` when the extension is
there (tests/test_segments_native.py compares them): the same answer, its entries a
read-only sequence (``_native.Segments``) whose tuples are made only when asked for, and
which the engine's ``open_run`` walks by its stride (a download's receiver made one tuple
per datagram, ~0.9 M per GiB, only for ``open_run`` to take apart again)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat

from ..crypto.extension import EXT, python_forced


def short_run_python(data: bytes | memoryview, pos: int, segment_size: int, key: bytes
                     ) -> list[tuple[int, int, bytes]] | None:
    """The run entries ``(offset, length, dcid)`` of the segments of ``data`` from
    ``pos`` on (the last one may be shorter) when every one of them has a short header
    (first bit clear) and the DCID ``key`` right after its first byte; else None.
    ValueError when no segment starts at ``pos``."""
    total = len(data)
    if segment_size <= 0 or not 0 <= pos < total:
        raise ValueError("short_run: no segment at pos")
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


short_run: Callable[[bytes | memoryview, int, int, bytes],
                    Sequence[tuple[int, int, bytes]] | None] = (
    short_run_python if EXT is None or python_forced() else EXT.short_run)
