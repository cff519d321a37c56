"""Bounds on the bytes applications wrote and the peer has not yet acknowledged.

Each connection counts them (``Connection.send_buffered``); its face mirrors that
count into the endpoint's :class:`SendBudget`, so both the per-connection and the
per-endpoint bound are checked in O(1). ``drain()`` waits at a :class:`SendGate` while a
bound is exceeded. A gate wakes one waiter at a time, and a waiter that finds room passes
the turn on (``pass_on``) after it returned, so a freed megabyte lets one writer write its
next chunk rather than every blocked writer at once: the overshoot past a bound stays
about one write, not one write per stream.

Fair shares: once the endpoint's budget is half used, a connection may write only while
it holds less than an equal share of that half (``SendBudget.over_fair_share``: limit /
2 / connections of the endpoint, at least ``FAIR_SHARE_FLOOR``). Without it, the
connections that wrote first keep most of the budget and the rest wait at the endpoint's
gate with nothing to send, so the sender cannot serve them at all (256 connections of
4 MiB each at 512 MiB: the last ones began sending seconds after the first).
"""

from __future__ import annotations

import asyncio
from collections import deque

#: the least a connection may hold under pressure (a share never shrinks below this)
FAIR_SHARE_FLOOR = 64 * 1024


class SendGate:
    """Writers waiting for buffer space, first come first served."""

    __slots__ = ("_loop", "_waiters", "_pass_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # made by the first writer that waits: an idle connection's gate holds no queue
        self._waiters: deque[asyncio.Future[None]] | None = None
        self._pass_scheduled = False

    def add(self, waiter: asyncio.Future[None]) -> None:
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(waiter)

    def wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def pass_on(self) -> None:
        """A writer found room: let the next one look once this one has written."""
        if self._waiters and not self._pass_scheduled:
            self._pass_scheduled = True
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        self._pass_scheduled = False
        self.wake_one()


class SendBudget:
    """Written-but-unacknowledged bytes over all connections of one endpoint."""

    __slots__ = ("limit", "used", "peak", "gate", "holders", "share_waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0  # the most ever held at once
        self.gate = SendGate(loop)
        self.holders = 0  # connections holding written, unacknowledged bytes
        #: gates of connections waiting for their fair share: woken when the pressure
        #: ends (each also wakes as its own bytes are acknowledged)
        self.share_waiters: dict[SendGate, None] = {}

    def account(self, before: int, after: int) -> None:
        """A connection's written, unacknowledged bytes went from ``before`` to ``after``."""
        if not before:
            self.holders += 1
        elif not after:
            self.holders -= 1
        self.add(after - before)

    def over_fair_share(self, held: int, connections: int) -> bool:
        """True when the budget is under pressure (over half used) and a connection
        holding ``held`` bytes holds its share of that half or more (one of
        ``connections``: those not writing yet count, so they find room when they do)."""
        half = self.limit >> 1
        return self.used > half and held >= max(FAIR_SHARE_FLOOR, half // (connections or 1))

    def add(self, delta: int) -> None:
        used = self.used = self.used + delta
        if delta > 0:
            if used > self.peak:
                self.peak = used
        else:
            if used <= self.limit:
                self.gate.wake_one()
            if self.share_waiters and used <= self.limit >> 1:
                waiting, self.share_waiters = self.share_waiters, {}
                for gate in waiting:
                    gate.wake_one()

    def exceeded(self) -> bool:
        return self.used > self.limit
