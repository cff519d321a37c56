"""The worker supervisor on its own: restarts with back-off, counters kept across
restarts, and workers that do not outlive their supervisor."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from quicflow.datapath.workers import WorkerContext, WorkerSupervisor, merge_counters

pytestmark = pytest.mark.timeout(60)


def test_merge_counters_adds_totals_and_keeps_peaks():
    a = {"connections": 2, "connected_sockets": 5, "endpoint": {"lookups": 3}, "backend": "gso"}
    b = {"connections": 1, "connected_sockets": 4, "endpoint": {"lookups": 4}, "backend": "basic"}
    assert merge_counters(a, b) == {
        "connections": 3, "connected_sockets": 5, "endpoint": {"lookups": 7}, "backend": "basic"
    }


def _crashing_worker(ctx: WorkerContext) -> int:
    ctx.report({"connections": 1})
    return 3


async def _crash_loop() -> WorkerSupervisor:
    sup = WorkerSupervisor(1, _crashing_worker, restart_delay=0.05)
    sup.start()
    await asyncio.sleep(1.0)
    await sup.stop()
    return sup


def test_a_worker_that_crashes_at_start_is_restarted_ever_later():
    sup = asyncio.run(_crash_loop())
    slot = sup.slots[0]
    # 0.05, 0.1, 0.2, 0.4 s... within one second: a handful of restarts, not twenty.
    assert 2 <= slot.restarts <= 6, slot.restarts
    assert set(slot.exit_codes) == {3}
    assert slot.counters()["connections"] == len(slot.exit_codes)  # every life's report


ORPHAN_SCRIPT = """
import asyncio, os, sys
from quicflow.datapath.workers import WorkerSupervisor

def worker(ctx):
    ctx.ready()
    import time
    while True:
        time.sleep(1)

async def main():
    sup = WorkerSupervisor(2, worker)
    sup.start()
    await sup.wait_ready()
    print(" ".join(map(str, sup.pids)), flush=True)
    os._exit(0)  # the supervisor dies without stopping its workers

asyncio.run(main())
"""


def test_workers_do_not_outlive_their_supervisor():
    out = subprocess.run(
        [sys.executable, "-c", ORPHAN_SCRIPT], capture_output=True, text=True, timeout=30
    )
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not alive, f"workers {alive} outlived their supervisor"
