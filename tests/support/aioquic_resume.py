"""aioquic (or qh3) as the other end of the resumption and 0-RTT tests, in a process of
its own, speaking ``tests/support/echo_proto.py``; events are JSON lines on stdout::

    python -m tests.support.aioquic_resume server --cert C --key K [--library qh3]
        {"event": "ready", "port": P}
        {"event": "resumption", "session_resumed": b, "early_data_accepted": b}

    python -m tests.support.aioquic_resume client --port P [--upload U] [--download D]
        [--no-early-data] [--library qh3]
        {"event": "ticket", "max_early_data": 4294967295}        (first connection)
        {"event": "resumption", "session_resumed": b, "early_data_accepted": b}  (second)
        {"event": "result", "ok": true, ...}

    python -m tests.support.aioquic_resume h3client --port P --download N
        {"event": "resumption", ...}   {"event": "result", "status": 200, "sha256": ...}

The server keeps the tickets it issues in memory (``session_ticket_handler`` and
``session_ticket_fetcher``); the client's second connection offers the ticket of the
first (``QuicConfiguration.session_ticket``) and, unless ``--no-early-data``, writes its
request and upload before the handshake completes, so they go in 0-RTT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from tests.support import echo_proto  # noqa: E402
from tests.support.aioquic_peer import (  # noqa: E402
    _configuration,
    _lib,
    _protocol_class,
    emit,
    peer_parser,
    serve,
)


def _protocol(args: argparse.Namespace) -> Any:
    base = _protocol_class(args)  # (its qh3 drain() fix included)
    events = _lib(args, "quic.events")

    class Reporting(base):  # type: ignore[misc,valid-type]
        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.HandshakeCompleted):
                emit({"event": "resumption", "session_resumed": event.session_resumed,
                      "early_data_accepted": event.early_data_accepted})
            super().quic_event_received(event)

    return Reporting


async def run_server(args: argparse.Namespace) -> None:
    tickets: dict[bytes, Any] = {}

    def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asyncio.ensure_future(echo_proto.serve_stream(reader, writer))

    server = await _lib(args, "asyncio").serve(
        args.host, args.port, configuration=_configuration(args, False),
        stream_handler=handler, create_protocol=_protocol(args),
        session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t),
        session_ticket_fetcher=tickets.get,
    )
    emit({"event": "ready", "port": server._transport.get_extra_info("sockname")[1]})
    try:
        await asyncio.Event().wait()
    finally:
        server.close()


async def run_client(args: argparse.Namespace) -> int:
    connect = _lib(args, "asyncio").connect
    got: list[Any] = []
    try:
        async with connect(args.host, args.port, configuration=_configuration(args, True),
                           create_protocol=_protocol_class(args),
                           session_ticket_handler=got.append) as client:
            for _ in range(300):
                if got:
                    break
                await asyncio.sleep(0.01)
            client.close()
            await client.wait_closed()
        if not got:
            emit({"event": "error", "error": "no session ticket"})
            return 1
        emit({"event": "ticket", "max_early_data": got[-1].max_early_data_size})
        cfg = _configuration(args, True)
        cfg.session_ticket = got[-1]
        async with connect(args.host, args.port, configuration=cfg,
                           create_protocol=_protocol(args),
                           wait_connected=args.no_early_data) as client:
            reader, writer = await client.create_stream()
            result = await asyncio.wait_for(echo_proto.client_exchange(
                reader, writer, upload=echo_proto.payload(77, args.upload),
                download=args.download, seed=7), args.timeout)
            emit({"event": "result", **result})
            client.close()
            await client.wait_closed()
    except Exception as exc:
        emit({"event": "error", "error": repr(exc), "type": type(exc).__name__})
        return 1
    return 0


async def run_h3_client(args: argparse.Namespace) -> int:
    """aioquic's HTTP/3 client: a first connection for a ticket, then a GET of
    ``/bytes/N`` (N = --download) sent in 0-RTT on the resumed connection."""
    import hashlib

    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.quic.events import ProtocolNegotiated

    from tests.support.aioquic_h3_peer import H3Protocol, status_of

    class EarlyH3(H3Protocol):
        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, ProtocolNegotiated) and self.h3 is not None:
                return  # keep the HTTP/3 connection made for the 0-RTT request
            super().quic_event_received(event)

    connect = _lib(args, "asyncio").connect
    got: list[Any] = []

    def config() -> Any:
        cfg = _configuration(args, True)
        cfg.alpn_protocols = H3_ALPN
        return cfg

    try:
        async with connect(args.host, args.port, configuration=config(),
                           create_protocol=H3Protocol,
                           session_ticket_handler=got.append) as proto:
            for _ in range(300):
                if got:
                    break
                await asyncio.sleep(0.01)
            proto.close(error_code=0x100)
        if not got:
            emit({"event": "error", "error": "no session ticket"})
            return 1
        cfg = config()
        cfg.session_ticket = got[-1]
        async with connect(args.host, args.port, configuration=cfg,
                           create_protocol=EarlyH3,
                           wait_connected=args.no_early_data) as proto:
            if proto.h3 is None:
                proto.h3 = H3Connection(proto._quic)  # before the handshake: 0-RTT
            _, ex = await proto.request("GET", f"/bytes/{args.download}", [])
            await asyncio.wait_for(ex.ended.wait(), args.timeout)
            emit({"event": "resumption", "session_resumed": proto._quic.tls.session_resumed,
                  "early_data_accepted": proto._quic.tls.early_data_accepted})
            emit({"event": "result", "status": status_of(ex),
                  "sha256": hashlib.sha256(bytes(ex.body)).hexdigest(), "length": len(ex.body),
                  "header_sha256": dict(ex.headers or []).get(b"x-sha256", b"").decode()})
            proto.close(error_code=0x100)
    except Exception as exc:
        emit({"event": "error", "error": repr(exc), "type": type(exc).__name__})
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = peer_parser(["server", "client", "h3client"])
    p.add_argument("--no-early-data", action="store_true")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--idle-timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    # what aioquic_peer's _configuration reads and this peer does not set
    args.chacha = False
    args.versions = None
    args.original_version = None
    args.datagrams = False
    args.client_cert = None
    if args.role == "server":
        return serve(run_server, args)
    if args.role == "h3client":
        return asyncio.run(run_h3_client(args))
    return asyncio.run(run_client(args))


if __name__ == "__main__":
    sys.exit(main())
