"""CIDs of connections this endpoint handed off (captured and moved elsewhere).

Until the client's packets stop reaching us (the route of the service address switches,
or the client moves to CIDs that route elsewhere), some still arrive for connections we
no longer hold. An unknown CID normally gets a stateless reset, but for a connection we
issued the CID of, the client would accept the reset (the token is ours) and the moved
connection would die on the new host. So the CIDs of a handed-off connection are kept
for a while and their packets dropped (and counted) instead; QUIC's loss recovery sends
what they carried again, to the new host.

A connection moved per connection behind a CID-routing balancer (its client switches to
CIDs that route to the new host, the address stays) gets a forwarding target for a
bounded time (:meth:`MovedCids.forward`): what still reaches us with its old CIDs
meanwhile (sent before the client switched, or reordered) goes to the new host instead
of being dropped.

Bounded: only our own handoffs add entries (at most the connection's CIDs each), and an
entry lives ``lifetime`` seconds (the connection's idle timeout, at most
:data:`MAX_LIFETIME`); entries are added in time order and expire from the front.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

#: Where a moved connection's datagrams go: ``target(datagram, client_address)``, False
#: when it could not take it (the caller counts it as dropped).
ForwardTarget = Callable[[bytes, tuple[Any, ...]], bool]

#: Longest time the CIDs of a handed-off connection are remembered (seconds).
MAX_LIFETIME = 600.0


class MovedCids:
    """CID -> expiry time, oldest first."""

    __slots__ = ("_expiry", "_forward")

    def __init__(self) -> None:
        self._expiry: dict[bytes, float] = {}
        # CID -> (target, until): a subset of _expiry's keys, removed with them
        self._forward: dict[bytes, tuple[ForwardTarget, float]] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def record(self, cids: Iterable[bytes], now: float, lifetime: float) -> None:
        """Remember ``cids`` (of one handed-off connection) for ``lifetime`` seconds."""
        if not math.isfinite(lifetime) or lifetime <= 0 or lifetime > MAX_LIFETIME:
            lifetime = MAX_LIFETIME
        self._expire(now)
        until = now + lifetime
        for cid in cids:
            self._expiry.pop(cid, None)  # keep the order of expiry times
            self._expiry[bytes(cid)] = until

    def forward(self, cids: Iterable[bytes], target: ForwardTarget, until: float) -> None:
        """Forward datagrams for ``cids`` (recorded already) to ``target`` until ``until``
        (never past their record's expiry)."""
        for cid in cids:
            if cid in self._expiry:
                self._forward[bytes(cid)] = (target, min(until, self._expiry[cid]))

    def target(self, cid: bytes, now: float) -> ForwardTarget | None:
        """Where to forward a datagram for ``cid`` now (None: drop it)."""
        entry = self._forward.get(cid)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._forward[cid]
            return None
        return entry[0]

    def holds(self, cid: bytes, now: float) -> bool:
        """Whether ``cid`` belonged to a connection handed off less than its lifetime
        ago (expired entries are dropped on the way)."""
        until = self._expiry.get(cid)
        if until is None:
            return False
        if now >= until:
            self._expire(now)
            return False
        return True

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            cid = next(iter(expiry))
            if expiry[cid] > now:
                break
            del expiry[cid]
            self._forward.pop(cid, None)


__all__ = ["MAX_LIFETIME", "ForwardTarget", "MovedCids"]
