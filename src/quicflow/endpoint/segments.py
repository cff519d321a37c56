"""A GRO batch's segments taken as one run when they all belong to it, and the GRO
buffers of one receive round joined where each continues the one before.

``Endpoint.receive_batch`` walks a batch segment by segment: a short-header segment
whose DCID is that of the run before it joins the run, anything else ends it. In the
usual batch every segment from the first on is a short-header packet of one
connection; these two functions find that out with a few strided slices (one byte of
every segment per slice) and give the run's entries at once, exactly what the walk
would have given (tests/test_endpoint_segments.py compares both)."""

from __future__ import annotations

from typing import Any

#: (data, segment_size, address, ecn): a receive entry (datapath.backends.RecvEntry)
Entry = tuple[Any, int, Any, int]


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
    for byte in key:  # the DCID's i-th byte of every segment (bytes.count: one C loop)
        if bytes(data[i:total:segment_size]).count(byte) != count:
            return False
        i += 1
    return True


def short_run_entries(pos: int, segment_size: int, total: int, key: bytes
                      ) -> list[tuple[int, int, bytes]]:
    """The run entries ``(offset, length, dcid)`` of the segments from ``pos`` to
    ``total`` (the last one may be shorter)."""
    run = [(p, segment_size, key) for p in range(pos, total, segment_size)]
    p = run[-1][0]
    if total - p != segment_size:
        run[-1] = (p, total - p, key)
    return run


def join_continuing(batch: list[Entry]) -> list[Entry]:
    """``batch`` with each GRO buffer that continues the one before joined to it: same
    segment size, address and ECN bits, the one before a GRO buffer (several segments)
    of whole segments only. The segments, their order, sizes, addresses and ECN bits are
    those of ``batch``; only how many buffers hold them changes.

    The kernel hands a download over in buffers of at most 64 KiB; those of one flight
    arrive back to back (at 256 connections a receive round holds 3-4 of one connection,
    37 segments each). ``Endpoint.receive_batch`` then costs one lookup, one run check
    and one engine call per joined buffer instead of per kernel buffer, for a copy of the
    bytes (about 0.03 s per GiB)."""
    out: list[Entry] = []
    parts: list[Any] = []
    size = 0  # bytes in ``parts``
    head: Entry | None = None  # the first entry of ``parts``
    for entry in batch:
        data = entry[0]
        if (head is not None and entry[1] == head[1] and size % head[1] == 0
                and entry[2] == head[2] and entry[3] == head[3]):
            parts.append(data)
            size += len(data)
            continue
        if head is not None:
            out.append(head if len(parts) == 1 else (b"".join(parts),) + head[1:])
        n = len(data)
        if entry[1] < n:  # a GRO buffer: later ones may continue it
            head, parts, size = entry, [data], n
        else:
            out.append(entry)
            head, parts, size = None, [], 0
    if head is not None:
        out.append(head if len(parts) == 1 else (b"".join(parts),) + head[1:])
    return out
