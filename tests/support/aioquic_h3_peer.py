"""aioquic's HTTP/3 (``aioquic.h3``) as the other end of HTTP/3 interop tests, in a process
of its own (started by ``AioquicProcess(..., module="tests.support.aioquic_h3_peer")``).

Server (the same routes as ``tests/test_h3_loopback.py``'s ``app``)::

    python -m tests.support.aioquic_h3_peer server --cert C --key K
        {"event": "ready", "port": P}
        {"event": "cancelled", "stream_id": 0, "error_code": 268}    (/slow was cancelled)
        {"event": "terminated", "error_code": ..., "reason": ...}

    GET /bytes/N  -> N bytes of ``body_of(N)`` with an x-sha256 header
    POST /sha     -> the body's SHA-256 (hex), trailer x-length
    GET /headers  -> echoes the x-* request headers
    GET /slow     -> 1000 bytes every 10 ms until the client cancels
    GET /goaway   -> 200, then GOAWAY naming the next request stream

Client: ``client --port P --url-path ... --scenario NAME`` runs one scenario against a
server and reports ``{"event": "result", ...}`` (hashes, statuses, codes).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    ProtocolNegotiated,
    QuicEvent,
    StopSendingReceived,
    StreamReset,
)

MB = 1024 * 1024


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def body_of(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Exchange:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.body = bytearray()
        self.ended = asyncio.Event()
        self.got_headers = asyncio.Event()
        self.reset_code: int | None = None


class H3Protocol(QuicConnectionProtocol):
    is_server = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3: H3Connection | None = None
        self.exchanges: dict[int, Exchange] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.goaway_received = False
        self.handshakes = 0  # HandshakeCompleted events seen (1: no new handshake)
        self.size = 0  # the download scenario's body size (--size)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshakes += 1
        if isinstance(event, ProtocolNegotiated):
            self.h3 = H3Connection(self._quic)
        elif isinstance(event, ConnectionTerminated):
            emit({"event": "terminated", "error_code": event.error_code,
                  "reason": event.reason_phrase})
            for ex in self.exchanges.values():
                ex.ended.set()
                ex.got_headers.set()
        if isinstance(event, (StreamReset, StopSendingReceived)):
            ex = self.exchanges.get(event.stream_id)
            if ex is not None and ex.reset_code is None:
                ex.reset_code = event.error_code
                if self.is_server:
                    emit({"event": "cancelled", "stream_id": event.stream_id,
                          "error_code": event.error_code})
                ex.ended.set()
                ex.got_headers.set()
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self.h3_event(h3_event)

    def h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            ex = self.exchanges.get(event.stream_id)
            if ex is None:
                ex = self.exchanges[event.stream_id] = Exchange()
                if self.is_server:
                    task = asyncio.ensure_future(self.serve_request(event.stream_id, ex))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            if ex.headers is None:
                ex.headers = list(event.headers)
                ex.got_headers.set()
            else:
                ex.trailers = list(event.headers)
            if event.stream_ended:
                ex.ended.set()
        elif isinstance(event, DataReceived):
            ex = self.exchanges.get(event.stream_id)
            if ex is not None:
                ex.body += event.data
                if event.stream_ended:
                    ex.ended.set()

    # ------------------------------------------------------------------ server

    def respond(self, sid: int, status: int, headers: list[tuple[bytes, bytes]],
                body: bytes, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        assert self.h3 is not None
        self.h3.send_headers(sid, [(b":status", str(status).encode())] + headers)
        self.h3.send_data(sid, body, end_stream=not trailers)
        if trailers:
            self.h3.send_headers(sid, trailers, end_stream=True)
        self.transmit()

    async def serve_request(self, sid: int, ex: Exchange) -> None:
        assert self.h3 is not None and ex.headers is not None
        fields = dict(ex.headers)
        path = fields.get(b":path", b"").decode()
        await ex.ended.wait()
        if ex.reset_code is not None:
            return
        if path.startswith("/bytes/"):
            data = body_of(int(path.rsplit("/", 1)[1]))
            self.respond(sid, 200, [(b"x-sha256", sha(data).encode())], data)
        elif path == "/sha":
            data = bytes(ex.body)
            self.respond(sid, 200, [], sha(data).encode(),
                         [(b"x-length", str(len(data)).encode())])
        elif path == "/headers":
            self.respond(sid, 200, [(n, v) for n, v in ex.headers if n.startswith(b"x-")],
                         b"ok")
        elif path == "/goaway":
            self.respond(sid, 200, [], b"bye")
            control = self.h3._local_control_stream_id
            assert control is not None
            payload = encode_uint_var(sid + 4)
            self._quic.send_stream_data(
                control, encode_uint_var(0x7) + encode_uint_var(len(payload)) + payload
            )
            self.transmit()
        elif path == "/slow":
            self.h3.send_headers(sid, [(b":status", b"200")])
            for _ in range(3000):  # 30 s at most
                if ex.reset_code is not None:
                    break
                try:
                    self.h3.send_data(sid, b"x" * 1000, end_stream=False)
                except Exception:  # the stream was reset under us
                    break
                self.transmit()
                await asyncio.sleep(0.01)
        else:
            self.respond(sid, 404, [], b"")

    # ------------------------------------------------------------------ client

    async def request(self, method: str, path: str, headers: list[tuple[bytes, bytes]],
                      body: bytes | None = None) -> tuple[int, Exchange]:
        assert self.h3 is not None
        sid = self._quic.get_next_available_stream_id()
        ex = self.exchanges[sid] = Exchange()
        self.h3.send_headers(sid, [(b":method", method.encode()), (b":scheme", b"https"),
                                   (b":authority", b"localhost"), (b":path", path.encode())]
                             + headers, end_stream=body is None)
        if body is not None:
            self.h3.send_data(sid, body, end_stream=True)
        self.transmit()
        return sid, ex


def status_of(ex: Exchange) -> int:
    return int(dict(ex.headers or []).get(b":status", b"0"))


async def scenario(proto: H3Protocol, name: str) -> dict[str, Any]:
    if name == "get_post_10mb":
        _, ex = await proto.request("GET", f"/bytes/{10 * MB}", [])
        await ex.ended.wait()
        upload = body_of(10 * MB, seed=7)
        _, ex2 = await proto.request("POST", "/sha", [], upload)
        await ex2.ended.wait()
        return {"get_status": status_of(ex), "get_sha": sha(bytes(ex.body)),
                "get_header_sha": dict(ex.headers or []).get(b"x-sha256", b"").decode(),
                "post_status": status_of(ex2), "post_answer": ex2.body.decode(),
                "post_sha": sha(upload),
                "trailers": [[n.decode(), v.decode()] for n, v in ex2.trailers or []]}
    if name == "concurrent_100":
        exchanges = [await proto.request("GET", f"/bytes/{1000 + 997 * i}", [])
                     for i in range(100)]
        await asyncio.gather(*(ex.ended.wait() for _, ex in exchanges))
        return {"hashes": [sha(bytes(ex.body)) for _, ex in exchanges],
                "statuses": [status_of(ex) for _, ex in exchanges]}
    if name == "qpack":
        custom = [(f"x-custom-{i}".encode(), f"value-{i}-".encode() + b"v" * 40)
                  for i in range(20)]
        echoed = []
        for _ in range(10):
            _, ex = await proto.request("GET", "/headers", custom)
            await ex.ended.wait()
            echoed.append([[n.decode(), v.decode()] for n, v in ex.headers or []
                           if n != b":status"])
        assert proto.h3 is not None
        enc = proto.h3._encoder  # the bytes aioquic's encoder put on its encoder stream
        return {"echoed": echoed, "sent": [[n.decode(), v.decode()] for n, v in custom],
                "encoder_type": type(enc).__name__}
    if name == "cancel":
        sid, ex = await proto.request("GET", "/slow", [])
        while len(ex.body) < 1000:
            await asyncio.sleep(0.005)
        proto._quic.reset_stream(sid, 0x10C)
        proto._quic.stop_stream(sid, 0x10C)
        proto.transmit()
        await asyncio.sleep(0.2)
        _, ex2 = await proto.request("GET", "/bytes/100", [])
        await ex2.ended.wait()
        return {"after_cancel_sha": sha(bytes(ex2.body))}
    if name == "goaway":
        _, first = await proto.request("GET", f"/bytes/{2 * MB}", [])
        await first.got_headers.wait()
        # the server sends GOAWAY now (the test triggers it); wait, then try once more
        await asyncio.sleep(0.3)
        await first.ended.wait()
        _, late = await proto.request("GET", "/bytes/10", [])
        await late.ended.wait()
        return {"first_sha": sha(bytes(first.body)), "late_reset": late.reset_code,
                "late_status": status_of(late)}
    if name == "download":  # one large body; "progress" once 1 MB arrived (takeover tests)
        _, ex = await proto.request("GET", f"/bytes/{proto.size}", [])
        while len(ex.body) < MB and not ex.ended.is_set():
            await asyncio.sleep(0.01)
        emit({"event": "progress", "bytes": len(ex.body)})
        await ex.ended.wait()
        _, ex2 = await proto.request("GET", "/bytes/1000", [])
        await ex2.ended.wait()
        return {"status": status_of(ex), "sha": sha(bytes(ex.body)), "bytes": len(ex.body),
                "reset": ex.reset_code, "second_status": status_of(ex2),
                "second_sha": sha(bytes(ex2.body)), "handshakes": proto.handshakes}
    if name == "asgi":  # tests/support/starlette_app.py
        _, ex = await proto.request("GET", f"/bytes/{3 * MB}", [])
        await ex.ended.wait()
        upload = body_of(2 * MB, seed=3)
        _, ex2 = await proto.request("POST", "/sha", [(b"content-type", b"application/x")],
                                     upload)
        await ex2.ended.wait()
        _, ex3 = await proto.request("GET", "/state", [])
        await ex3.ended.wait()
        return {"get_status": status_of(ex), "get_sha": sha(bytes(ex.body)),
                "get_header_sha": dict(ex.headers or []).get(b"x-sha256", b"").decode(),
                "post_status": status_of(ex2), "post_answer": json.loads(ex2.body),
                "post_sha": sha(upload), "state": json.loads(ex3.body)}
    raise ValueError(name)


async def run_server(args: argparse.Namespace) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN,
                               max_stream_data=4 * MB, max_data=32 * MB)
    config.load_cert_chain(args.cert, args.key)

    def factory(*a: Any, **kw: Any) -> H3Protocol:
        proto = H3Protocol(*a, **kw)
        proto.is_server = True
        return proto

    server = await serve("127.0.0.1", args.port, configuration=config,
                         create_protocol=factory)
    emit({"event": "ready", "port": server._transport.get_extra_info("sockname")[1]})
    await asyncio.Event().wait()


async def run_client(args: argparse.Namespace) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                               max_stream_data=4 * MB, max_data=32 * MB,
                               server_name="localhost")
    if args.cafile:
        config.load_verify_locations(args.cafile)
    else:
        config.verify_mode = ssl.CERT_NONE
    async with connect("127.0.0.1", args.port, configuration=config,
                       create_protocol=H3Protocol) as proto:
        assert isinstance(proto, H3Protocol)
        proto.size = args.size
        try:
            result = await asyncio.wait_for(scenario(proto, args.scenario), 60)
            emit({"event": "result", **result})
        except Exception as exc:  # reported to the test
            emit({"event": "error", "error": repr(exc)})
        proto.close(error_code=0x100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--cafile")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scenario", default="get_post_10mb")
    parser.add_argument("--size", type=int, default=10 * MB)
    args = parser.parse_args()
    runner: Callable[[argparse.Namespace], Any] = (
        run_server if args.role == "server" else run_client
    )
    asyncio.run(runner(args))


if __name__ == "__main__":
    main()
