"""How the runner hands a buffer of datagrams to the socket: GSO sends.

A build puts datagrams back to back in one buffer (``bounds``: the end offset of each);
``gso_batches`` splits it into sends of equal-size datagrams (only the last of a send may
be shorter) within the kernel's segment and byte limits, and ``send_buffer`` sends them
straight from the buffer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..crypto.extension import python_forced
from ..datapath.backends import udp_extension
from ..datapath.socket import UdpTransport

MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
#: datagrams a connection's send turn builds at most before it yields to the loop
TURN_DATAGRAMS = 1024
#: bytes one build holds at most (the buffer a full socket leaves queued)
BUILD_BYTES = 1 << 20


@functools.cache  # (once per datagram size: a hit is a C call)
def gso_run(max_datagram_size: int) -> int:
    """Datagrams one build asks for: whole GSO sends of ``max_datagram_size``, as many
    as a turn holds (``TURN_DATAGRAMS``) within ``BUILD_BYTES`` (864 of 1200 bytes: 16
    sends of 54). The pacer's bucket and the window bound the run, not the build: each
    build is one engine call's Python set-up (``build_datagrams``, ``bulk_applies``,
    ``build_bulk``, its pacer queries, a SentPacket), so a turn of 400 datagrams made in
    builds of two sends (108) paid it four times (issue 11: one connection made 9.0 k
    engine calls per GiB with builds of two sends, 1.1 k with a turn per build; 256 x
    4 MiB, whose runs are cwnd / 8 in slow start, 16.5 k -> 13.8 k). A bulk run's
    datagrams are one size, so a full build goes out in whole sendmsg calls; what a full
    socket buffer leaves of it waits in the socket's queue (at most ``BUILD_BYTES``)."""
    per_send = max(1, min(MAX_GSO_BYTES // max_datagram_size, MAX_GSO_SEGMENTS))
    sends = min(TURN_DATAGRAMS // per_send, BUILD_BYTES // (per_send * max_datagram_size))
    return per_send * max(1, sends)


def gso_batches_python(bounds: list[int]) -> list[tuple[int, int, int]]:
    """Split datagrams lying back to back (``bounds``: the end offset of each) into GSO
    sends: ``(start, end, segment size)``, each a run of equal-size datagrams of at most
    ``MAX_GSO_SEGMENTS`` and ``MAX_GSO_BYTES`` of which only the last may be shorter.

    A bulk run's datagrams are all one size, so the full-size stretch of a send is
    checked in one comparison of ``bounds`` with the offsets it would have (C speed)
    instead of datagram by datagram; the datagram-by-datagram rule then decides the
    rest (at most one more, shorter datagram, or every one when the sizes differ).
    """
    out: list[tuple[int, int, int]] = []
    n = len(bounds)
    i = 0
    start = 0
    while i < n:
        size = bounds[i] - start
        m = n - i
        if m > MAX_GSO_SEGMENTS:
            m = MAX_GSO_SEGMENTS
        if size <= 0:  # (never built: an empty datagram goes alone)
            m = 1
        elif m > MAX_GSO_BYTES // size:
            m = MAX_GSO_BYTES // size
        j = i + 1
        if m > 1 and bounds[i + m - 1] != start + m * size:
            m -= 1  # (the last datagram of a run is often shorter)
        if m > 1 and bounds[i + m - 1] == start + m * size and bounds[i : i + m] == list(
            range(start + size, start + m * size + 1, size)
        ):
            j = i + m  # m full-size datagrams
        while j < n and j - i < MAX_GSO_SEGMENTS and bounds[j] - start <= MAX_GSO_BYTES:
            seg = bounds[j] - bounds[j - 1]
            if seg > size:
                break
            j += 1
            if seg < size:
                break
        end = bounds[j - 1]
        out.append((start, end, size))
        start = end
        i = j
    return out


_UDP: Any = udp_extension()
_Split = Callable[[list[int]], list[tuple[int, int, int]]]
#: ``gso_batches_python``'s split in one call of the extension (``_udp.gso_batches``: the
#: datagram-by-datagram rule in C, no list built per run to compare with), its limits
#: bound here (a partial: no Python frame of its own)
gso_batches_native: _Split | None = (
    functools.partial(_UDP.gso_batches, MAX_GSO_SEGMENTS, MAX_GSO_BYTES)
    if _UDP is not None else None)
#: the split the runner uses: the C twin when the extension is built and not forced off
gso_batches: _Split = (gso_batches_native if gso_batches_native is not None
                       and not python_forced() else gso_batches_python)


def send_buffer(
    transport: UdpTransport, buf: bytearray, bounds: list[int],
    addr: tuple[Any, ...] | None, ecn: int,
) -> bool:
    """Send runs of equal-size datagrams (the last of a run may be shorter) as GSO
    batches straight from the buffer, in one call into the socket (``send_runs``: one
    ``batches_sent`` per run, as a ``send_batch`` each would count); False when the
    kernel buffer filled up."""
    return transport.send_runs(buf, gso_batches(bounds), addr, ecn)


def join_singles(
    singles: list[tuple[bytearray, tuple[Any, ...], int, Any]],
) -> list[tuple[tuple[Any, ...], int, bytearray, list[int], list[Any]]]:
    """The one-datagram builds of a receive round on a shared client socket (mostly
    ACKs of many connections to one server), ``(datagram, destination, ECN, owner)``,
    as sends: per destination and ECN codepoint ``(destination, ECN, buffer, bounds,
    owners)``, the datagrams back to back from the largest to the smallest, so that
    ``send_buffer`` sends runs of one size (the last of each may be shorter) in one call
    into the socket instead of a ``sendmsg`` each. Datagrams of different connections
    have no order between them; each connection has at most one here."""
    groups: dict[tuple[tuple[Any, ...], int], list[tuple[bytearray, Any]]] = {}
    for data, addr, ecn, owner in singles:
        key = (addr, ecn)
        group = groups.get(key)
        if group is None:
            groups[key] = [(data, owner)]
        else:
            group.append((data, owner))
    out = []
    for (addr, ecn), group in groups.items():
        if len(group) == 1:
            data, owner = group[0]
            out.append((addr, ecn, data, [len(data)], [owner]))
            continue
        group.sort(key=_size, reverse=True)
        buf = bytearray()
        bounds = []
        for data, _ in group:
            buf += data
            bounds.append(len(buf))
        out.append((addr, ecn, buf, bounds, [owner for _, owner in group]))
    return out


def _size(item: tuple[bytearray, Any]) -> int:
    return len(item[0])
