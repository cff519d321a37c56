"""A strike register that the processes forked from one parent share: the worker
processes of one server (``serve(..., workers=N)``) accept a ticket's 0-RTT at most once
between them (RFC 8446 §8), where each worker's own :class:`~.tickets.StrikeRegister`
would accept a first flight replayed to every other worker once more.

The ids live in a shared memory file (``memfd_create``) mapped by every process forked
after the register was made, as an open-addressing table: a slot is the id (up to 16
bytes; a longer one is stored as its BLAKE2b-128 digest), its length and its expiry
(wall-clock seconds). A digest is stored as a 16-byte id is, so the digest that
``export`` hands a successor for a long id matches that id again after ``merge`` (a
16-byte id equal to another id's digest: a 2^-128 chance). An id is looked for in the
:data:`PROBES` slots from its hash on; an expired slot is taken again by the next id
that needs it, and an id that finds no free slot among its :data:`PROBES` (a table full
of ids not yet expired) is refused, counted as ``refused_full``: the handshake goes on
in 1-RTT, as with a full ``StrikeRegister``. The table has the power of two of slots at
least ``2 * max_entries``, 32 bytes each (100,000 entries: 8 MiB, shared by all the
workers).

An admission is one look and one write under a POSIX record lock on the file
(``lockf``): the kernel releases it when a process dies, so a worker killed in the
middle of an admission blocks no other. The lock is per process: one thread of a
process at a time (each worker runs one event loop).

The counters (``refused_replay``, ``refused_full``) are the process's own; the ids and
the time before which no 0-RTT is accepted at all (``refuse_until``) are shared. Made
where ``memfd_create`` exists (Linux); :func:`shared_strike_register` returns None
elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time

#: slots looked at from an id's hash on
PROBES = 32
#: expiry (float, 0: never used), id length (16 for a digest), id (zero-padded)
_SLOT = struct.Struct("<dB7x16s")
#: the header: no 0-RTT before this wall-clock time
_HEADER = struct.Struct("<d24x")
_KEY_MAX = 16


def _stored(key: bytes) -> tuple[int, bytes]:
    """(the length field, the 16 bytes stored) of ``key``."""
    if len(key) <= _KEY_MAX:
        return len(key), key.ljust(_KEY_MAX, b"\0")
    return _KEY_MAX, hashlib.blake2b(key, digest_size=_KEY_MAX).digest()


def _home(stored: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(stored, digest_size=8).digest(), "little")


class SharedStrikeRegister:
    """Ids of tickets whose 0-RTT one group of processes accepted, each kept for
    ``2 * window`` seconds (see the module's notes); the interface of ``StrikeRegister``."""

    __slots__ = ("window", "max_entries", "refused_full", "refused_replay", "_fd", "_map",
                 "_mask")

    def __init__(self, window: float = 10.0, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.window = window
        self.max_entries = max_entries
        self.refused_full = 0
        self.refused_replay = 0
        slots = 1 << max(PROBES, 2 * max_entries - 1).bit_length()
        self._mask = slots - 1
        size = _HEADER.size + slots * _SLOT.size
        self._fd = os.memfd_create("quicflow-strike-register", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def slots(self) -> int:
        return self._mask + 1

    @property
    def closed_until(self) -> float:
        return float(_HEADER.unpack_from(self._map, 0)[0])

    def admit(self, key: bytes, wall_time: float) -> bool:
        """True the first time ``key`` comes to any process sharing the register (it is
        then remembered), False for a replay, when no slot is free or while closed."""
        length, stored = _stored(key)
        with _Locked(self._fd):
            if wall_time < self.closed_until:
                self.refused_replay += 1
                return False
            found, free = self._find(length, stored, wall_time)
            if found >= 0:
                self.refused_replay += 1
                return False
            if free < 0:
                self.refused_full += 1
                return False
            _SLOT.pack_into(self._map, _offset(free), wall_time + 2 * self.window, length,
                            stored)
            return True

    def _find(self, length: int, stored: bytes, wall_time: float) -> tuple[int, int]:
        """(the slot holding the id unexpired or -1, the first slot free for it or -1)."""
        view, mask, unpack = self._map, self._mask, _SLOT.unpack_from
        home = _home(stored)
        free = -1
        for i in range(PROBES):
            slot = (home + i) & mask
            expiry, slen, skey = unpack(view, _offset(slot))
            if expiry == 0.0:  # never used: the id is not further on
                return -1, free if free >= 0 else slot
            if expiry <= wall_time:
                if free < 0:
                    free = slot
            elif slen == length and skey == stored:
                return slot, free
        return -1, free

    def export(self) -> list[tuple[bytes, float]]:
        """The remembered ids with their expiry (wall-clock seconds), oldest first (an id
        longer than 16 bytes as its digest), for a successor's ``merge``."""
        now = time.time()
        with _Locked(self._fd):
            entries = [
                (stored[:length], expiry)
                for expiry, length, stored in _SLOT.iter_unpack(
                    memoryview(self._map)[_HEADER.size:])
                if expiry > now
            ]
        entries.sort(key=lambda e: e[1])
        return entries

    def merge(self, entries: list[tuple[bytes, float]], wall_time: float) -> int:
        """Remember ids another process admitted (a takeover's predecessor), so their
        0-RTT is refused here too until they expire. Returns how many were added."""
        added = 0
        limit = wall_time + 2 * self.window
        with _Locked(self._fd):
            for key, expiry in sorted(entries, key=lambda e: e[1]):
                if expiry <= wall_time:
                    continue
                length, stored = _stored(key)
                found, free = self._find(length, stored, wall_time)
                if found >= 0 or free < 0:
                    continue
                _SLOT.pack_into(self._map, _offset(free), min(expiry, limit), length, stored)
                added += 1
        return added

    def refuse_until(self, wall_time: float) -> None:
        """Accept no 0-RTT in any of the processes before ``wall_time``."""
        with _Locked(self._fd):
            if wall_time > self.closed_until:
                _HEADER.pack_into(self._map, 0, wall_time)

    def __len__(self) -> int:
        """The ids remembered now (a walk over the whole table)."""
        now = time.time()
        return sum(1 for (expiry, _, _) in _SLOT.iter_unpack(
            memoryview(self._map)[_HEADER.size:]) if expiry > now)

    def close(self) -> None:
        """Unmap the table in this process (the others keep theirs)."""
        if not self._map.closed:
            self._map.close()
            os.close(self._fd)


def _offset(slot: int) -> int:
    return _HEADER.size + slot * _SLOT.size


class _Locked:
    """The register's lock held (``lockf`` on its file; released by the kernel when
    the process dies)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


def shared_strike_register(window: float = 10.0, max_entries: int = 100_000
                           ) -> SharedStrikeRegister | None:
    """A :class:`SharedStrikeRegister`, or None where the system has no ``memfd_create``
    (the caller then leaves each process its own register)."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        return SharedStrikeRegister(window, max_entries)
    except OSError:
        return None
