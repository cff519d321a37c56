"""Handshakes per second and server CPU per handshake, with 1 and 2 worker processes.

Run: ``.venv/bin/python bench/handshakes.py [--workers 1 2] [--seconds 8]
[--concurrency 32] [--write]``.

For each worker count a perf server is started with ``serve(..., workers=N)`` (this
process is the supervisor; the workers are forked from it). Load: CLIENT_PROCS client
processes keep CONCURRENCY connections going in total, each loop doing a full handshake
(TLS 1.3, X25519, ECDSA P-256 certificate), one 1 KiB perf request, and a close (not
waited for: the next handshake starts while the closing period runs out). The
rate counts handshakes completed during SECONDS after a one-second warm-up. Server CPU
is user + system time of the worker processes (``/proc/PID/stat``) over the same window,
per handshake, and each worker's share of it. Client and server share the machine's
cores, so the rate is bounded by total CPU; CPU per handshake is the server's cost.

The markdown table goes to stdout; ``--write`` appends it to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
REQUEST = 1024


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


# ---------------------------------------------------------------------------- client


async def _client_loop(port: int, stop_at: float, counts: list[int], warm_until: float) -> None:
    """Handshake, one request, close; the next handshake starts without waiting for the
    closing period (3 PTO) to end, which would otherwise bound the rate."""
    import quicflow

    cfg = quicflow.Configuration(alpn_protocols=["perf"], verify_peer=False)
    loop = asyncio.get_running_loop()
    closing: set[asyncio.Task[None]] = set()
    while loop.time() < stop_at:
        cm = quicflow.connect("127.0.0.1", port, configuration=cfg)
        try:
            conn = await cm.__aenter__()
            reader, writer = await conn.create_stream()
            writer.write(struct.pack("!Q", REQUEST))
            writer.write_eof()
            ok = len(await reader.read()) == REQUEST
        except Exception:
            ok = False
        task = loop.create_task(cm.__aexit__(None, None, None))
        closing.add(task)
        task.add_done_callback(closing.discard)
        if not ok:
            counts[2] += 1
        elif loop.time() >= warm_until:
            counts[0] += 1
        else:
            counts[1] += 1
    await asyncio.gather(*closing, return_exceptions=True)


async def _client_main(port: int, concurrency: int, warm: float, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    counts = [0, 0, 0]  # measured, warm-up, failed
    await asyncio.gather(*(
        _client_loop(port, start + warm + seconds, counts, start + warm)
        for _ in range(concurrency)
    ))  # fmt: skip
    print(json.dumps({"handshakes": counts[0], "warmup": counts[1], "failed": counts[2],
                      "cpu_s": time.process_time()}))


# ---------------------------------------------------------------------------- server side


async def _measure(workers: int, concurrency: int, procs: int, seconds: float) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from quicflow.apps.perf import server_configuration, start_server
    from quicflow.tls.certs import generate_self_signed

    cert, key = generate_self_signed(["localhost", "127.0.0.1"])
    server, _ = await start_server(
        "127.0.0.1", 0, configuration=server_configuration([cert], key), workers=workers
    )
    port = server.address[1]
    warm = 1.0
    clients = [
        subprocess.Popen(
            [sys.executable, __file__, "--client", str(port), str(concurrency // procs),
             str(warm), str(seconds)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        for _ in range(procs)
    ]
    await asyncio.sleep(warm)
    pids = list(server.pids)
    before = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    after = [cpu_seconds(p) for p in pids]
    elapsed = time.monotonic() - t0
    outs = [json.loads(c.communicate(timeout=120)[0]) for c in clients]
    await server.wait_closed()
    handshakes = sum(o["handshakes"] for o in outs)
    failed = sum(o["failed"] for o in outs)
    cpu = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(cpu)
    per_worker_conns = [w["connections"] for w in server.workers()]
    return {
        "workers": workers,
        "handshakes": handshakes,
        "failed": failed,
        "rate": handshakes / elapsed,
        "cpu_ms_per_handshake": 1000 * total / handshakes if handshakes else 0.0,
        "cpu_share": [c / total if total else 0.0 for c in cpu],
        "connections_share": [c / sum(per_worker_conns) for c in per_worker_conns],
        "server_cpu_s": total,
        "client_cpu_ms_per_handshake": (
            1000 * sum(o["cpu_s"] for o in outs) / (handshakes + sum(o["warmup"] for o in outs))
            if handshakes else 0.0
        ),
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"## bench/handshakes.py — {datetime.date.today().isoformat()}",
        "",
        f"`.venv/bin/python bench/handshakes.py --workers {' '.join(map(str, args.workers))}"
        f" --seconds {args.seconds:g} --concurrency {args.concurrency}"
        f" --client-procs {args.client_procs}` on {platform.node() or 'this host'}"
        f" ({os.cpu_count()} cores, shared by client and server; Python"
        f" {platform.python_version()}). Each handshake: TLS 1.3 X25519 + ECDSA P-256, one"
        f" {REQUEST}-byte perf request, close.",
        "",
        "| workers | handshakes/s | server CPU per handshake | server CPU split over workers |"
        " connections split | client CPU per handshake | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        split = " / ".join(f"{100 * s:.0f}%" for s in r["cpu_share"])
        conns = " / ".join(f"{100 * s:.0f}%" for s in r["connections_share"])
        lines.append(
            f"| {r['workers']} | {r['rate']:.0f} | {r['cpu_ms_per_handshake']:.2f} ms |"
            f" {split} | {conns} | {r['client_cpu_ms_per_handshake']:.2f} ms | {r['failed']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, conc, warm, seconds = sys.argv[2:6]
        sys.path.insert(0, str(ROOT / "src"))
        asyncio.run(_client_main(int(port), int(conc), float(warm), float(seconds)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = p.parse_args()
    rows = []
    for n in args.workers:
        print(f"measuring {n} worker(s)...", file=sys.stderr, flush=True)
        rows.append(asyncio.run(_measure(n, args.concurrency, args.client_procs, args.seconds)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    out = table(rows, args)
    print(out)
    if args.write:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write("\n" + out)


if __name__ == "__main__":
    main()
