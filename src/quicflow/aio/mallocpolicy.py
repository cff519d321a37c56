"""Keep glibc's malloc from giving the heap back between receive turns of a bulk receiver.

A receiver at a gigabyte per second moves every byte through short-lived buffers of
tens of kilobytes to a megabyte: the datagrams read in one round (a GRO buffer is up to
64 segments), the decrypted runs its streams hold until the application reads them, and
the application's reads (up to a megabyte joined). One turn of the loop reads several
rounds: megabytes allocated, then all freed when the readers have run. glibc's defaults
then return the top of the heap to the kernel (``M_TRIM_THRESHOLD``, which follows the
largest freed ``mmap`` chunk: about 2 MiB here) and the next turn faults the same pages
in again, zeroed by the kernel. Measured on a 1 GiB download (issue 11, ``perf stat -e
page-faults`` on the perf client): 67-225 k page faults for one connection, about 12 k
with this policy (start-up and handshake included); the kernel's page-fault path was
7-10 % of the client's CPU samples (``perf record``).

The policy: when the first runner of the process starts, on glibc, set a fixed
``M_MMAP_THRESHOLD`` of :data:`MMAP_THRESHOLD` (so the read buffers and joins come from
the heap, not from a fresh ``mmap`` each) and an ``M_TRIM_THRESHOLD`` of
:data:`TRIM_THRESHOLD` (the heap keeps up to that much free memory for the next turn
instead of trimming it). The price: after a burst, up to that much free heap stays
with the process instead of going back to the system.

What a receiver holds between its readers' turns grows with its connections: a client
with 64 bulk downloads held 80-130 MB of received data at times (a runner per
connection: one loop turn reads several sockets before any reader runs), so a fixed
32 MiB let the heap go back and be faulted in again every cycle (issue 11: 66-81 k page
faults per GiB at 64 connections against 11.5 k for one). The free heap kept therefore
follows what the connections' receive windows let their peers make us hold: the
runners report each connection's window (the flow-control credit we advertised, which
bounds its unread data) and the threshold is the smallest power-of-two multiple of
:data:`TRIM_THRESHOLD` that covers their sum, at most :data:`RETAIN_CAP` (and 1/16 of
the machine's memory), lowered again when the sum falls below a quarter of it (so a
server whose connections come and go does not call ``mallopt`` at every one). No more
is kept than the peers could have made us allocate anyway.

When the threshold comes down, and when the connections of a big process fall to a
quarter of their peak (the GC policy sees that, :mod:`.gcpolicy`, and collects first),
:meth:`MallocPolicy.release` has glibc's ``malloc_trim`` give back the free heap beyond
the threshold then in force, pages in the middle of the heap included (a threshold
lowered by ``mallopt`` trims only the top, and only at a later free).

Process-wide, like :mod:`.gcpolicy`. Left alone when the environment already tunes
malloc (``GLIBC_TUNABLES`` naming ``glibc.malloc``, or a ``MALLOC_*_`` variable), on
other C libraries, and after ``set_enabled(False)`` (call it before the first runner
starts; settings already made stay).
"""

from __future__ import annotations

import ctypes
import os
import sys

#: glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: allocations from this size get their own mmap (glibc's default starts at 128 KiB and
#: rises with the chunks freed, up to 32 MiB)
MMAP_THRESHOLD = 4 << 20
#: free memory at the top of the heap kept for reuse (at least; see the module text)
TRIM_THRESHOLD = 32 << 20
#: the most free heap kept, whatever the connections' windows add up to
RETAIN_CAP = 256 << 20


class MallocPolicy:
    __slots__ = ("enabled", "applied", "mallopt", "malloc_trim", "windows", "trim", "cap",
                 "releases")

    def __init__(self) -> None:
        self.enabled = True
        self.applied = False  # mallopt was called (once per process)
        #: glibc's mallopt, once the policy applies (None: it does not)
        self.mallopt: ctypes._NamedFuncPointer | None = None
        self.malloc_trim: ctypes._NamedFuncPointer | None = None  # (glibc's, likewise)
        self.releases = 0  # malloc_trim calls made
        #: the receive windows of the runners' connections, summed (bytes)
        self.windows = 0
        self.trim = TRIM_THRESHOLD  # the trim threshold set
        self.cap = RETAIN_CAP

    def runner_started(self) -> None:
        """A runner starts: apply the thresholds (once per process)."""
        if self.applied or not self.enabled:
            return
        self.applied = True
        if _environment_tunes_malloc():
            return
        mallopt = _glibc_mallopt()
        if mallopt is None:
            return
        self.malloc_trim = _glibc_malloc_trim()
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        self.mallopt = mallopt
        self.cap = max(TRIM_THRESHOLD, min(RETAIN_CAP, _physical_memory() // 16))
        self.trim = TRIM_THRESHOLD
        self.windows_changed(0)  # connections counted before the first runner started

    def windows_changed(self, delta: int) -> None:
        """The connections' receive windows grew (or shrank, a connection went) by
        ``delta`` bytes: keep the trim threshold in step (see the module text)."""
        windows = self.windows = self.windows + delta
        mallopt = self.mallopt
        if mallopt is None:
            return
        trim = self.trim
        if windows > trim and trim < self.cap or windows < trim >> 2 and trim > TRIM_THRESHOLD:
            want = TRIM_THRESHOLD
            while want < windows and want < self.cap:
                want <<= 1
            want = min(want, self.cap)
            if want != trim:
                self.trim = want
                mallopt(M_TRIM_THRESHOLD, want)
                if want < trim:  # the connections that held more are gone: their heap
                    self.release()  # goes back now, not at some later free at the top

    def release(self) -> None:
        """Give the free heap beyond the trim threshold in force back to the system
        (``malloc_trim``; a no-op where the policy does not apply)."""
        malloc_trim = self.malloc_trim
        if malloc_trim is not None and self.mallopt is not None:
            malloc_trim(self.trim)
            self.releases += 1


def _environment_tunes_malloc() -> bool:
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return RETAIN_CAP * 16


def _glibc_mallopt() -> ctypes._NamedFuncPointer | None:
    """glibc's ``mallopt`` of this process, or None (another C library, or no ctypes
    access to it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return None  # musl and others: their malloc has no such thresholds
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def _glibc_malloc_trim() -> ctypes._NamedFuncPointer | None:
    """glibc's ``malloc_trim`` (this process runs glibc: ``_glibc_mallopt`` found it)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = (ctypes.c_size_t,)
    malloc_trim.restype = ctypes.c_int
    return malloc_trim


POLICY = MallocPolicy()


def set_enabled(enabled: bool) -> None:
    """Turn the policy on or off for this process (before the first runner starts)."""
    POLICY.enabled = enabled
