"""``apps.tasks.wait_all``: how the command-line clients wait for their connections."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from quicflow.apps.tasks import wait_all


def _run(*delays: float | None) -> tuple[list[str], list[int], list[dict[str, Any]]]:
    """Tasks that fail after ``delays`` (None: one that runs until cancelled); returns
    what ``wait_all`` raised, the tasks cancelled and what the loop reported."""
    raised: list[str] = []
    cancelled: list[int] = []
    reported: list[dict[str, Any]] = []

    async def task(n: int, delay: float | None) -> None:
        if delay is None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(n)
                raise
        else:
            await asyncio.sleep(delay)
        raise ValueError(f"connection {n}")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        tasks = [asyncio.create_task(task(n, d)) for n, d in enumerate(delays)]
        try:
            await wait_all(tasks)
        except ValueError as exc:
            raised.append(str(exc))  # (not the exception: its traceback holds the tasks)
        assert all(t.done() for t in tasks)
        del tasks
        gc.collect()  # (a task whose exception was never read is reported when freed)

    asyncio.run(scenario())
    return raised, cancelled, reported


def test_failures_at_once_one_raised_none_reported() -> None:
    """Connections that fail together (all refused): the first in task order is raised
    and no other failure is left for the loop to report as never retrieved."""
    raised, _, reported = _run(0.01, 0.01, 0.01)
    assert raised == ["connection 0"]
    assert reported == [], reported


def test_a_failure_cancels_the_others() -> None:
    raised, cancelled, reported = _run(None, 0.01, None)
    assert raised == ["connection 1"]
    assert cancelled == [0, 2]
    assert reported == []


def test_all_done_without_failure() -> None:
    async def ok(n: int) -> int:
        await asyncio.sleep(0.001 * n)
        return n

    async def scenario() -> list[int]:
        tasks = [asyncio.create_task(ok(n)) for n in range(3)]
        await wait_all(tasks)
        return [t.result() for t in tasks]

    assert asyncio.run(scenario()) == [0, 1, 2]
