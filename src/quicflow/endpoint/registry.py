"""The endpoint's connection registry: who owns which connection ID.

Two maps, never mixed: client-chosen initial DCIDs (what a client's first Initials carry,
before it learns one of our CIDs) and our own CIDs (issued by the endpoint's generator).
A key already held by another connection is refused, never overwritten (a client can
pick any initial DCID, and must not be able to take over or break another's entry).

Connections are held by identity: the registry's own tables are dicts keyed by the
connection object (entities are ``eq=False``, so they hash and compare by identity), and
each connection's entry keeps the keys it owns, so ``forget(conn)`` removes exactly those
keys in O(its own keys), whatever the number of connections held.

``ops`` counts every dict operation the registry performs (lookups, inserts, deletes),
so a test can show that a teardown costs the same with 10 or 10,000 connections held.
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView
from dataclasses import dataclass
from typing import Generic, TypeVar

C = TypeVar("C")

INITIAL_MAP = 0
OURS_MAP = 1


@dataclass(slots=True)
class RegistryCounters:
    ops: int = 0  # dict operations (get, set, delete, membership) of every method
    collisions_refused: int = 0  # a key held by another connection: not overwritten
    forgotten: int = 0


class ConnectionRegistry(Generic[C]):
    """Connections of one endpoint and the connection IDs that lead to them."""

    __slots__ = ("initial", "ours", "_owned", "counters")

    def __init__(self) -> None:
        self.initial: dict[bytes, C] = {}  # client-chosen initial DCID -> connection
        self.ours: dict[bytes, C] = {}  # a CID we issued -> connection
        # connection (by identity) -> the (map, key) pairs it owns
        self._owned: dict[C, set[tuple[int, bytes]]] = {}
        self.counters = RegistryCounters()

    # ------------------------------------------------------------------ connections

    def add(self, conn: C) -> None:
        """Hold ``conn`` (no keys yet); adding it again changes nothing."""
        self.counters.ops += 1
        self._owned.setdefault(conn, set())

    def __contains__(self, conn: object) -> bool:
        self.counters.ops += 1
        return conn in self._owned

    def __len__(self) -> int:
        return len(self._owned)

    def __iter__(self) -> Iterator[C]:
        return iter(self._owned)

    def connections(self) -> KeysView[C]:
        """Every connection held (a live view, in order of registration)."""
        return self._owned.keys()

    def keys_of(self, conn: C) -> set[tuple[int, bytes]]:
        """The (map, key) pairs ``conn`` owns (a copy)."""
        return set(self._owned.get(conn, ()))

    # ------------------------------------------------------------------ keys

    def _claim(self, which: int, key: bytes, conn: C) -> bool:
        # (the dict operations are counted once per call, summed here: the same counts)
        table = self.ours if which == OURS_MAP else self.initial
        holder = table.get(key)
        if holder is not None:
            counters = self.counters
            counters.ops += 1
            if holder is conn:
                return True
            counters.collisions_refused += 1
            return False
        owned = self._owned.get(conn)
        if owned is None:
            owned = self._owned[conn] = set()
            ops = 5
        else:
            ops = 4
        table[key] = conn
        owned.add((which, key))
        self.counters.ops += ops
        return True

    def add_initial(self, dcid: bytes, conn: C) -> bool:
        """Route a client-chosen initial DCID to ``conn``; False if another holds it."""
        return self._claim(INITIAL_MAP, bytes(dcid), conn)

    def add_cid(self, cid: bytes, conn: C) -> bool:
        """Route one of our CIDs to ``conn``; False if another connection holds it."""
        return self._claim(OURS_MAP, bytes(cid), conn)

    def remove_cid(self, cid: bytes, conn: C) -> None:
        """Stop routing ``cid`` to ``conn`` (nothing happens if another connection holds it)."""
        counters = self.counters
        counters.ops += 1
        if self.ours.get(cid) is not conn:
            return
        del self.ours[cid]
        counters.ops += 1
        owned = self._owned.get(conn)
        counters.ops += 1
        if owned is not None:
            owned.discard((OURS_MAP, cid))
            counters.ops += 1

    def by_cid(self, cid: bytes) -> C | None:
        self.counters.ops += 1
        return self.ours.get(cid)

    def by_initial(self, dcid: bytes) -> C | None:
        self.counters.ops += 1
        return self.initial.get(dcid)

    def is_held(self, cid: bytes) -> bool:
        """Whether one of our CIDs is taken (by any connection)."""
        self.counters.ops += 1
        return cid in self.ours

    # ------------------------------------------------------------------ teardown

    def forget(self, conn: C) -> bool:
        """Drop ``conn`` and exactly the keys it owns (O(its keys), not O(connections));
        False if it was not here."""
        counters = self.counters
        owned = self._owned.pop(conn, None)
        if owned is None:
            counters.ops += 1
            return False
        counters.forgotten += 1
        ops = 1 + len(owned)  # the pop, then a get per key (and a delete per key held)
        ours, initial = self.ours, self.initial
        for which, key in owned:
            table = ours if which == OURS_MAP else initial
            if table.get(key) is conn:
                del table[key]
                ops += 1
        counters.ops += ops
        return True
