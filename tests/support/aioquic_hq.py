"""aioquic as an hq-interop (HTTP/0.9 over QUIC) peer, in a process of its own.

aioquic ships its hq-interop client and server only as examples, not as a library, so
this is a few lines of aioquic's asyncio API: one bidirectional stream per file,
``GET /path\\r\\n`` + FIN, the file's bytes + FIN. Events are JSON lines on stdout::

    python -m tests.support.aioquic_hq server --cert C --key K --root DIR
        {"event": "ready", "port": N}
    python -m tests.support.aioquic_hq client --port P --cafile F --out DIR /a /b
        {"event": "result", "ok": true, "files": [{"path", "bytes", "sha256"}]}

``AioquicHqProcess`` runs it from a test (the JSON-event reader of ``aioquic_peer``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from typing import Any, Self

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from tests.support.aioquic_peer import ROOT, AioquicProcess  # noqa: E402

ALPN = "hq-interop"


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def run_server(args: argparse.Namespace) -> None:
    from aioquic.asyncio import serve
    from aioquic.quic.configuration import QuicConfiguration

    cfg = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    cfg.load_cert_chain(args.cert, args.key)
    root = os.path.realpath(args.root)

    def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer() -> None:
            request = await reader.read()
            path = request.decode().strip().removeprefix("GET ")
            with open(os.path.join(root, path.lstrip("/")), "rb") as f:
                data = f.read()
            writer.write(data)
            writer.write_eof()
            emit({"event": "request", "path": path, "bytes": len(data)})

        asyncio.ensure_future(answer())

    server = await serve("127.0.0.1", args.port, configuration=cfg, stream_handler=handler)
    emit({"event": "ready", "port": server._transport.get_extra_info("sockname")[1]})
    await asyncio.Future()


async def run_client(args: argparse.Namespace) -> None:
    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration

    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost")
    cfg.load_verify_locations(cafile=args.cafile)

    async with connect("127.0.0.1", args.port, configuration=cfg) as client:

        async def fetch(path: str) -> dict[str, Any]:
            reader, writer = await client.create_stream()
            writer.write(f"GET {path}\r\n".encode())
            writer.write_eof()
            data = await reader.read()
            with open(os.path.join(args.out, os.path.basename(path)), "wb") as f:
                f.write(data)
            return {"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

        files = await asyncio.gather(*(fetch(p) for p in args.paths))
        emit({"event": "result", "ok": True, "files": files})
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--root", required=True)
    s.add_argument("--port", type=int, default=0)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--cafile", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("paths", nargs="+")
    args = parser.parse_args()
    asyncio.run(run_server(args) if args.role == "server" else run_client(args))
    return 0


class AioquicHqProcess(AioquicProcess):
    """This module run as a process: ``async with AioquicHqProcess("server", ...) as p``."""

    async def start(self) -> Self:
        return await self._spawn(sys.executable, "-m", "tests.support.aioquic_hq", *self.args,
                                 cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
