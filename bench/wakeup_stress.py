"""Stress runs of the lost wake-up check (tests/support/wakeups.py).

Run: ``PYTHONPATH=src .venv/bin/python bench/wakeup_stress.py [--minutes 5]
[--scenario NAME,...] [--quiet 0.25]``

Each run is one load of ``tests/support/wakeup_load.py`` (quicflow to quicflow on
loopback: many connections and streams, uploads and downloads, small windows and stream
limits, optional loss through the UDP relay) on a fresh event loop with the check
installed. One line per run (scenario, seconds, streams done, check passes, probe
turns, violations); violations are printed in full. Runs go round the scenarios until
the time is up. Exit status 1 when a run failed or found a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.support.wakeup_load import Load, run_load  # noqa: E402
from tests.support.wakeups import WakeupCheck  # noqa: E402

KB = 1024
#: keep each connection's details at every check, printed for a failed run
RECORD = os.environ.get("WAKEUP_RECORD") == "1"
SCENARIOS = {
    # small windows: every read owes a credit update; more requests than the stream limit
    "windows": Load(connections=4, streams=24, parallel=24, size=96 * KB, upload=24 * KB),
    # uploads on unidirectional streams too: the server's reads free the stream slots
    "uni": Load(connections=3, streams=20, parallel=20, size=32 * KB, upload=48 * KB,
                uni=True),
    # many connections on one client socket
    "shared": Load(connections=16, streams=6, parallel=6, size=64 * KB, upload=8 * KB,
                   shared_client=True),
    # loss and reordering each way through the relay (one client socket)
    "loss": Load(connections=4, streams=12, parallel=12, size=128 * KB, upload=16 * KB,
                 loss=0.05, shared_client=True),
    "loss20": Load(connections=2, streams=8, parallel=8, size=64 * KB, upload=8 * KB,
                   loss=0.2, shared_client=True, timeout=120),
    # a connection window that never grows, stream windows that never matter, loss:
    # streams wait for MAX_DATA while others have lost bytes to send again
    "connblocked": Load(connections=2, streams=8, parallel=8, size=64 * KB, upload=4 * KB,
                        loss=0.05, max_data=32 * KB, max_data_window=32 * KB,
                        max_stream_data=1 << 20, max_stream_data_window=1 << 20,
                        max_streams=64, idle_timeout=5.0, timeout=30),
    # bulk: default windows, larger transfers (the bulk sender and the pacer)
    "bulk": Load(connections=4, streams=4, parallel=4, size=4 << 20, upload=0,
                 max_data=4 << 20, max_stream_data=1 << 20, max_data_window=64 << 20,
                 max_stream_data_window=32 << 20, max_streams=256),
    # many connections, separate sockets (a scale.py-like load, smaller)
    "scale": Load(connections=48, streams=2, parallel=2, size=256 * KB, upload=0,
                  max_data=4 << 20, max_stream_data=1 << 20, max_data_window=64 << 20,
                  max_stream_data_window=32 << 20, max_streams=256),
}


@dataclass
class PeerOutcome:
    ok: bool
    seconds: float
    streams: int
    error: str = ""
    relay: dict[str, int] | None = None


async def quicgo_multistream(seed: int) -> PeerOutcome:
    """tests/test_interop_quicgo.py::test_multistream_transfer[qf-server]: quic-go's
    client fetches 8 files (0 B .. 3 MiB) at once from quicflow's hq server."""
    from tests.support import hq_peers, quicgo

    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        site = hq_peers.make_site(Path(tmp))
        for i, size in enumerate([0, 1, 1200, 64 * KB + 1, 300 * KB, 1 << 20, 3 << 20, 7]):
            site.add(f"f{i}.bin", size)
        try:
            await hq_peers.as_server(quicgo.QuicGoProcess, site)
        except Exception as exc:  # noqa: BLE001 - reported
            return PeerOutcome(False, time.monotonic() - start, 0, f"{type(exc).__name__}: {exc}")
    return PeerOutcome(True, time.monotonic() - start, 8)


async def one(name: str, seed: int, quiet: float) -> tuple[Any, WakeupCheck]:
    check = WakeupCheck(asyncio.get_running_loop(), quiet=quiet).install()
    check.record = RECORD
    if name == "quicgo":
        return await quicgo_multistream(seed), check
    return await run_load(replace(SCENARIOS[name], seed=seed), check), check


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--scenario", default=",".join(SCENARIOS),
                    help=f"of {','.join(SCENARIOS)},quicgo (quic-go's multistream test)")
    ap.add_argument("--quiet", type=float, default=0.25)
    ap.add_argument("--runs", type=int, default=0, help="stop after this many runs (0: time)")
    args = ap.parse_args()
    names = args.scenario.split(",")
    end = time.monotonic() + 60 * args.minutes
    failed = 0
    runs = 0
    i = 0
    while time.monotonic() < end and (not args.runs or runs < args.runs):
        name = names[i % len(names)]
        seed = 1 + i
        out, check = asyncio.run(one(name, seed, args.quiet))
        runs += 1
        bad = bool(check.violations) or not out.ok  # type: ignore[attr-defined]
        failed += bad
        print(f"{time.strftime('%H:%M:%S', time.gmtime())} {name:8} seed {seed:3} "
              f"{out.seconds:6.2f} s streams {out.streams:4} ok {out.ok} "  # type: ignore[attr-defined]
              f"checks {check.checks:6} probes {check.probes:5}/{check.late_probes} conns "
              f"{len(check.connections_seen):3} violations {len(check.violations)} "
              f"{out.relay or ''} {out.error}", flush=True)  # type: ignore[attr-defined]
        if check.violations:
            print(check.report(), flush=True)
        if not out.ok and check.last:
            for state in check.last.values():
                print("    last state:", state, flush=True)
        i += 1
    print(f"runs {runs} failed {failed} load {open('/proc/loadavg').read().strip()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
