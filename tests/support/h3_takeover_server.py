"""An HTTP/3 server process (quicflow's h3 asyncio face) for takeover tests.

    python -m tests.support.h3_takeover_server --cert C --key K --handoff PATH \
        [--stall-after BYTES]
    python -m tests.support.h3_takeover_server --cert C --key K --takeover PATH --wait-go

``GET /bytes/N`` answers N bytes of ``body_slice`` (the 64 KiB block that
``tests/support/aioquic_h3_peer.body_of`` repeats). With ``--stall-after`` the handler
stops writing after that many body bytes and waits (so a takeover lands mid-response);
the successor continues each response in progress from ``stream.body_sent``
(``capture_request``/``resume_request``), up to its own ``--stall-after`` if given (so
a third process can take over from it mid-response too). ``POST /crc`` answers "N
CRC32" (decimal bytes, 8 hex digits) of the request body; with ``--stall-after`` it
stops reading after that many bytes, and the successor reads on from its captured count
and CRC. ``--workers N`` serves from N worker processes (a successor takes over with as
many).

stderr: ``listening on H:P``; ``stalled after B of SIZE bytes in process PID
(key-update: K, path-change: P)`` or ``upload stalled after N bytes in process PID
(...)`` (once per stalled request); ``handed off N connection(s)``. stdout: one JSON line on
exit (``handed_off_connections`` after a handoff, else the endpoint's counters after
SIGTERM). A successor offers handoff at PATH again.

What the client does around the switch (EVENT: ``key-update``, a key update it started,
RFC 9001 §6; ``path-change``, a move to a new address it made, RFC 9000 §9): with
``--before-stall EVENT`` the old server trickles 1 KiB pieces at the stall until the
connection has seen one, then says it stalled; with ``--after-resume EVENT`` the
successor trickles until it sees one the old process had not seen (stderr: ``EVENT after
the switch at ...``), then sends the rest; an upload is read 16 KiB per 10 ms meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import sys
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from quicflow.h3 import aio as h3
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection

BLOCK = hashlib.sha256(b"0").digest() * 2048  # 64 KiB
CHUNK = 256 * 1024


def body_slice(offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of the body (BLOCK repeated)."""
    start = offset % len(BLOCK)
    reps = (start + length) // len(BLOCK) + 1
    return (BLOCK * reps)[start:start + length]


def body_sha256(size: int) -> str:
    h = hashlib.sha256()
    full, rest = divmod(size, len(BLOCK))
    for _ in range(full):
        h.update(BLOCK)
    h.update(BLOCK[:rest])
    return h.hexdigest()


async def send_body(stream: h3.H3Stream, size: int, stall_after: int | None,
                    stalled: Callable[[], Awaitable[None]] | None = None) -> None:
    while stream.body_sent < size:
        if stall_after is not None and stream.body_sent >= stall_after:
            if stalled is not None:
                await stalled()
            await asyncio.Event().wait()  # until the handoff stops this handler
        n = min(CHUNK, size - stream.body_sent)
        if stall_after is not None:
            n = min(n, max(stall_after - stream.body_sent, 1))
        await stream.write(body_slice(stream.body_sent, n))
    await stream.end()


async def trickle_until(stream: h3.H3Stream, size: int, done: Callable[[], bool]) -> None:
    """Write the body on in 1 KiB pieces 10 ms apart until ``done()`` (or the end): each
    piece makes the client send again (an ACK), e.g. its first packet under new keys."""
    while not done() and stream.body_sent < size - 1:
        await stream.write(body_slice(stream.body_sent, min(1024, size - 1 - stream.body_sent)))
        await asyncio.sleep(0.01)


#: what the client can do around a switch, and how a connection counts it
EVENTS: dict[str, Callable[[Connection], int]] = {
    "key-update": lambda conn: conn.key_updates_received,
    "path-change": lambda conn: conn.path_changes,
}


def _counts(conn: Connection) -> str:
    return ", ".join(f"{name}: {count(conn)}" for name, count in EVENTS.items())


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--handoff")
    parser.add_argument("--takeover")
    parser.add_argument("--wait-go", action="store_true")
    parser.add_argument("--stall-after", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--before-stall", choices=sorted(EVENTS))
    parser.add_argument("--after-resume", choices=sorted(EVENTS))
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    if args.wait_go:
        await loop.run_in_executor(None, sys.stdin.readline)

    def stalling(stream: h3.H3Stream, size: int) -> Callable[[], Awaitable[None]]:
        conn = stream.face.conn

        async def stalled() -> None:
            if args.before_stall:
                count = EVENTS[args.before_stall]
                await trickle_until(stream, size, lambda: count(conn) > 0)
            print(f"stalled after {stream.body_sent} of {size} bytes in process "
                  f"{os.getpid()} ({_counts(conn)})", file=sys.stderr, flush=True)

        return stalled

    uploads: dict[h3.H3Stream, list[int]] = {}  # POST /crc: [bytes read, CRC-32 so far]

    async def receive_upload(stream: h3.H3Stream, received: int, crc: int,
                             event: tuple[str, int] | None = None) -> None:
        """Read the body on from ``received`` bytes (CRC ``crc``); with ``event`` (name,
        count before), read 16 KiB per 10 ms until the connection counts more of it."""
        conn = stream.face.conn
        progress = uploads[stream] = [received, crc]
        stalled = args.stall_after is None or received >= args.stall_after
        while chunk := await stream.read(16 * 1024 if event else 64 * 1024):
            progress[0] += len(chunk)
            progress[1] = zlib.crc32(chunk, progress[1])
            if not stalled and progress[0] >= args.stall_after:
                print(f"upload stalled after {progress[0]} bytes in process {os.getpid()} "
                      f"({_counts(conn)})", file=sys.stderr, flush=True)
                await asyncio.Event().wait()  # not reading: flow control holds the rest
            if event is not None:
                if EVENTS[event[0]](conn) <= event[1]:
                    await asyncio.sleep(0.01)
                    continue
                print(f"{event[0]} after the switch at {progress[0]} bytes received "
                      f"({_counts(conn)})", file=sys.stderr, flush=True)
                event = None
        del uploads[stream]
        await stream.respond(200, [], f"{progress[0]} {progress[1]:08x}".encode())

    async def handler(stream: h3.H3Stream) -> None:
        path = stream.path
        if stream.method == "POST" and path == "/crc":
            await receive_upload(stream, 0, 0)
            return
        await stream.read()
        if not path.startswith("/bytes/"):
            await stream.respond(404)
            return
        size = int(path.rsplit("/", 1)[1])
        stream.send_headers([(":status", "200"), ("content-length", str(size))])
        await send_body(stream, size, args.stall_after, stalling(stream, size))

    def capture_request(stream: h3.H3Stream) -> Any:
        conn = stream.face.conn
        counts = {name: count(conn) for name, count in EVENTS.items()}
        if stream in uploads:
            return {"upload": uploads[stream], "counts": counts}
        if not stream.path.startswith("/bytes/") or not stream._headers_sent:
            return None
        return {"size": int(stream.path.rsplit("/", 1)[1]), "counts": counts}

    async def resume_request(stream: h3.H3Stream, state: Any) -> None:
        if "upload" in state:
            event = None
            if args.after_resume:
                event = (args.after_resume, int(state["counts"][args.after_resume]))
            received, crc = (int(v) for v in state["upload"])
            await receive_upload(stream, received, crc, event)
            return
        size, conn = int(state["size"]), stream.face.conn
        if args.after_resume:
            count, before = EVENTS[args.after_resume], int(state["counts"][args.after_resume])
            await trickle_until(stream, size, lambda: count(conn) > before)
            print(f"{args.after_resume} after the switch at {stream.body_sent} of {size} "
                  f"bytes ({_counts(conn)})", file=sys.stderr, flush=True)
        await send_body(stream, size, args.stall_after, stalling(stream, size))

    config = Configuration(alpn_protocols=["h3"])
    config.load_cert_chain(args.cert, args.key)
    server = await h3.serve(
        handler, "127.0.0.1", args.port, configuration=config, migratable=True,
        capture_request=capture_request, resume_request=resume_request,
        takeover=args.takeover, **({"workers": args.workers} if args.workers else {}),
    )  # fmt: skip
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    path = args.handoff or args.takeover
    stopped = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stopped.done() or stopped.set_result(None))
    handed = server.handoff(path) if path else loop.create_future()
    await asyncio.wait([handed, stopped], return_when=asyncio.FIRST_COMPLETED)
    if handed.done():
        count = handed.result()
        print(f"handed off {count} connection(s)", file=sys.stderr, flush=True)
        print(json.dumps({"handed_off_connections": count}), flush=True)
        return 0
    # the counters once the server has stopped: a worker group's are its workers' final
    # reports (stats() before that adds up their periodic ones, every 0.25 s: none yet
    # from a successor stopped that soon after it took over, KeyError in CI once)
    server.close()
    await server.server.wait_closed()
    print(json.dumps({"endpoint": server.stats()["endpoint"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
