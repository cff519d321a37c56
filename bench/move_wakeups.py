"""Stress runs of the lost wake-up check across moves (tests/support/wakeups.py,
tests/support/move_load.py).

Run: ``PYTHONPATH=src .venv/bin/python bench/move_wakeups.py [--minutes 5]
[--moves 0,6] [--loss 0.03,0.05]``

Each run moves every connection between two in-process servers ``moves`` times while
downloads and uploads go on (through lossy relays), with the check installed on the
loop (every runner, every restored connection checked right after its restore). One
JSON line per run: moves, seconds to completion, what was in flight at the captures,
check passes and probes, violations (printed in full). Runs alternate over the
``--moves`` values (0: the same transfer without moves, for the time to completion).
Exit status 1 when a run failed or found a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.support.move_load import MoveLoad, run_moves  # noqa: E402
from tests.support.wakeups import WakeupCheck, watch_restores  # noqa: E402


async def one(load: MoveLoad, directory: Path, quiet: float,
              probe: bool) -> tuple[Any, WakeupCheck]:
    check = WakeupCheck(asyncio.get_running_loop(), quiet=quiet, interval=0.0,
                        probe=probe).install()
    return await run_moves(load, directory), check


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--moves", default="0,6")
    ap.add_argument("--loss", default="0.03,0.05")
    ap.add_argument("--connections", type=int, default=3)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--download", type=int, default=4 << 20)
    ap.add_argument("--upload", type=int, default=2 << 20)
    ap.add_argument("--quiet", type=float, default=0.05)
    ap.add_argument("--probe", default="1,0",
                    help="probe turns on (1) or off (0), alternating: a probe that sends "
                    "ends the stall it reports, so times to completion come from 0")
    args = ap.parse_args()
    watch_restores(setattr)
    end = time.monotonic() + args.minutes * 60
    failed = 0
    run = 0
    moves = [int(m) for m in args.moves.split(",")]
    losses = [float(x) for x in args.loss.split(",")]
    probes = [p == "1" for p in args.probe.split(",")]
    combos = [(m, x, p) for p in probes for x in losses for m in moves]
    with tempfile.TemporaryDirectory() as tmp:
        while time.monotonic() < end:
            seed = run // len(combos) + 1
            n_moves, loss, probe = combos[run % len(combos)]
            load = MoveLoad(connections=args.connections, streams=args.streams,
                            download=args.download, upload=args.upload, moves=n_moves,
                            loss=loss, seed=seed)
            run += 1
            out, check = asyncio.run(one(load, Path(tmp), args.quiet, probe))
            line = {"utc": time.strftime("%H:%M:%S", time.gmtime()),
                    "load": os.getloadavg()[0], "moves": load.moves, "loss": load.loss,
                    "probe": probe,
                    "seed": seed, **{k: v for k, v in asdict(out).items() if k != "moves"},
                    "moves_done": out.moves, "checks": check.checks, "probes": check.probes,
                    "restores_checked": check.restores,
                    "connections_seen": len(check.connections_seen),
                    "violations": len(check.violations)}
            print(json.dumps(line), flush=True)
            if not out.ok or check.violations:
                failed += 1
                print(check.report(), flush=True)
    print(json.dumps({"runs": run, "failed": failed}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
