"""Client migration on loopback: how long ``QuicConnection.migrate()`` takes and what a
bulk download loses to it.

One quicflow server, one quicflow client downloading ``--size`` bytes on one stream;
with ``--migrations N`` the client moves to a new port N times, evenly spread over the
download (each ``migrate()`` validates the new path, then RTT and congestion state start
afresh). Reports per run: each migrate() duration, download seconds, goodput and the
SHA-256 check, and the same download without migrations for comparison.

    .venv/bin/python bench/migration.py [--size 200M] [--migrations 5] [--runs 3] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import quicflow  # noqa: E402
from quicflow.tls.certs import certificate_pem, generate_self_signed  # noqa: E402

CHUNK = 1 << 20
BLOCK = os.urandom(CHUNK)


async def _source(reader: quicflow.QuicStreamReader, writer: quicflow.QuicStreamWriter) -> None:
    size = int.from_bytes(await reader.readexactly(8), "big")
    while size > 0:
        n = min(size, CHUNK)
        writer.write(BLOCK[:n])
        await writer.drain()
        size -= n
    writer.write_eof()


def _expected(size: int) -> str:
    digest = hashlib.sha256()
    while size > 0:
        n = min(size, CHUNK)
        digest.update(BLOCK[:n])
        size -= n
    return digest.hexdigest()


async def one_run(size: int, migrations: int) -> dict[str, object]:
    cert, key = generate_self_signed(["localhost"])
    server = await quicflow.serve(
        _source, "127.0.0.1", 0,
        configuration=quicflow.Configuration(alpn_protocols=["perf"],
                                             certificate_chain=[cert], private_key=key),
    )
    cfg = quicflow.Configuration(alpn_protocols=["perf"], cadata=certificate_pem(cert),
                                 server_name="localhost")
    durations: list[float] = []
    async with server:
        async with quicflow.connect("127.0.0.1", server.address[1], configuration=cfg) as conn:
            reader, writer = await conn.create_stream()
            start = time.perf_counter()
            writer.write(size.to_bytes(8, "big"))
            writer.write_eof()
            digest = hashlib.sha256()
            got = 0
            marks = [size * (i + 1) // (migrations + 1) for i in range(migrations)]
            while True:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                got += len(chunk)
                if marks and got >= marks[0]:
                    marks.pop(0)
                    t0 = time.perf_counter()
                    await conn.migrate()
                    durations.append(time.perf_counter() - t0)
            seconds = time.perf_counter() - start
            await asyncio.sleep(0.1)  # the server sees the client's last ACKs
            served = server.connections[0].stats()["connection"]
    return {
        "intact": got == size and digest.hexdigest() == _expected(size),
        "seconds": seconds, "goodput_mb_s": size / seconds / 1e6,
        "migrate_ms": [round(d * 1000, 2) for d in durations],
        "server_path_changes": served["path_changes"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="200M", help="download size (K/M suffixes, powers of 1024)")
    p.add_argument("--migrations", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--write", action="store_true", help="append the results to bench/RESULTS.md")
    args = p.parse_args()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = int(args.size[:-1]) * units[args.size[-1]] if args.size[-1] in units else int(args.size)
    rows = []
    for run in range(args.runs):
        for migrations in (0, args.migrations):
            print(f"run {run + 1}/{args.runs}, {migrations} migration(s)...", file=sys.stderr,
                  flush=True)
            result = asyncio.run(one_run(size, migrations))
            result["migrations"] = migrations
            rows.append(result)
            print(json.dumps(result), flush=True)
    still = [r["goodput_mb_s"] for r in rows if r["migrations"] == 0]
    moving = [r["goodput_mb_s"] for r in rows if r["migrations"]]
    times = [t for r in rows for t in r["migrate_ms"]]  # type: ignore[attr-defined]
    summary = (f"- {args.runs} runs of {args.size}: goodput without migrations median "
               f"{statistics.median(still):.1f} MB/s, with {args.migrations} migrations median "
               f"{statistics.median(moving):.1f} MB/s; migrate() median "
               f"{statistics.median(times):.2f} ms, max {max(times):.2f} ms "
               f"({len(times)} migrations); all intact: {all(r['intact'] for r in rows)}")
    print(summary, file=sys.stderr)
    if args.write:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        cmd = " ".join(["bench/migration.py", *sys.argv[1:]])
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"),
                  "a") as f:
            f.write(f"\n## bench/migration.py — {now[:10]}\n\nCommand: `{cmd}` ({now}, "
                    "2 shared CPUs, loopback)\n\n" + summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
