"""Batch send/receive primitives over one non-blocking UDP socket.

Two send backends exist:

* ``gso``: one ``sendmsg`` with a ``UDP_SEGMENT`` cmsg per chunk of up to 64 segments /
  64 KiB; the kernel (or the NIC) splits it into datagrams of the segment size.
* ``basic``: one ``send``/``sendto`` per datagram; always works.

Receive (both backends): with ``UDP_GRO`` enabled a buffer may hold several coalesced
segments, and the ``UDP_GRO`` cmsg tells their size. A batch of buffers is read with one
``recvmmsg`` by the optional C extension ``quicflow.datapath._udp`` (``recv_into_native``),
else with one ``recvmsg`` per buffer (``recv_into_python``, the reference: same entries,
same counters except ``syscalls_recv``). The native call also ends a batch as soon as the
kernel returns fewer buffers than asked, without the last read that fails with EAGAIN.
On a connected socket a build's GSO runs of one segment size go out in one call of the same
extension (``send_gso_runs_native``: the ``sendmsg`` calls of ``send_gso_runs``, the
reference, without a Python call, slice and exception frame around each).
``QUICFLOW_ENGINE=python`` forces the Python loops.

An ``mmsg`` send backend (ctypes ``sendmmsg``/``recvmmsg``) is deliberately absent:
measured here it is slower than the plain calls on receive and at most ~8 % faster on
send, while GSO/GRO are 5-25x faster (``bench/datapath_micro.py``, ``bench/RESULTS.md``);
a C ``sendmmsg`` saves about 0.6 us per loopback datagram (``bench/RESULTS.md``, "seventh
pass: the runner and datapath"), too little to gather sends for. The C ``recvmmsg`` above
is a different matter: it saves a Python call and exception per datagram.

Each primitive returns how far it got, so the caller can keep the rest for later; none
loses data silently.
"""

from __future__ import annotations

import errno
import functools
import importlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from quicflow.crypto.extension import python_forced
from quicflow.datapath.constants import (
    ECN_MASK,
    IP_RECVERR,
    IP_TOS,
    IPPROTO_IP,
    IPPROTO_IPV6,
    IPV6_RECVERR,
    IPV6_TCLASS,
    MSG_ERRQUEUE,
    MSG_TRUNC,
    RECV_SLOT_BYTES,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
)
from quicflow.datapath.probe import Capabilities

__all__ = [
    "DatapathCounters",
    "Address",
    "RecvEntry",
    "MMSG_REFUSED",
    "resolve_backend",
    "recv_into",
    "recv_into_python",
    "recv_into_native",
    "receiver_for",
    "native_receive_built",
    "udp_extension",
    "send_gso",
    "send_gso_runs",
    "send_gso_runs_native",
    "gso_runs_sender_for",
    "send_basic",
    "GSO_REFUSED_ERRNOS",
    "WOULD_BLOCK_ERRNOS",
    "ErrQueueEntry",
    "read_error_queue",
]

Address = tuple[str, int]
#: One received buffer: (data, segment_size, peer address, ECN bits).
RecvEntry = tuple[memoryview | bytes, int, Address, int]

#: Errors that mean "the kernel send buffer (or a queue below it) is full: try later".
WOULD_BLOCK_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
#: Errors of a GSO send that mean "this kernel / device / path refuses GSO".
GSO_REFUSED_ERRNOS = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE})

MMSG_REFUSED = (
    "backend 'mmsg' is not provided: measured on this project's reference machine, ctypes "
    "recvmmsg is slower than plain recvmsg and ctypes sendmmsg at most ~8% faster than "
    "send, while GSO/GRO are 5-25x faster (see bench/RESULTS.md, 'datapath micro-benchmark'); "
    "use 'auto', 'gso' or 'basic'"
)

_ANC_SPACE = socket.CMSG_SPACE(4) * 3


@dataclass(slots=True)
class DatapathCounters:
    """Per-socket counters (plain ints; read them any time)."""

    syscalls_send: int = 0
    syscalls_recv: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    batches_sent: int = 0
    batches_received: int = 0
    #: receive buffers the kernel cut (MSG_TRUNC); they are dropped, never delivered short
    truncated: int = 0
    #: sends refused with EAGAIN/EWOULDBLOCK/ENOBUFS (the data stays pending)
    send_eagain: int = 0
    #: GSO sends refused (EIO/EINVAL/EMSGSIZE) after which GSO was switched off
    gso_fallbacks: int = 0
    #: datagrams dropped because their own send failed with another error (e.g. EMSGSIZE
    #: on a datagram larger than the path MTU, ECONNREFUSED on a connected socket)
    send_errors: int = 0
    #: receive calls that failed with an error other than EAGAIN (e.g. a queued ICMP error)
    recv_errors: int = 0
    #: datagrams refused with EMSGSIZE (larger than the path MTU; counted in send_errors too)
    send_emsgsize: int = 0
    #: path MTU decreases learned (EMSGSIZE, IP_MTU, the IP_RECVERR error queue)
    pmtu_drops: int = 0
    unreachable: int = 0  # ICMP port unreachable (ECONNREFUSED) reports read
    #: entries read from the socket error queue (IP_RECVERR)
    errqueue_entries: int = 0
    #: sends retried once after an error: with IP_RECVERR a queued ICMP error (about any
    #: destination, on an unconnected socket) fails the next send once, whatever it is
    send_retries: int = 0


def resolve_backend(requested: str, caps: Capabilities) -> str:
    """Map a requested backend name to the one in use; raise ValueError if impossible."""
    if requested == "auto":
        return "gso" if caps.gso else "basic"
    if requested == "gso":
        if not caps.gso:
            raise ValueError("backend 'gso' requested but this kernel refuses UDP_SEGMENT")
        return "gso"
    if requested == "basic":
        return "basic"
    if requested == "mmsg":
        raise ValueError(MMSG_REFUSED)
    raise ValueError(f"unknown datapath backend {requested!r}: use 'auto', 'gso' or 'basic'")


@functools.cache  # (a hit is a C call: no Python frame per sendmsg)
def _segment_cmsg(segment_size: int) -> bytes:
    return struct.pack("=H", segment_size)


_UDP: Any
try:
    _UDP = importlib.import_module("quicflow.datapath._udp")
except ImportError:  # not built: no compiler, or QUICFLOW_NO_NATIVE at install time
    _UDP = None

#: how a batch is read: ``(sock, out, max_datagrams, counters)``
Receiver = Callable[[socket.socket, list[RecvEntry], int, DatapathCounters], None]


def recv_into_native(
    sock: socket.socket, out: list[RecvEntry], max_datagrams: int, counters: DatapathCounters
) -> None:
    """``recv_into_python`` in one ``recvmmsg`` per 8 buffers (``datapath/_udp_src``): the
    same entries and counters; fewer ``syscalls_recv`` (no EAGAIN read after a batch the
    kernel returned short). Needs the extension (``receiver_for``)."""
    calls, received, nbytes, errors, truncated = _UDP.recv(sock.fileno(), out, max_datagrams)
    counters.syscalls_recv += calls
    if received:
        counters.datagrams_received += received
        counters.bytes_received += nbytes
    if errors:
        counters.recv_errors += errors
    if truncated:
        counters.truncated += truncated


def udp_extension() -> Any:
    """The extension ``quicflow.datapath._udp`` when it was built and loads, else None."""
    return _UDP


def native_receive_built() -> bool:
    """Whether the extension ``quicflow.datapath._udp`` was built and loads."""
    return _UDP is not None


def receiver_for(sock: socket.socket) -> Receiver:
    """The receive loop for ``sock``: the native one when the extension is built, not
    forced off (``QUICFLOW_ENGINE=python``) and ``sock`` is an IPv4/IPv6 socket."""
    if _UDP is None or python_forced() or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return recv_into_python
    return recv_into_native


def recv_into(
    sock: socket.socket, out: list[RecvEntry], max_datagrams: int, counters: DatapathCounters
) -> None:
    """Append up to ``max_datagrams`` buffers read from ``sock`` to ``out`` (until the
    queue is empty), with the loop ``receiver_for`` picks."""
    receiver_for(sock)(sock, out, max_datagrams, counters)


def recv_into_python(
    sock: socket.socket, out: list[RecvEntry], max_datagrams: int, counters: DatapathCounters
) -> None:
    """Append up to ``max_datagrams`` buffers read from ``sock`` to ``out`` (until EAGAIN).

    The address is the kernel's, cut to (host, port): IPv4 peers of a dual-stack socket
    show as ``::ffff:a.b.c.d`` (see ``normalize_address``).
    """
    recvmsg = sock.recvmsg
    append = out.append
    received = 0
    nbytes = 0
    calls = 0
    try:
        for _ in range(max_datagrams):
            calls += 1
            try:
                data, ancdata, flags, addr = recvmsg(RECV_SLOT_BYTES, _ANC_SPACE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                counters.recv_errors += 1
                continue
            if flags & MSG_TRUNC:
                counters.truncated += 1
                continue
            size = len(data)
            segment = size
            ecn = 0
            for level, kind, cdata in ancdata:
                if level == SOL_UDP:
                    if kind == UDP_GRO:
                        segment = int.from_bytes(cdata[:4], "little")
                        if not 0 < segment < size:
                            segment = size
                elif kind == IP_TOS and level == IPPROTO_IP:
                    ecn = cdata[0] & ECN_MASK
                elif kind == IPV6_TCLASS and level == IPPROTO_IPV6:
                    ecn = cdata[0] & ECN_MASK  # little-endian int: low byte first
            if len(addr) != 2:
                addr = (addr[0], addr[1])
            append((data, segment, addr, ecn))
            received += -(-size // segment) if segment else 1
            nbytes += size
    finally:
        counters.syscalls_recv += calls
        counters.datagrams_received += received
        counters.bytes_received += nbytes


def send_gso(
    sock: socket.socket,
    view: memoryview,
    offset: int,
    segment_size: int,
    addr: Address | None,
    chunk_bytes: int,
    counters: DatapathCounters,
) -> tuple[int, int]:
    """Send ``view[offset:]`` as GSO chunks of ``chunk_bytes`` (a multiple of the segment).

    Returns ``(new_offset, errno)``: errno 0 when everything was sent; a would-block errno
    when the kernel buffer is full; any other errno when the chunk at ``new_offset`` failed
    (the caller retries that chunk with ``send_basic``, and switches GSO off when the errno
    is in ``GSO_REFUSED_ERRNOS``).
    """
    total = len(view)
    cmsg = [(SOL_UDP, UDP_SEGMENT, _segment_cmsg(segment_size))]
    sendmsg = sock.sendmsg
    retried = False
    while offset < total:
        end = offset + chunk_bytes
        if end > total:  # (min() without its call: once per sendmsg)
            end = total
        chunk = view[offset:end]
        counters.syscalls_send += 1
        try:
            if end - offset > segment_size:
                if addr is None:
                    sendmsg([chunk], cmsg)
                else:
                    sendmsg([chunk], cmsg, 0, addr)
            elif addr is None:
                sock.send(chunk)
            else:
                sock.sendto(chunk, addr)
        except InterruptedError:
            continue
        except OSError as exc:
            code = exc.errno or 0
            if code in WOULD_BLOCK_ERRNOS:
                counters.send_eagain += 1
            elif not retried:
                # maybe an error left by an earlier datagram (IP_RECVERR): once more
                retried = True
                counters.send_retries += 1
                continue
            return offset, code or errno.EIO
        retried = False
        counters.datagrams_sent += -(-(end - offset) // segment_size)
        counters.bytes_sent += end - offset
        offset = end
    return offset, 0


#: how a connected socket's GSO runs of one segment size are sent: ``(sock, view, runs,
#: first, segment_size, chunk_bytes, counters) -> (index, offset, errno)``
GsoRunsSender = Callable[
    [socket.socket, memoryview, list[tuple[int, int, int]], int, int, int, DatapathCounters],
    tuple[int, int, int],
]


def send_gso_runs(
    sock: socket.socket,
    view: memoryview,
    runs: list[tuple[int, int, int]],
    first: int,
    segment_size: int,
    chunk_bytes: int,
    counters: DatapathCounters,
) -> tuple[int, int, int]:
    """``send_gso`` of each of ``runs[first:]`` (``(start, end, size)`` in ``view``) on a
    connected socket while the run has ``segment_size`` and more than one datagram, one
    ``batches_sent`` each. Returns ``(index, offset, errno)``: the run it stopped at (the
    first it does not take, or ``len(runs)``; errno 0, offset that run's start) or the
    run whose chunk at ``offset`` failed with ``errno``, as ``send_gso`` returns it.

    The reference of ``send_gso_runs_native`` (``datapath/_udp_src``: the same sends and
    counters in one call, not one ``sendmsg`` call from Python each)."""
    n = len(runs)
    total = len(view)
    i = first
    offset = 0
    while i < n:
        start, end, size = runs[i]
        offset = start
        if size != segment_size or end - start <= size:
            return i, offset, 0
        counters.batches_sent += 1
        part = view if end == total else view[:end]
        offset, code = send_gso(sock, part, start, size, None, chunk_bytes, counters)
        if code:
            return i, offset, code
        i += 1
    return n, offset, 0


def send_gso_runs_native(
    sock: socket.socket,
    view: memoryview,
    runs: list[tuple[int, int, int]],
    first: int,
    segment_size: int,
    chunk_bytes: int,
    counters: DatapathCounters,
) -> tuple[int, int, int]:
    """``send_gso_runs`` in one call of the extension (``_udp.send_runs``): the same
    syscalls, results and counters. Needs the extension (``gso_runs_sender_for``)."""
    (index, offset, code, batches, syscalls, datagrams, nbytes, eagain,
     retries) = _UDP.send_runs(sock.fileno(), view, runs, first, segment_size, chunk_bytes)
    counters.batches_sent += batches
    counters.syscalls_send += syscalls
    counters.datagrams_sent += datagrams
    counters.bytes_sent += nbytes
    if eagain:
        counters.send_eagain += eagain
    if retries:
        counters.send_retries += retries
    return index, offset, code


def gso_runs_sender_for(sock: socket.socket) -> GsoRunsSender:
    """How ``sock``'s GSO runs go: the native loop when the extension is built, not forced
    off (``QUICFLOW_ENGINE=python``) and ``sock`` is an IPv4/IPv6 socket."""
    if _UDP is None or python_forced() or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return send_gso_runs
    return send_gso_runs_native


def send_basic(
    sock: socket.socket,
    view: memoryview,
    offset: int,
    segment_size: int,
    addr: Address | None,
    counters: DatapathCounters,
    limit: int | None = None,
) -> tuple[int, int]:
    """Send ``view[offset:limit]`` one datagram of ``segment_size`` (last may be shorter)
    per syscall. Returns ``(new_offset, errno)`` like ``send_gso`` (errno 0 or would-block).

    A datagram whose send fails is retried once (on a connected socket: for EMSGSIZE
    only), since a pending socket error left by an earlier datagram's ICMP error fails
    the next send once; if it fails again it is counted in ``send_errors`` (and
    ``send_emsgsize``) and skipped.
    """
    total = len(view) if limit is None else limit
    sent = 0
    nbytes = 0
    calls = 0
    code = 0
    retried = False
    try:
        if addr is None:
            send = sock.send
            while offset < total:
                end = min(offset + segment_size, total)
                calls += 1
                try:
                    send(view[offset:end])
                except InterruptedError:
                    continue
                except OSError as exc:
                    if (exc.errno or 0) in WOULD_BLOCK_ERRNOS:
                        counters.send_eagain += 1
                        code = exc.errno or errno.EAGAIN
                        return offset, code
                    if not retried and exc.errno == errno.EMSGSIZE:
                        retried = True  # maybe an error left by an earlier datagram
                        counters.send_retries += 1
                        continue
                    counters.send_errors += 1
                    if exc.errno == errno.EMSGSIZE:
                        counters.send_emsgsize += 1
                else:
                    sent += 1
                    nbytes += end - offset
                retried = False
                offset = end
        else:
            sendto = sock.sendto
            while offset < total:
                end = min(offset + segment_size, total)
                calls += 1
                try:
                    sendto(view[offset:end], addr)
                except InterruptedError:
                    continue
                except OSError as exc:
                    if (exc.errno or 0) in WOULD_BLOCK_ERRNOS:
                        counters.send_eagain += 1
                        code = exc.errno or errno.EAGAIN
                        return offset, code
                    if not retried:
                        retried = True  # maybe an error left by an earlier datagram
                        counters.send_retries += 1
                        continue
                    counters.send_errors += 1
                    if exc.errno == errno.EMSGSIZE:
                        counters.send_emsgsize += 1
                else:
                    sent += 1
                    nbytes += end - offset
                retried = False
                offset = end
        return offset, 0
    finally:
        counters.syscalls_send += calls
        counters.datagrams_sent += sent
        counters.bytes_sent += nbytes


#: One error-queue entry: (destination address, ee_errno, ee_origin, ee_type, ee_code,
#: ee_info). ``ee_info`` is the MTU (IP header included) for EMSGSIZE entries.
ErrQueueEntry = tuple[Address | None, int, int, int, int, int]
_EE = struct.Struct("=IBBBBII")
_ERRQUEUE_ANC = socket.CMSG_SPACE(_EE.size + 28) * 2


def read_error_queue(
    sock: socket.socket, counters: DatapathCounters, limit: int = 256
) -> list[ErrQueueEntry]:
    """Drain (up to ``limit`` entries of) the socket's error queue (needs IP_RECVERR /
    IPV6_RECVERR); [] when it is empty. Each entry's address is where the refused
    datagram was going (``None`` when the kernel gave none)."""
    out: list[ErrQueueEntry] = []
    for _ in range(limit):
        try:
            _, ancdata, _, addr = sock.recvmsg(64, _ERRQUEUE_ANC, MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        counters.errqueue_entries += 1
        dest: Address | None = None
        if isinstance(addr, tuple) and len(addr) >= 2 and addr[0]:
            dest = (addr[0], int(addr[1]))
        for level, kind, cdata in ancdata:
            if (level, kind) in ((IPPROTO_IP, IP_RECVERR), (IPPROTO_IPV6, IPV6_RECVERR)):
                if len(cdata) >= _EE.size:
                    ee_errno, origin, ee_type, code, _, info, _ = _EE.unpack_from(cdata)
                    out.append((dest, ee_errno, origin, ee_type, code, info))
    return out
