"""Waiting for a group of tasks, as the command-line clients run their connections."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


async def wait_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Wait for every task; on the first failure cancel the others and raise it (the
    first in task order of those that failed). The other failures are read too: asyncio
    prints a "Task exception was never retrieved" traceback for each one left unread
    when its task is freed, a traceback per failed connection under the command's one
    error line. Cancelled itself, it cancels the tasks and waits for them first."""
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    first: BaseException | None = None
    for t in tasks:
        if t.done() and not t.cancelled():
            exc = t.exception()
            if exc is not None and first is None:
                first = exc
    if first is not None:
        raise first
