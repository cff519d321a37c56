"""One loop timer for the connections of every runner on an event loop.

Each :class:`EndpointRunner` keeps its connections' deadlines (``runner._timers``: id ->
(deadline, conn, runner)); this heap holds ``(deadline, serial, timers, id)`` entries for
all the runners of one loop, with entries whose deadline moved skipped when they come up,
and one asyncio timer armed for the earliest. (An entry holds the runner's ``_timers``,
not the runner: a stopped runner's are empty, so its entries left in the heap keep
nothing of it alive.) A client makes a runner per connection
(``aio.connect``): with a loop timer per runner, 256 connections meant 256 loop timers,
each cancelled and armed again whenever its one connection's deadline came earlier, and
firing for nothing whenever it had moved later (issue 11: ~1.6–2.1 k empty turns and
~4.5 k re-arms per GiB at 256, each a ``TimerHandle`` in the loop's heap of
Python-compared handles). Shared, the timer moves only when the loop's earliest
deadline does.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from ..transport.ensemble import SlowStartEnsembles
from .readturns import ReadTurns

if TYPE_CHECKING:
    import asyncio

    from ..transport.connection import Connection
    from .runner import EndpointRunner

_INF = float("inf")

#: a runner's deadlines: id(conn) -> (deadline, conn, runner)
Timers = dict[int, "tuple[float, Connection, EndpointRunner]"]


class LoopWheel:
    """The loop timer and deadline heap shared by the runners of one event loop (and
    their connections' slow-start ensembles: ``transport/ensemble.py``; and the loop's
    read budget per turn: ``readturns.py``)."""

    __slots__ = ("loop", "heap", "serial", "handle", "at", "runners", "limit", "ensembles",
                 "reads")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: (deadline, serial, runner._timers, id(conn)); the serial is unique, so the
        #: third item is never compared
        self.heap: list[tuple[float, int, Timers, int]] = []
        self.serial = 0
        self.handle: asyncio.TimerHandle | None = None
        self.at = _INF  # when the loop timer fires (inf: not armed)
        self.runners: dict[int, EndpointRunner] = {}  # the runners using it (by id)
        self.limit = 64  # the heap is compacted when it grows past this
        #: the slow-start ensembles of the loop's connections, by peer host (a client
        #: makes a runner per connection: per runner, it would see one connection each)
        self.ensembles = SlowStartEnsembles()
        self.reads = ReadTurns(loop)

    def push(self, deadline: float, timers: Timers, key: int) -> None:
        """The connection ``key`` of the runner whose ``_timers`` are ``timers`` is due at
        ``deadline`` (its entry there says so already)."""
        self.serial += 1
        heap = self.heap
        heapq.heappush(heap, (deadline, self.serial, timers, key))
        if len(heap) > self.limit:  # drop skipped entries: O(1) amortised
            self.heap = heap = [
                (d, self.serial + i, t, k)
                for i, (t, k, d) in enumerate(
                    (r._timers, k, v[0]) for r in self.runners.values()
                    for k, v in r._timers.items()
                )
            ]
            self.serial += len(heap)
            heapq.heapify(heap)
            self.limit = 2 * len(heap) + 64
        if deadline < self.at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.at = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self.handle = None
        self.at = _INF
        now = self.loop.time()
        heap = self.heap
        due: list[tuple[float, Connection, EndpointRunner]] = []
        while heap and heap[0][0] <= now:
            deadline, _, timers, key = heapq.heappop(heap)
            entry = timers.get(key)
            if entry is not None and entry[0] == deadline:
                del timers[key]
                due.append(entry)
        for _, conn, runner in due:  # in deadline order, each once
            try:
                runner.on_timer(conn, now)
            except Exception as exc:  # (one runner's failure stops no other's timers)
                self.loop.call_exception_handler(
                    {"message": "quicflow: a connection's timer failed", "exception": exc}
                )
        heap = self.heap  # (pushing may have compacted it)
        while heap:  # the next live deadline arms the loop timer
            deadline, _, timers, key = heap[0]
            entry = timers.get(key)
            if entry is not None and entry[0] == deadline:
                if deadline < self.at:
                    self._arm(deadline)
                break
            heapq.heappop(heap)

    def leave(self, runner: EndpointRunner) -> None:
        """``runner`` stopped (its ``_timers`` are empty): its entries are skipped from now
        on; the last runner to leave stops the loop timer."""
        self.runners.pop(id(runner), None)
        if not self.runners:
            if self.handle is not None:
                self.handle.cancel()
                self.handle = None
            self.at = _INF
            self.heap.clear()
            if _WHEELS.get(id(self.loop)) is self:
                del _WHEELS[id(self.loop)]


_WHEELS: dict[int, LoopWheel] = {}  # id(loop) -> its wheel, while a runner uses it


def join(runner: EndpointRunner) -> LoopWheel:
    """The wheel of ``runner.loop`` (made at its first runner), with ``runner`` in it."""
    loop = runner.loop
    wheel = _WHEELS.get(id(loop))
    if wheel is None or wheel.loop is not loop:  # (a loop gone and its id reused)
        wheel = _WHEELS[id(loop)] = LoopWheel(loop)
    wheel.runners[id(runner)] = runner
    return wheel
