"""HTTP/3: quicflow (quicflow.h3) beside aioquic (aioquic.h3) and ngtcp2, in the same run.

1. goodput: one GET of a SIZE-byte body (default 200 MiB) on one connection, the server
   in a process of its own, the client in this one; bytes / seconds from sending the
   request to the last body byte (handshake excluded). ngtcp2 (Debian ngtcp2-server,
   ngtcp2-client; skipped with a note when not installed): ``gtlsserver`` serving the
   body from a file on tmpfs to ``gtlsclient -q --download`` into tmpfs, timed from
   starting gtlsclient to its exit (so its process start and handshake are included:
   about 1 ms of loopback RTT and a few ms of start-up, against seconds of transfer).
2. requests/s: CONNS connections (default 10) each keeping DEPTH requests (default 8) in
   flight for SECONDS, responses of 1 KB; completed responses / seconds.

All three get the same certificate, the same 1200-byte datagram cap (aioquic's default;
quicflow's default too; ngtcp2 with ``--max-udp-payload-size=1200 --no-pmtud``), 16 MiB
receive windows. Usage::

    .venv/bin/python bench/h3_bench.py [--size MiB] [--runs N] [--seconds S]

Prints a Markdown table; the body is checked by SHA-256 on every run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
MIB = 1 << 20
SMALL = 1000


def body(size: int) -> bytes:
    block = hashlib.sha256(b"bench").digest() * 2048
    return (block * (size // len(block) + 1))[:size]


# ---------------------------------------------------------------- servers (subprocesses)

async def quicflow_server(cert: str, key: str) -> None:
    from quicflow.h3 import aio as h3
    from quicflow.transport.config import Configuration

    cache: dict[int, bytes] = {}

    async def handler(req: h3.H3Stream) -> None:
        n = int(req.path.rsplit("/", 1)[1])
        data = cache.get(n) or cache.setdefault(n, body(n))
        await req.respond(200, [("content-length", str(n))], data)

    config = Configuration(alpn_protocols=["h3"], max_stream_data=16 * MIB,
                           max_data=16 * MIB)
    config.load_cert_chain(cert, key)
    server = await h3.serve(handler, "127.0.0.1", 0, configuration=config)
    print(json.dumps({"port": server.address[1]}), flush=True)
    await asyncio.Event().wait()


async def aioquic_server(cert: str, key: str) -> None:
    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ProtocolNegotiated, QuicEvent

    cache: dict[int, bytes] = {}

    class Proto(QuicConnectionProtocol):
        h3: H3Connection | None = None

        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, ProtocolNegotiated):
                self.h3 = H3Connection(self._quic)
            if self.h3 is None:
                return
            for ev in self.h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    path = dict(ev.headers)[b":path"].decode()
                    n = int(path.rsplit("/", 1)[1])
                    data = cache.get(n) or cache.setdefault(n, body(n))
                    self.h3.send_headers(ev.stream_id, [(b":status", b"200"), (
                        b"content-length", str(n).encode())])
                    self.h3.send_data(ev.stream_id, data, end_stream=True)
                    self.transmit()

    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN,
                               max_stream_data=16 * MIB, max_data=16 * MIB)
    config.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Proto)
    print(json.dumps({"port": server._transport.get_extra_info("sockname")[1]}), flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------- clients (this process)

class QuicflowClient:
    def __init__(self, port: int, cafile: str) -> None:
        from quicflow.h3 import aio as h3
        from quicflow.transport.config import Configuration

        self.cm = h3.connect("127.0.0.1", port, configuration=Configuration(
            alpn_protocols=["h3"], cafile=cafile, server_name="localhost",
            max_stream_data=16 * MIB, max_data=16 * MIB))
        self.client: Any = None

    async def __aenter__(self) -> QuicflowClient:
        self.client = await self.cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cm.__aexit__(None, None, None)

    async def get(self, path: str) -> tuple[int, str]:
        resp = await self.client.get(path)
        digest = hashlib.sha256()
        size = 0
        while chunk := await resp.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()


class AioquicClient:
    def __init__(self, port: int, cafile: str) -> None:
        from aioquic.asyncio import QuicConnectionProtocol, connect
        from aioquic.h3.connection import H3_ALPN, H3Connection
        from aioquic.h3.events import DataReceived, HeadersReceived
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.events import QuicEvent

        class Proto(QuicConnectionProtocol):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **kw)
                self.h3 = H3Connection(self._quic)
                self.waiting: dict[int, tuple[asyncio.Future[tuple[int, str]], Any, list[int]]] = {}

            def quic_event_received(self, event: QuicEvent) -> None:
                for ev in self.h3.handle_event(event):
                    if isinstance(ev, DataReceived | HeadersReceived):
                        entry = self.waiting.get(ev.stream_id)
                        if entry is None:
                            continue
                        fut, digest, size = entry
                        if isinstance(ev, DataReceived):
                            digest.update(ev.data)
                            size[0] += len(ev.data)
                        if ev.stream_ended:
                            del self.waiting[ev.stream_id]
                            fut.set_result((size[0], digest.hexdigest()))

            async def get(self, path: str) -> tuple[int, str]:
                sid = self._quic.get_next_available_stream_id()
                fut = asyncio.get_running_loop().create_future()
                self.waiting[sid] = (fut, hashlib.sha256(), [0])
                self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                           (b":authority", b"localhost"),
                                           (b":path", path.encode())], end_stream=True)
                self.transmit()
                result: tuple[int, str] = await fut
                return result

        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                   server_name="localhost", max_stream_data=16 * MIB,
                                   max_data=16 * MIB)
        config.load_verify_locations(cafile)
        self.cm = connect("127.0.0.1", port, configuration=config, create_protocol=Proto)
        self.proto: Any = None

    async def __aenter__(self) -> AioquicClient:
        self.proto = await self.cm.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cm.__aexit__(None, None, None)

    async def get(self, path: str) -> tuple[int, str]:
        result: tuple[int, str] = await self.proto.get(path)
        return result


CLIENTS = {"quicflow": QuicflowClient, "aioquic": AioquicClient}


async def start_server(impl: str, cert: str, key: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, __file__, "--server", impl, "--cert", cert,
                             "--key", key], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    return proc, int(json.loads(line)["port"])


async def goodput(impl: str, cert: str, key: str, size: int) -> float:
    proc, port = await start_server(impl, cert, key)
    try:
        async with CLIENTS[impl](port, cert) as client:  # type: ignore[attr-defined]
            await client.get("/bytes/1000")  # warm up (and the server builds its body)
            await client.get(f"/bytes/{size}")
            start = time.perf_counter()
            got, digest = await client.get(f"/bytes/{size}")
            seconds = time.perf_counter() - start
        assert got == size and digest == hashlib.sha256(body(size)).hexdigest(), impl
        return size / seconds
    finally:
        proc.kill()
        proc.wait()


def udp_bound(port: int) -> bool:
    with open("/proc/net/udp") as f:
        rows = f.readlines()[1:]
    return any(int(row.split()[1].rsplit(":", 1)[1], 16) == port for row in rows if row.strip())


def ngtcp2_available() -> bool:
    return shutil.which("gtlsserver") is not None and shutil.which("gtlsclient") is not None


async def ngtcp2_goodput(cert: str, key: str, size: int) -> float:
    """gtlsserver -> gtlsclient: one download of ``size`` bytes, checked by SHA-256."""
    work = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    htdocs, into = os.path.join(work, "htdocs"), os.path.join(work, "into")
    os.mkdir(htdocs)
    os.mkdir(into)
    data = body(size)
    with open(os.path.join(htdocs, "body.bin"), "wb") as f:
        f.write(data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cap = ["--max-udp-payload-size=1200", "--no-pmtud"]
    server = subprocess.Popen(["gtlsserver", "-q", "-d", htdocs, *cap, "127.0.0.1", str(port),
                               key, cert], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while not udp_bound(port):
            if server.poll() is not None:
                raise RuntimeError("gtlsserver exited")
            await asyncio.sleep(0.01)
        start = time.perf_counter()
        client = await asyncio.create_subprocess_exec(
            "gtlsclient", "-q", "--exit-on-all-streams-close", f"--download={into}", *cap,
            "--max-data=16M", "--max-stream-data-bidi-local=16M", "--max-window=16M",
            "--max-stream-window=16M", "127.0.0.1", str(port),
            f"https://127.0.0.1:{port}/body.bin",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await client.wait()
        seconds = time.perf_counter() - start
        with open(os.path.join(into, "body.bin"), "rb") as f:
            got = f.read()
        assert got == data, f"ngtcp2: {len(got)} of {size} bytes"
        return size / seconds
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


async def request_rate(impl: str, cert: str, key: str, conns: int, depth: int,
                       seconds: float) -> float:
    proc, port = await start_server(impl, cert, key)
    expected = hashlib.sha256(body(SMALL)).hexdigest()
    done = 0
    try:
        clients = [CLIENTS[impl](port, cert) for _ in range(conns)]
        for c in clients:
            await c.__aenter__()
        deadline = time.perf_counter() + seconds

        async def worker(c: Any) -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                size, digest = await c.get(f"/bytes/{SMALL}")
                assert size == SMALL and digest == expected
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients for _ in range(depth)))
        elapsed = time.perf_counter() - start
        for c in clients:
            await c.__aexit__(None, None, None)
        return done / elapsed
    finally:
        proc.kill()
        proc.wait()


async def main_async(args: argparse.Namespace) -> None:
    from quicflow.tls.certs import certificate_pem, generate_self_signed, private_key_pem

    tmp = tempfile.mkdtemp()
    cert_obj, key_obj = generate_self_signed(["localhost"])
    cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
    with open(cert, "wb") as f:
        f.write(certificate_pem(cert_obj))
    with open(key, "wb") as f:
        f.write(private_key_pem(key_obj))
    size = args.size * MIB
    rates: dict[str, list[float]] = {"quicflow": [], "aioquic": [], "ngtcp2": []}
    impls = ["quicflow", "aioquic"] + (["ngtcp2"] if ngtcp2_available() else [])
    if "ngtcp2" not in impls:
        print("ngtcp2's gtlsserver/gtlsclient not installed: no ngtcp2 column", file=sys.stderr)
    for run in range(args.runs):
        for impl in impls:
            if impl == "ngtcp2":
                rate = await ngtcp2_goodput(cert, key, size)
            else:
                rate = await goodput(impl, cert, key, size)
            rates[impl].append(rate)
            print(f"goodput run {run + 1} {impl}: {rate / 1e6:.1f} MB/s", file=sys.stderr)
    rps: dict[str, list[float]] = {"quicflow": [], "aioquic": []}
    for run in range(args.runs):
        for impl in ("quicflow", "aioquic"):
            r = await request_rate(impl, cert, key, args.conns, args.depth, args.seconds)
            rps[impl].append(r)
            print(f"requests run {run + 1} {impl}: {r:.0f}/s", file=sys.stderr)

    def cell(values: list[float], scale: float, fmt: str) -> str:
        med = statistics.median(values) / scale
        return f"{med:{fmt}} ({min(values) / scale:{fmt}}–{max(values) / scale:{fmt}})"

    q, a = statistics.median(rates["quicflow"]), statistics.median(rates["aioquic"])
    qr, ar = statistics.median(rps["quicflow"]), statistics.median(rps["aioquic"])
    ng = rates["ngtcp2"]
    ng_cell = cell(ng, 1e6, ".1f") if ng else "not installed"
    ng_ratio = f"{q / statistics.median(ng):.2f}" if ng else "—"
    print("| measurement | quicflow | aioquic | ngtcp2 | quicflow/aioquic | quicflow/ngtcp2 |")
    print("|---|---|---|---|---|---|")
    print(f"| download of one {args.size} MiB body, 1 connection, MB/s | "
          f"{cell(rates['quicflow'], 1e6, '.1f')} | {cell(rates['aioquic'], 1e6, '.1f')} | "
          f"{ng_cell} | {q / a:.2f} | {ng_ratio} |")
    print(f"| 1 KB responses, {args.conns} connections x {args.depth} in flight, "
          f"requests/s | {cell(rps['quicflow'], 1, '.0f')} | {cell(rps['aioquic'], 1, '.0f')}"
          f" | — | {qr / ar:.2f} | — |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200, help="MiB (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (median)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="duration of each requests/s run (default: %(default)s)")
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--server", choices=["quicflow", "aioquic"], help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.server:
        server = quicflow_server if args.server == "quicflow" else aioquic_server
        asyncio.run(server(args.cert, args.key))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
