"""The loop's shared timer (aio/loopwheel.py) against the plain rule: every connection
of every runner is served once its latest deadline has come, never before, in deadline
order, and the loop timer is never armed later than the earliest deadline."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.aio.loopwheel import LoopWheel


class Handle:
    def __init__(self, when: float) -> None:
        self.when = when
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self.now = 0.0
        self.handles: list[Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Handle:
        handle = Handle(when)
        self.handles.append(handle)
        return handle

    def armed(self) -> float:
        live = [h.when for h in self.handles if not h.cancelled]
        assert len(live) <= 1  # one loop timer
        return live[0] if live else float("inf")


class Runner:
    """What the wheel uses of an EndpointRunner: ``_timers`` and ``on_timer``."""

    def __init__(self, served: list[tuple[float, object]]) -> None:
        self._timers: dict[int, tuple[float, object, Runner]] = {}
        self.served = served

    def on_timer(self, conn: object, now: float) -> None:
        self.served.append((now, conn))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 8), st.none() | st.integers(0, 30)),
        st.tuples(st.just("advance"), st.integers(0, 4), st.none()),
    ),
    max_size=100,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_served_on_time_in_order(sequence: list[tuple[str, int, int | None]]) -> None:
    loop = Loop()
    wheel = LoopWheel(loop)  # type: ignore[arg-type]
    served: list[tuple[float, object]] = []
    runners = [Runner(served) for _ in range(3)]
    for r in runners:
        wheel.runners[id(r)] = r  # type: ignore[assignment]
    conns = [object() for _ in range(9)]
    owner = {id(c): runners[i % 3] for i, c in enumerate(conns)}
    live: dict[int, float] = {}  # id(conn) -> its deadline
    for op, a, b in sequence:
        if op == "set":  # what EndpointRunner._arm_timer does
            conn = conns[a]
            key, runner = id(conn), owner[id(conn)]
            if b is None:
                runner._timers.pop(key, None)
                live.pop(key, None)
            elif live.get(key) != b:
                live[key] = float(b)
                runner._timers[key] = (float(b), conn, runner)
                wheel.push(float(b), runner._timers, key)  # type: ignore[arg-type]
        else:
            loop.now += a
            served.clear()
            if loop.armed() <= loop.now:
                for h in loop.handles:
                    h.cancelled = True  # it fired
                wheel._fire()
            due = {k: d for k, d in live.items() if d <= loop.now}
            got = [id(c) for _, c in served]
            assert sorted(got) == sorted(due)  # every due connection once, no other
            deadlines = [due[k] for k in got]
            # in deadline order; connections due at the same time in any order (one set,
            # cleared and set again to the same deadline can be served by its first entry)
            assert deadlines == sorted(deadlines)
            for k in due:
                del live[k]
        if live:  # nothing is served late: the loop timer is at or before the earliest
            assert loop.armed() <= min(live.values())
