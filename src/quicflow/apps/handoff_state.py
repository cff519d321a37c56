"""What the stream-serving apps (perf, hq) share for a handoff: a progress table per
connection in ``connection.app_state``, the test for a handler stopped by a handoff, and
the runner of a restored stream's handler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from ..aio.connection import QuicConnection


def progress_table(connection: QuicConnection, app: str) -> dict[int, list[Any]]:
    """The app's per-stream progress entries of ``connection`` (captured with it)."""
    table: dict[int, list[Any]] = connection.app_state.setdefault(app, {})
    return table


def stopping() -> bool:
    """True inside a task being cancelled (a handoff stops the stream handlers): its
    progress entry must stay for ``capture``."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def quiet(coro: Awaitable[None]) -> None:
    """Run a restored stream's handler; a connection that ends meanwhile is no error."""
    try:
        await coro
    except ConnectionError:
        pass


def resume(connection: QuicConnection, coro: Awaitable[None]) -> None:
    """Run a restored stream's handler as one of the connection's tasks."""
    connection.track_task(asyncio.get_running_loop().create_task(quiet(coro)))
