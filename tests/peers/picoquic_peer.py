"""picoquic (through PyPI ``aiopquic``, Python >= 3.12) as an hq-interop peer.

Run by ``tests/support/picoquic.py`` with the interpreter of a Python 3.12 venv kept in
the peer cache (not the project's venv): it imports neither quicflow nor the tests.
JSON lines on stdout, the protocol of ``tests/support/hq_peers.py``::

    server --cert C --key K --root DIR --port P [--retry]
        {"event": "ready", "port": P}
    client --connect HOST:PORT --ca F --server-name N --out DIR [--sequential]
           [--cipher-suite ID] [--pause-at N1[,N2...] --resume-file F] /path...
        {"event": "paused", "path": P, "bytes": N, "k": K}     (with --pause-at)
        {"event": "result", "files": [{"path", "bytes", "sha256"}]}

``--pause-at N1,N2...``: once the first file to get there has Nk bytes (or a little
more: data comes in chunks), the client stops taking events (it blocks its event loop)
until the file ``--resume-file`` holds at least k bytes; picoquic's own thread goes on
(ACKs), but it stops extending the flow-control window, so the server is held: a test
replaces the server process meanwhile.

Both report ``handshake`` (``alpn``) and ``closed`` (``code``: the CONNECTION_CLOSE code
picoquic reports, ``how``: "application").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import time
from typing import Any

from aiopquic.asyncio import connect, serve
from aiopquic.asyncio.protocol import QuicConnectionProtocol
from aiopquic.quic.configuration import QuicConfiguration
from aiopquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived

ALPN = "hq-interop"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


class Peer(QuicConnectionProtocol):
    root = ""
    pause_at: list[int] = []
    resume_file = ""
    paused = False

    def __init__(self, quic: Any, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler=stream_handler)
        self.buffers: dict[int, bytearray] = {}
        self.done: dict[int, asyncio.Future[bytes]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.paths: dict[int, str] = {}
        self.pauses: dict[int, int] = {}  # stream -> pauses done

    def quic_event_received(self, event: Any) -> None:
        if isinstance(event, HandshakeCompleted):
            emit({"event": "handshake", "alpn": event.alpn_protocol})
        elif isinstance(event, StreamDataReceived):
            buf = self.buffers.setdefault(event.stream_id, bytearray())
            buf += bytes(event.data)
            k = self.pauses.get(event.stream_id, 0)
            if k < len(self.pause_at) and len(buf) >= self.pause_at[k]:
                if k > 0 or not Peer.paused:  # the first file to reach N1 pauses
                    Peer.paused = True
                    self.pauses[event.stream_id] = k + 1
                    path = self.paths.get(event.stream_id, "")
                    emit({"event": "paused", "path": path, "bytes": len(buf), "k": k + 1})
                    while _size(self.resume_file) < k + 1:
                        time.sleep(0.005)  # blocks the loop on purpose: nothing is consumed
            if event.end_stream:
                data = bytes(self.buffers.pop(event.stream_id))
                if self.root:
                    task = asyncio.ensure_future(self.answer(event.stream_id, data))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                else:
                    fut = self.done.get(event.stream_id)
                    if fut is not None and not fut.done():
                        fut.set_result(data)
        elif isinstance(event, ConnectionTerminated):
            emit({"event": "closed", "how": "application", "code": event.error_code})
            for fut in self.done.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"closed ({event.error_code})"))

    async def answer(self, stream_id: int, request: bytes) -> None:
        path = request.decode().strip().removeprefix("GET ").lstrip("/")
        with open(os.path.join(self.root, os.path.basename(path)), "rb") as f:
            data = f.read()
        step = 1 << 20
        for i in range(0, max(len(data), 1), step):
            end = i + step >= len(data)
            await self._quic.send_stream_data_drained(stream_id, data[i:i + step], end)
        emit({"event": "request", "path": "/" + path, "bytes": len(data)})

    async def fetch(self, path: str, out: str) -> dict[str, Any]:
        sid = self._quic.get_next_available_stream_id()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.done[sid] = fut
        self.paths[sid] = path
        self._quic.send_stream_data(sid, f"GET {path}\r\n".encode(), end_stream=True)
        data = await fut
        with open(os.path.join(out, os.path.basename(path)), "wb") as f:
            f.write(data)
        return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def bound(port: int) -> bool:
    with open("/proc/net/udp") as f:
        rows = f.readlines()[1:]
    return any(int(row.split()[1].rsplit(":", 1)[1], 16) == port for row in rows if row.strip())


async def run_server(args: argparse.Namespace) -> None:
    cfg = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], ip_family=socket.AF_INET)
    cfg.load_cert_chain(args.cert, args.key)
    if args.key_update_interval:
        cfg.key_update_interval = args.key_update_interval
    Peer.root = os.path.realpath(args.root)
    await serve("127.0.0.1", args.port, configuration=cfg, create_protocol=Peer,
                retry=args.retry)
    for _ in range(500):  # picoquic binds from its own thread: wait until it has
        if bound(args.port):
            break
        await asyncio.sleep(0.01)
    emit({"event": "ready", "port": args.port})
    await asyncio.Future()


async def run_client(args: argparse.Namespace) -> None:
    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN],
                            server_name=args.server_name, ip_family=socket.AF_INET)
    cfg.load_verify_locations(cafile=args.ca)
    if args.cipher_suite:
        cfg.cipher_suite = int(args.cipher_suite, 0)
    if args.key_update_interval:
        cfg.key_update_interval = args.key_update_interval
    host, port = args.connect.rsplit(":", 1)
    Peer.pause_at, Peer.resume_file = args.pause_at, args.resume_file
    async with connect(host, int(port), configuration=cfg, create_protocol=Peer) as peer:
        assert isinstance(peer, Peer)
        if args.sequential:
            files = [await peer.fetch(p, args.out) for p in args.paths]
        else:
            files = list(await asyncio.gather(*(peer.fetch(p, args.out) for p in args.paths)))
        emit({"event": "result", "files": files})
        await peer.aclose(0)
    await asyncio.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--retry", action="store_true")
    s.add_argument("--key-update-interval", type=int, default=0,
                   help="start a key update every N packets picoquic sends (0: never)")
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--ca", required=True)
    c.add_argument("--server-name", default="localhost")
    c.add_argument("--out", required=True)
    c.add_argument("--sequential", action="store_true")
    c.add_argument("--cipher-suite", default="")
    c.add_argument("--key-update-interval", type=int, default=0,
                   help="start a key update every N packets picoquic sends (0: never)")
    c.add_argument("--pause-at", type=lambda t: [int(v) for v in t.split(",")], default=[])
    c.add_argument("--resume-file", default="")
    c.add_argument("paths", nargs="+")
    args = parser.parse_args()
    asyncio.run(run_server(args) if args.role == "server" else run_client(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
