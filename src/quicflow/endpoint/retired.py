"""CIDs of ours that a client retired a moment ago (RETIRE_CONNECTION_ID, RFC 9000 §19.16).

The client retires a CID with a packet that may overtake packets it sent earlier with
that CID: a client moving to a new address retires the old path's CID in its first
packets from the new one, and the server reads the two paths from different sockets, in
any order. Once the CID no longer routes, such a late packet would be answered with a
stateless reset carrying the retired CID's token, and a client that still matches it
(ngtcp2 does, for a while) ends the connection. So the server remembers what it removed
for a short while and drops those packets (counted) instead; the client's loss recovery
sends what they carried again.

Bounded: an entry lives ``lifetime`` seconds (3 PTOs of its connection, at least
:data:`MIN_LIFETIME`, at most :data:`MAX_LIFETIME`) and at most :data:`MAX_RETIRED` are
held (the oldest go first): a client churning CIDs can only make us forget sooner.
"""

from __future__ import annotations

#: Shortest and longest time a retired CID is remembered (seconds).
MIN_LIFETIME = 1.0
MAX_LIFETIME = 10.0
#: Most retired CIDs remembered at once (the oldest are forgotten first).
MAX_RETIRED = 65536


class RetiredCids:
    """CID -> expiry time, in the order recorded."""

    __slots__ = ("_expiry",)

    def __init__(self) -> None:
        self._expiry: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def record(self, cid: bytes, now: float, pto: float) -> None:
        """Remember ``cid``, retired at ``now`` by a connection whose PTO is ``pto``."""
        expiry = self._expiry
        self._expire(now)
        if len(expiry) >= MAX_RETIRED:
            del expiry[next(iter(expiry))]
        expiry.pop(cid, None)  # (re-recorded: it goes to the back)
        expiry[bytes(cid)] = now + min(max(3 * pto, MIN_LIFETIME), MAX_LIFETIME)

    def holds(self, cid: bytes, now: float) -> bool:
        """Whether ``cid`` was retired less than its lifetime ago."""
        until = self._expiry.get(cid)
        if until is None:
            return False
        if now >= until:
            del self._expiry[cid]
            return False
        return True

    def _expire(self, now: float) -> None:
        """Drop expired entries from the front (lifetimes differ: one that expired behind
        a longer one waits for it, or for ``holds`` to find it)."""
        expiry = self._expiry
        while expiry:
            cid = next(iter(expiry))
            if expiry[cid] > now:
                break
            del expiry[cid]


__all__ = ["MAX_LIFETIME", "MAX_RETIRED", "MIN_LIFETIME", "RetiredCids"]
