"""Per-connection sockets: kernel cost of demultiplexing, goodput, memory.

Run (each part is short; the CPU is shared):

    .venv/bin/python bench/connected_sockets.py lookup  [--counts 0,64,256,1000,2000,5000]
    .venv/bin/python bench/connected_sockets.py goodput [--connections 1,64,256] [--total 128M]
    .venv/bin/python bench/connected_sockets.py memory  [--connections 1000]

``lookup``: the cost, in the sender's syscall (loopback delivers inside it), of a 1200-byte
datagram sent to a port that holds N connected sockets: one that matches none of them
(goes to the listener: an Initial, a rebinding, a connection left on the listener) and
one that matches a connected socket. "raw" opens N sockets; "quicflow" offers N
qualifying connections to :class:`ConnectedSockets` with the default cap and policy, so
the port holds min(N, cap) sockets.

``goodput``: ``quicflow perf server --connection-sockets 0`` vs the default, and
``quicflow perf client --connections N --download TOTAL`` (TOTAL split evenly).

``memory``: N idle connections held open by one client process against a server
process, with every connection given a socket vs none: the server's RSS, the kernel's
slab memory (/proc/slabinfo, both processes: the client holds one socket per connection
in both cases, so the difference of the two rows is what a connected socket costs), the
UDP memory charged to queued datagrams (/proc/net/sockstat) and sockets per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from quicflow.datapath.connected import (  # noqa: E402
    DEFAULT_CONNECTION_SOCKETS,
    ConnectedSockets,
    bind_connection_socket,
    connect_socket,
)
from quicflow.datapath.socket import UdpTransport  # noqa: E402

QUICFLOW = str(Path(sys.executable).parent / "quicflow")
PAYLOAD = b"\x40" + bytes(1199)


# ------------------------------------------------------------------------------ lookup


@dataclass
class _Counters:
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass(eq=False)
class _FakeConnection:
    """A confirmed, validated server connection (what the policy reads)."""

    peer_address: tuple[str, int]
    is_client: bool = False
    terminated: bool = False
    handshake_confirmed: bool = True
    address_validated: bool = True
    path_challenge: bytes = b""
    now_created: float = 0.0
    counters: _Counters = field(default_factory=lambda: _Counters(1 << 20, 0))


def _time_sends(sender: socket.socket, dest: Any, drain: socket.socket, count: int) -> float:
    """µs per sendto of PAYLOAD: blocks of 100 sends (drained after each, so nothing
    overflows), the 10th percentile of the blocks (the machine is shared: a block that a
    context switch hit is not the kernel's lookup cost)."""
    blocks = []
    for _ in range(max(1, count // 100)):
        t0 = time.perf_counter()
        for _ in range(100):
            sender.sendto(PAYLOAD, dest)
        blocks.append((time.perf_counter() - t0) / 100 * 1e6)
        try:
            while True:
                drain.recv(2048)
        except BlockingIOError:
            pass
    blocks.sort()
    return blocks[len(blocks) // 10]


def _lookup_row(n: int, mode: str, count: int) -> tuple[int, float, float]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", 0))
    listener.setblocking(False)
    dest = listener.getsockname()
    unmatched = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    unmatched.bind(("127.0.0.1", 0))
    matched = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    matched.bind(("127.0.0.1", 0))
    own: list[socket.socket] = []
    sockets: ConnectedSockets | None = None
    first = matched.getsockname()
    if mode == "raw":
        for i in range(n):
            s = bind_connection_socket(listener, buffer_bytes=1 << 18)
            connect_socket(s, first if i == 0 else ("127.0.0.2", 1024 + i))
            s.setblocking(False)
            own.append(s)
        target = own[0] if own else listener
    else:
        sockets = ConnectedSockets(UdpTransport(listener), DEFAULT_CONNECTION_SOCKETS)
        for i in range(n):
            peer = first if i == 0 else ("127.0.0.2", 1024 + i)
            sockets.route(_FakeConnection(peer), 1.0)  # type: ignore[arg-type]
        held = [t.socket for _, t in sockets.items()]
        target = held[0] if held else listener
        n = len(held)
    cost_unmatched = _time_sends(unmatched, dest, listener, count)
    cost_matched = _time_sends(matched, dest, target, count) if n else float("nan")
    for s in (unmatched, matched, *own):
        s.close()
    if sockets is not None:
        sockets.close_all()
    listener.close()
    return n, cost_unmatched, cost_matched


def cmd_lookup(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.counts.split(",")]
    print("| connections | mode | sockets on the port | unmatched datagram µs | matched µs |")
    print("|---|---|---|---|---|")
    for n in counts:
        for mode in ("raw", "quicflow"):
            held, unmatched, matched = _lookup_row(n, mode, args.datagrams)
            m = f"{matched:.2f}" if matched == matched else "-"
            print(f"| {n} | {mode} | {held} | {unmatched:.2f} | {m} |", flush=True)


# ----------------------------------------------------------------------------- goodput


def _start_server(extra: list[str]) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [QUICFLOW, "perf", "server", "--host", "127.0.0.1", "--port", "0", "--json", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    port = cafile = ""
    while not port:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("perf server exited")
        if line.startswith("self-signed certificate written to "):
            cafile = line.split()[4]
        if line.startswith("listening on "):
            port = line.split()[2].rsplit(":", 1)[1]
    return proc, port, cafile


def _stop_server(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _goodput_once(n: int, cap: int, total: str) -> tuple[float, int]:
    proc, port, cafile = _start_server(["--connection-sockets", str(cap)])
    try:
        r = subprocess.run(
            [QUICFLOW, "perf", "client", "--host", "127.0.0.1", "--port", port,
             "--cafile", cafile, "--connections", str(n), "--download", total, "--json"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        stats = _stop_server(proc)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return json.loads(r.stdout)["goodput_bytes_per_s"] / 1e6, int(stats["connected_sockets"])


def cmd_goodput(args: argparse.Namespace) -> None:
    """Runs alternate between the two settings, so both see the same machine load."""
    caps = (0, DEFAULT_CONNECTION_SOCKETS)
    print("| connections | connection sockets | goodput MB/s (median) | runs | held |")
    print("|---|---|---|---|---|")
    for n in [int(x) for x in args.connections.split(",")]:
        rates: dict[int, list[float]] = {cap: [] for cap in caps}
        held: dict[int, int] = {}
        for _ in range(args.runs):
            for cap in caps:
                rate, held[cap] = _goodput_once(n, cap, args.total)
                rates[cap].append(rate)
        for cap in caps:
            r = sorted(rates[cap])
            runs = ", ".join(f"{x:.0f}" for x in rates[cap])
            print(f"| {n} | {cap} | {r[len(r) // 2]:.0f} | {runs} | {held[cap]} |", flush=True)


# ------------------------------------------------------------------------------ memory


def _udp_pages() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("UDP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


def _slab_bytes() -> int:
    """Bytes of every slab cache's active objects (root: /proc/slabinfo)."""
    total = 0
    with open("/proc/slabinfo") as f:
        for line in f.readlines()[2:]:
            parts = line.split()
            total += int(parts[1]) * int(parts[3])
    return total


def _sockets_used() -> int:
    with open("/proc/net/sockstat") as f:
        return int(f.readline().split()[2])


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


_SERVER = """
import asyncio, sys
sys.path.insert(0, {src!r})
import quicflow
from quicflow.datapath.connected import SocketPolicy
from tests.support.transfer import serve_stream, server_configuration
async def main():
    cfg = server_configuration(idle_timeout=600.0)
    server = await quicflow.serve(serve_stream, "127.0.0.1", 0, configuration=cfg,
        connection_sockets={cap}, socket_policy=SocketPolicy(min_bytes=0, min_age=0.0))
    print(server.address[1], flush=True)
    while True:
        await asyncio.sleep(0.5)
        sockets = server.runner.sockets
        print(len(server.runner.faces), len(sockets) if sockets else 0, flush=True)
asyncio.run(main())
"""

_CLIENTS = """
import asyncio, sys
sys.path.insert(0, {src!r})
from contextlib import AsyncExitStack
import quicflow
from tests.support.transfer import client_configuration
async def main():
    async with AsyncExitStack() as stack:
        for i in range({n}):
            await stack.enter_async_context(quicflow.connect("127.0.0.1", {port},
                configuration=client_configuration(idle_timeout=600.0)))
        print("ready", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


def cmd_memory(args: argparse.Namespace) -> None:
    root = Path(__file__).resolve().parent.parent
    src = str(root / "src")
    print("| idle connections | connection sockets | server RSS KiB/conn | kernel slab bytes/conn"
          " | UDP queued bytes/conn | sockets/conn |")
    print("|---|---|---|---|---|---|")
    for cap in (0, args.connections):
        server = subprocess.Popen(
            [sys.executable, "-c", _SERVER.format(src=src, cap=cap)], cwd=root,
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert server.stdout is not None
        port = int(server.stdout.readline())
        time.sleep(1.0)
        rss0, pages0, used0 = _rss_kib(server.pid), _udp_pages(), _sockets_used()
        slab0 = _slab_bytes()
        clients = subprocess.Popen(
            [sys.executable, "-c", _CLIENTS.format(src=src, n=args.connections, port=port)],
            cwd=root, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert clients.stdout is not None
        assert clients.stdout.readline().strip() == "ready"
        while True:
            conns, held = (int(x) for x in server.stdout.readline().split())
            if conns >= args.connections and held >= min(cap, args.connections):
                break
        time.sleep(1.0)
        rss1, pages1, used1 = _rss_kib(server.pid), _udp_pages(), _sockets_used()
        slab1 = _slab_bytes()
        # the client process's sockets are counted in sockstat too: one per connection
        n = args.connections
        kernel = ((pages1 - pages0) * os.sysconf("SC_PAGE_SIZE")) / n
        print(f"| {n} | {cap} | {(rss1 - rss0) / n:.1f} | {(slab1 - slab0) / n:.0f} |"
              f" {kernel:.0f} | {(used1 - used0) / n:.2f} |", flush=True)
        clients.kill()
        server.kill()
        clients.wait()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("lookup")
    p.add_argument("--counts", default="0,64,256,1000,2000,5000")
    p.add_argument("--datagrams", type=int, default=20000)
    p.set_defaults(func=cmd_lookup)
    p = sub.add_parser("goodput")
    p.add_argument("--connections", default="1,64,256")
    p.add_argument("--total", default="128M")
    p.add_argument("--runs", type=int, default=3)
    p.set_defaults(func=cmd_goodput)
    p = sub.add_parser("memory")
    p.add_argument("--connections", type=int, default=1000)
    p.set_defaults(func=cmd_memory)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
