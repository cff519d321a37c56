"""Loss matrix: transfers through a lossy, reordering, duplicating, corrupting relay.

Run: ``.venv/bin/python bench/lossbench.py [--runs 20] [--write]`` (``make lossbench``;
``make lossbench LOSSBENCH_ARGS="--runs 3"`` for a shorter run).

For every loss rate (``--loss``, percent, the same each way; default 0,1,5,10,20,30) and
every pair of implementations (``--pairs``; client-server: ``quicflow-quicflow``,
``quicflow-aioquic``, ``aioquic-quicflow`` and ``aioquic-aioquic``, the last one the
baseline), ``--runs`` transfers go through ``tests/support/relay.py``'s relay, which on
top of the loss reorders (``--reorder``), duplicates (``--duplicate``) and corrupts one
random bit (``--corrupt``) of datagrams with the given probabilities, in both directions.
Each transfer is one stream of the echo protocol (``tests/support/echo_proto.py``): the
client uploads ``--upload`` bytes and downloads ``--size`` bytes, and SHA-256 is checked
both ways. Runs are interleaved (run r of every cell before run r+1; within a loss rate
the pairs share the relay seed), so the implementations see the same machine load.

Per cell: completion time (connect to last byte checked; median and max), integrity
(runs with both hashes right), stalls (runs in which no byte of progress — a downloaded
chunk or a drained upload — came for more than ``--stall`` seconds, handshake included,
or that did not finish within ``--timeout``), and the relay's counters. Servers run in
processes of their own (one per implementation, started once); clients and the relay run
here, in one asyncio loop.

Markdown goes to stdout, one progress line per run to stderr; ``--write`` appends the
table to bench/RESULTS.md, ``--json FILE`` writes every run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support import echo_proto  # noqa: E402
from tests.support.relay import LossyUdpRelay  # noqa: E402

PAIRS = ("quicflow-quicflow", "quicflow-aioquic", "aioquic-quicflow", "aioquic-aioquic")
BIG_WINDOW = 16 * 1024 * 1024


@dataclass
class Run:
    pair: str
    loss: float
    index: int
    seed: int
    ok: bool = False
    seconds: float = 0.0
    max_gap: float = 0.0  # longest time without progress
    gap_start: float = 0.0  # when it began (seconds after the connect call)
    handshake: float = 0.0  # seconds until the handshake completed
    stalled: bool = False
    timed_out: bool = False
    error: str = ""
    relay: dict[str, dict[str, int]] = field(default_factory=dict)


class _Progress:
    """Times at which bytes moved: a read that returned data, a drain that returned."""

    def __init__(self, start: float) -> None:
        self.start = self.last = start
        self.max_gap = 0.0
        self.gap_start = 0.0  # when the longest gap began, seconds after the start
        self.handshake = 0.0  # seconds until the handshake completed
        self.conn: Any = None  # a quicflow client's Connection, for diagnostics

    def mark(self) -> None:
        now = time.monotonic()
        if now - self.last > self.max_gap:
            self.max_gap = now - self.last
            self.gap_start = self.last - self.start
        self.last = now

    def connected(self) -> None:
        self.mark()
        self.handshake = self.last - self.start


class _Reader:
    def __init__(self, inner: Any, progress: _Progress) -> None:
        self.inner, self.progress = inner, progress

    async def read(self, n: int = -1) -> bytes:
        data: bytes = await self.inner.read(n)
        if data:
            self.progress.mark()
        return data

    async def readexactly(self, n: int) -> bytes:
        data: bytes = await self.inner.readexactly(n)
        self.progress.mark()
        return data


class _Writer:
    def __init__(self, inner: Any, progress: _Progress) -> None:
        self.inner, self.progress = inner, progress

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    async def drain(self) -> None:
        await self.inner.drain()
        self.progress.mark()

    def write_eof(self) -> None:
        self.inner.write_eof()


# ---------------------------------------------------------------------- clients


async def _exchange(reader: Any, writer: Any, args: argparse.Namespace, seed: int,
                    progress: _Progress) -> dict[str, object]:
    upload = echo_proto.payload(10_000 + seed, args.upload)
    return await echo_proto.client_exchange(
        _Reader(reader, progress), _Writer(writer, progress),
        upload=upload, download=args.size, seed=seed,
    )


async def quicflow_client(port: int, args: argparse.Namespace, seed: int,
                          progress: _Progress, done: list[float]) -> dict[str, object]:
    import quicflow

    config = quicflow.Configuration(alpn_protocols=["perf"], verify_peer=False,
                                    server_name="localhost")
    async with quicflow.connect("127.0.0.1", port, configuration=config) as conn:
        progress.connected()
        progress.conn = conn.conn
        reader, writer = await conn.create_stream()
        result = await _exchange(reader, writer, args, seed, progress)
        done.append(time.monotonic())
        return result


async def aioquic_client(port: int, args: argparse.Namespace, seed: int,
                         progress: _Progress, done: list[float]) -> dict[str, object]:
    import ssl

    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=True, alpn_protocols=["perf"], max_data=BIG_WINDOW,
                               max_stream_data=BIG_WINDOW, server_name="localhost")
    config.verify_mode = ssl.CERT_NONE
    async with connect("127.0.0.1", port, configuration=config) as client:
        progress.connected()
        reader, writer = await client.create_stream()
        result = await _exchange(reader, writer, args, seed, progress)
        done.append(time.monotonic())
        client.close(error_code=0)
        await client.wait_closed()
        return result


# ---------------------------------------------------------------------- servers


async def _serve_quicflow(port: int, cert: str, key: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    import quicflow

    with open(cert, "rb") as f:
        chain = [x509.load_pem_x509_certificate(f.read())]
    with open(key, "rb") as f:
        private_key = load_pem_private_key(f.read(), None)
    config = quicflow.Configuration(alpn_protocols=["perf"], certificate_chain=chain,
                                    private_key=private_key)
    server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", port,
                                  configuration=config)
    print(json.dumps({"event": "ready", "port": server.address[1]}), flush=True)
    await asyncio.Event().wait()


class Server:
    """A server process of one implementation, serving the echo protocol."""

    def __init__(self, impl: str, cert: str, key: str) -> None:
        if impl == "quicflow":
            cmd = [sys.executable, os.path.abspath(__file__), "_server", cert, key]
        else:
            cmd = [sys.executable, "-m", "tests.support.aioquic_peer", "server",
                   "--cert", cert, "--key", key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=ROOT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{impl} server did not start")
        self.port = int(json.loads(line)["port"])
        # the aioquic peer prints an event per connection: keep its pipe drained
        self._drain = asyncio.get_event_loop().run_in_executor(None, self._read_rest)

    def _read_rest(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ---------------------------------------------------------------------- the matrix


async def one_run(run: Run, server: Server, args: argparse.Namespace) -> None:
    client_impl = run.pair.split("-")[0]
    relay = await LossyUdpRelay(
        ("127.0.0.1", server.port), loss=run.loss, reorder=args.reorder,
        duplicate=args.duplicate, corrupt=args.corrupt, seed=run.seed,
    ).start()
    start = time.monotonic()
    progress = _Progress(start)
    done: list[float] = []
    client = quicflow_client if client_impl == "quicflow" else aioquic_client
    try:
        result = await asyncio.wait_for(
            client(relay.address[1], args, run.seed, progress, done), args.timeout)
        run.ok = bool(result["ok"])
        if not run.ok:
            run.error = json.dumps(result)
    except TimeoutError:
        run.timed_out = True
        run.error = f"not done after {args.timeout} s"
    except Exception as exc:  # noqa: BLE001 - recorded as a failed run
        run.error = repr(exc)[:300]
    finally:
        if progress.conn is not None and (not run.ok or run.timed_out):
            c = progress.conn
            run.error += (f" [client: state {c.state}, pto_count {c.loss.pto_count}, "
                          f"counters {json.dumps(asdict(c.counters))}]")
        run.relay = relay.stats()
        await relay.close()
    end = done[0] if done else time.monotonic()
    run.seconds = end - start
    if end - progress.last > progress.max_gap:
        progress.max_gap, progress.gap_start = end - progress.last, progress.last - start
    run.max_gap, run.gap_start, run.handshake = (progress.max_gap, progress.gap_start,
                                                 progress.handshake)
    run.stalled = run.timed_out or run.max_gap > args.stall


async def matrix(args: argparse.Namespace) -> list[Run]:
    from tests.support.quic_helpers import self_signed

    tmp = tempfile.mkdtemp(prefix="lossbench-")
    cert, key = self_signed().write(__import__("pathlib").Path(tmp), "server")
    impls = sorted({p.split("-")[1] for p in args.pairs})
    servers = {impl: Server(impl, str(cert), str(key)) for impl in impls}
    runs: list[Run] = []
    total = args.runs * len(args.loss) * len(args.pairs)
    try:
        for index in range(args.runs):
            for li, loss in enumerate(args.loss):
                for pair in args.pairs:
                    run = Run(pair, loss / 100, index, seed=1000 * index + li)
                    await one_run(run, servers[pair.split("-")[1]], args)
                    runs.append(run)
                    d = run.relay
                    print(
                        f"[{len(runs)}/{total}] {pair} loss {loss}% run {index}: "
                        f"{'ok' if run.ok else 'FAIL'} {run.seconds:.2f}s "
                        f"handshake {run.handshake:.2f}s "
                        f"max gap {run.max_gap:.2f}s at {run.gap_start:.2f}s"
                        f"{' STALL' if run.stalled else ''} "
                        f"dropped {d['c2s']['dropped']}/{d['s2c']['dropped']} "
                        f"corrupted {d['c2s']['corrupted']}/{d['s2c']['corrupted']}"
                        f"{' ' + run.error if run.error else ''}",
                        file=sys.stderr, flush=True,
                    )
    finally:
        for server in servers.values():
            server.stop()
    return runs


def table(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        f"Command: `{' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"{platform.node()}, {os.cpu_count()} CPUs (shared); Python "
        f"{platform.python_version()}",
        f"Each run: {args.upload} B up + {args.size} B down on one stream, SHA-256 both ways; "
        f"relay: loss as in the row, each way, reorder {args.reorder:.0%}, duplicate "
        f"{args.duplicate:.0%}, corrupt {args.corrupt:.0%} (one flipped bit), both ways; "
        f"stall = no progress for more than {args.stall:g} s or not done in "
        f"{args.timeout:g} s; {args.runs} runs per cell.",
        "",
        "| loss each way | client-server | runs | intact | stalls | median s | max s "
        "| max gap s | datagrams dropped / duplicated / corrupted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for loss in args.loss:
        for pair in args.pairs:
            cell = [r for r in runs if r.pair == pair and r.loss == loss / 100]
            if not cell:
                continue
            secs = [r.seconds for r in cell if r.ok]
            drop = sum(r.relay[d]["dropped"] for r in cell for d in ("c2s", "s2c"))
            dup = sum(r.relay[d]["duplicated"] for r in cell for d in ("c2s", "s2c"))
            bad = sum(r.relay[d]["corrupted"] for r in cell for d in ("c2s", "s2c"))
            lines.append(
                f"| {loss:g} % | {pair} | {len(cell)} | {sum(r.ok for r in cell)} | "
                f"{sum(r.stalled for r in cell)} | "
                f"{statistics.median(secs) if secs else float('nan'):.2f} | "
                f"{max(secs) if secs else float('nan'):.2f} | "
                f"{max(r.max_gap for r in cell):.2f} | {drop} / {dup} / {bad} |"
            )
    lines.append("")
    for loss in args.loss:
        ours = [r.seconds for r in runs if r.pair == "quicflow-quicflow"
                and r.loss == loss / 100 and r.ok]
        theirs = [r.seconds for r in runs if r.pair == "aioquic-aioquic"
                  and r.loss == loss / 100 and r.ok]
        if ours and theirs:
            ratio = statistics.median(ours) / statistics.median(theirs)
            lines.append(f"- {loss:g} % loss: quicflow-quicflow median / aioquic-aioquic "
                         f"median = {ratio:.2f}")
    failed = [r for r in runs if not r.ok or r.stalled]
    lines.append(f"- runs not intact or stalled: {len(failed)} of {len(runs)}")
    for r in failed:
        lines.append(f"  - {r.pair} loss {r.loss:.0%} run {r.index} seed {r.seed}: "
                     f"{'stall ' if r.stalled else ''}{r.error}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_server"]:  # internal: the quicflow server process
        asyncio.run(_serve_quicflow(0, argv[1], argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20, help="runs per cell (default 20)")
    p.add_argument("--loss", default="0,1,5,10,20,30",
                   help="loss rates in percent, each way (default 0,1,5,10,20,30)")
    p.add_argument("--pairs", default=",".join(PAIRS),
                   help=f"client-server pairs (default {','.join(PAIRS)})")
    p.add_argument("--size", type=int, default=256 << 10, help="download bytes (default 256 KiB)")
    p.add_argument("--upload", type=int, default=64 << 10,
                   help="upload bytes (default 64 KiB)")
    p.add_argument("--reorder", type=float, default=0.05,
                   help="probability a datagram is swapped with the next (default 0.05)")
    p.add_argument("--duplicate", type=float, default=0.02,
                   help="probability a datagram is sent twice (default 0.02)")
    p.add_argument("--corrupt", type=float, default=0.01,
                   help="probability one bit of a datagram is flipped (default 0.01)")
    p.add_argument("--stall", type=float, default=5.0,
                   help="seconds without progress that count as a stall (default 5)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds before a run is abandoned (default 120)")
    p.add_argument("--write", action="store_true", help="append the table to bench/RESULTS.md")
    p.add_argument("--json", metavar="FILE", help="write every run as JSON to FILE")
    args = p.parse_args(argv)
    args.loss = [float(x) for x in args.loss.split(",")]
    args.pairs = args.pairs.split(",")
    for pair in args.pairs:
        if pair not in PAIRS:
            p.error(f"unknown pair {pair!r}; choose from {', '.join(PAIRS)}")
    runs = asyncio.run(matrix(args))
    out = table(runs, args)
    sys.stdout.write(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in runs], f, indent=1)
    if args.write:
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
            f.write(f"\n## bench/lossbench.py — {datetime.date.today()}\n\n{out}")
    return 0 if all(r.ok and not r.stalled for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
