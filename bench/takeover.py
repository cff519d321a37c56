"""Same-host takeover of a running perf server, measured from the clients.

Run: ``.venv/bin/python bench/takeover.py [--connections 1000] [--busy 20]
[--interval 0.25]``.

A ``quicflow perf server --handoff PATH`` runs; one client process (this one) opens
CONNECTIONS connections; BUSY of them download 64 MiB (read as fast as they can), the
others each send a 1 KiB perf request every INTERVAL seconds and note when each answer
arrives. Then a successor ``quicflow perf server --takeover PATH`` (started beforehand,
imports done) takes over. Reported:

- switch: from the takeover signal to the old process's exit (it has handed everything
  over and the successor acknowledged), and to the moment every connection had an answer
  again (from the clients);
- pause per connection: the longest gap between two answers of a request loop that spans
  the switch, minus INTERVAL (what a client notices), p50 / p99 / max; for busy
  connections the longest gap between two reads;
- the old process's own account (stop / capture / send timings, snapshot bytes) and the
  successor's restore time, divided per connection.

A second run with only idle connections gives the snapshot size of an idle connection.
Progress on stderr, the markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quicflow  # noqa: E402
from quicflow.transport.config import Configuration  # noqa: E402
from tests.support.takeover import ServerProc, write_certificate  # noqa: E402

MB = 1 << 20


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def _run(n: int, busy: int, interval: float, directory: Path) -> dict[str, Any]:
    cert, key = write_certificate(directory)
    path = str(directory / "handoff.sock")
    common = ["--cert", cert, "--key", key, "--json"]
    old = ServerProc(["--host", "127.0.0.1", "--port", "0", "--handoff", path, *common])
    new = ServerProc(["--takeover", path, *common], wait_for_go=True)
    try:
        port = old.port()
        config = Configuration(alpn_protocols=["perf"], cafile=cert, server_name="localhost")
        loop = asyncio.get_running_loop()
        conns: list[quicflow.QuicConnection] = []
        ready = asyncio.Event()
        done = asyncio.Event()
        gate = asyncio.Semaphore(64)

        async def hold() -> None:
            async with gate:
                cm = quicflow.connect("127.0.0.1", port, configuration=config)
                conn = await cm.__aenter__()
            conns.append(conn)
            if len(conns) == n:
                ready.set()
            try:
                await done.wait()
            finally:
                await cm.__aexit__(None, None, None)

        holders = [loop.create_task(hold()) for _ in range(n)]
        await ready.wait()
        print(f"{n} connections open", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        answers: list[list[float]] = [[] for _ in range(n)]

        async def requests(i: int, conn: quicflow.QuicConnection) -> None:
            await asyncio.sleep(interval * i / n)
            while not stop.is_set():
                reader, writer = await conn.create_stream()
                writer.write(struct.pack("!Q", 1024))
                writer.write_eof()
                await reader.read()
                answers[i].append(time.monotonic())
                await asyncio.sleep(interval)

        async def download(i: int, conn: quicflow.QuicConnection) -> None:
            while not stop.is_set():
                reader, writer = await conn.create_stream()
                writer.write(struct.pack("!Q", 64 * MB))
                writer.write_eof()
                while data := await reader.read(MB):
                    answers[i].append(time.monotonic())
                    del data

        tasks = [loop.create_task(download(i, c) if i < busy else requests(i, c))
                 for i, c in enumerate(conns)]
        await asyncio.sleep(max(2.0, 4 * interval))
        t0 = time.monotonic()
        result = await loop.run_in_executor(None, _switch, old, new)
        t_exit = time.monotonic() - t0
        # every connection answers again
        give_up = time.monotonic() + 120
        while any(not a or a[-1] < t0 + t_exit for a in answers):
            if time.monotonic() > give_up:
                silent = [i for i, a in enumerate(answers) if not a or a[-1] < t0 + t_exit]
                reasons = {repr(conns[i]._close_error) for i in silent}
                failed = [t.exception() for t in tasks if t.done() and t.exception()]
                raise RuntimeError(f"{len(silent)} connection(s) never answered again "
                                   f"(busy among them: {sum(i < busy for i in silent)}); "
                                   f"close errors {reasons}; {len(failed)} loops failed: "
                                   f"{failed[:3]}")
            await asyncio.sleep(0.05)
        t_all = time.monotonic() - t0
        await asyncio.sleep(max(1.0, 2 * interval))
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        done.set()
        await asyncio.gather(*holders, return_exceptions=True)
        pauses = []
        busy_pauses = []
        baseline = []  # the same measure before the switch (what load alone costs)
        for i, times in enumerate(answers):
            before = [b - a for a, b in zip(times, times[1:], strict=False) if b < t0]
            if i >= busy and before:
                baseline.append(max(before) - interval)
            pairs = zip(times, times[1:], strict=False)
            gaps = [b - a for a, b in pairs if b > t0 and a < t0 + t_all]
            gap = max(gaps) if gaps else float("nan")
            if i < busy:
                busy_pauses.append(gap)
            else:
                pauses.append(gap - interval)
        status, doc = result
        handoff = next(line for line in old.seen if line.startswith("handed off"))
        took = next(line for line in new.seen if line.startswith("took over"))
        return {"status": status, "json": doc, "exit": t_exit, "all": t_all,
                "pauses": pauses, "busy_pauses": busy_pauses, "handoff": handoff,
                "baseline": baseline,
                "took": took}
    finally:
        new.kill()
        old.kill()


def _switch(old: ServerProc, new: ServerProc) -> tuple[int, dict[str, Any] | None]:
    new.go()
    status, doc = old.finish(timeout=300)
    new.wait_line("listening on ", timeout=300)
    return status, doc


def _fmt(values: list[float]) -> str:
    return (f"{_pct(values, 50) * 1000:.0f} / {_pct(values, 99) * 1000:.0f} / "
            f"{max(values) * 1000:.0f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--busy", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.25)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(_run(args.connections + args.busy, args.busy, args.interval,
                             Path(tmp)))
    with tempfile.TemporaryDirectory() as tmp:
        idle = asyncio.run(_run(200, 0, args.interval, Path(tmp)))
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["bench/takeover.py", *sys.argv[1:]])
    print(f"\n## bench/takeover.py — {date}\n")
    print(f"Command: `.venv/bin/python {command}` ({os.cpu_count()} cores, shared).\n")
    print("| measure | value |\n|---|---|")
    print(f"| connections handed over | {r['json']} (old process exit {r['status']}) |")
    print(f"| switch: signal -> old process exited | {r['exit']:.2f} s |")
    print(f"| switch: signal -> every connection answered again | {r['all']:.2f} s |")
    print(f"| pause per idle connection (p50 / p99 / max) | {_fmt(r['pauses'])} |")
    if r["baseline"]:
        print(f"| same measure before the switch, {max(2.0, 4 * args.interval):.0f} s of load "
              f"alone (p50 / p99 / max) | {_fmt(r['baseline'])} |")
    if r["busy_pauses"]:
        print(f"| pause per busy connection, gap between reads (p50 / p99 / max) | "
              f"{_fmt(r['busy_pauses'])} |")
    print(f"| old process | {r['handoff']} |")
    print(f"| successor | {r['took']} |")
    print(f"| idle-only run (200) | {idle['handoff']}; {idle['took']} |")
    print(f"\nmedian idle pause {statistics.median(r['pauses']) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
