"""``quicflow serve`` (an ASGI application over HTTP/3) and ``quicflow get`` (a small curl).

Exit codes of both: 0 success (``get``: a 2xx response), 1 failure with one line on
stderr saying why (``get``: also a non-2xx status), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from ..aio.handover import Handover
from ..aio.workers import WorkerGroupServer
from ..migration.handoff import HandoffError
from ..transport.config import Configuration
from .common import _describe_error, _fail, say, stop_event

PROGRESS_MIN = 1 << 20  # bodies above this get a progress line on stderr
PROGRESS_EVERY = 0.5  # seconds


def _describe(exc: BaseException) -> str:
    from ..aio.errors import StreamResetError
    from ..h3.errors import ERROR_NAMES

    if isinstance(exc, StreamResetError):
        name = ERROR_NAMES.get(exc.error_code, hex(exc.error_code))
        return f"the server reset the request ({name})"
    return _describe_error(exc)


def _int_in(text: str, low: int, high: int, what: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{name} must be {low}..{high}, got {value}")
    return value


def _port(text: str) -> int:
    return _int_in(text, 0, 65535, "a port number", "port")


def _workers(text: str) -> int:
    return _int_in(text, 1, 256, "an integer", "--workers")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name) or name.startswith(":"):
        raise argparse.ArgumentTypeError(f"expected 'name: value', got {text!r}")
    return name.lower(), value.strip()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


# ---------------------------------------------------------------------------- serve


async def _serve(args: argparse.Namespace) -> int:
    from ..apps.asgi import AppLoadError, load_app, serve_asgi

    if ":" not in args.app:
        return _fail(f"expected MODULE:APP, got {args.app!r}", 2)
    try:
        app = load_app(args.app)
    except AppLoadError as exc:
        return _fail(str(exc))
    config = Configuration(alpn_protocols=["h3"], idle_timeout=args.timeout)
    try:
        config.load_cert_chain(args.cert, args.key)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot load --cert/--key: {exc}")
    kwargs: dict[str, Any] = {}
    if args.workers is not None and args.workers > 1:
        kwargs["workers"] = args.workers
    handoff = args.handoff or args.takeover
    if handoff:
        kwargs.update(migratable=True, handoff_grace=args.grace, takeover=args.takeover,
                      on_handover=_announce_successor(args.grace))
    try:
        server = await serve_asgi(app, args.host, args.port, configuration=config,
                                  lifespan=args.lifespan, root_path=args.root_path, **kwargs)
    except HandoffError as exc:
        return _fail(f"cannot take over at {args.takeover}: {exc}")
    except OSError as exc:
        if args.takeover:
            return _fail(f"cannot take over at {args.takeover}: {exc}")
        return _fail(f"cannot listen on {args.host} port {args.port}: {exc}")
    except RuntimeError as exc:
        return _fail(f"application {args.app}: {exc}")
    host, port = server.address[0], server.address[1]
    shown = f"[{host}]" if ":" in str(host) else str(host)
    workers = f", {args.workers} workers" if kwargs.get("workers") else ""
    say(f"serving {args.app} on https://{shown}:{port} (HTTP/3{workers})")
    if args.takeover:
        inner = server.h3.server
        taken = (inner.restored_connections if isinstance(inner, WorkerGroupServer)
                 else len(inner.connections))
        say(f"took over {taken} connection(s) from {args.takeover}")
    if handoff:
        stop: asyncio.Future[Any] = asyncio.ensure_future(stop_event().wait())
        handed: asyncio.Future[Any] = server.handoff(handoff)
        await asyncio.wait([stop, handed], return_when=asyncio.FIRST_COMPLETED)
        if handed.done():
            stop.cancel()
            try:
                count = handed.result()
            except (HandoffError, OSError) as exc:
                return _fail(f"handoff failed: {exc}")
            say(f"handed off {count} connection(s)")
            if isinstance(server.h3.server, WorkerGroupServer):
                await server.h3.server.wait_closed()  # its workers have ended
            try:
                await server.lifespan.shutdown()
            except RuntimeError as exc:
                return _fail(f"application {args.app}: {exc}")
            return 0
    else:
        await stop_event().wait()
    say("shutting down (GOAWAY)")
    try:
        await server.shutdown(args.grace)
    except RuntimeError as exc:
        return _fail(f"application {args.app}: {exc}")
    return 0


def _announce_successor(grace: float) -> Callable[[Handover], None]:
    """An ``on_handover`` hook: a line on stderr when a successor connects, before the
    requests in progress finish (with workers, one line from each worker)."""
    from ..aio.api import QuicServer
    from ..h3.aio import H3Server
    from ..h3.handoff import requests_in_progress

    def hook(handover: Handover) -> None:
        wait = handover.before_stop
        view = H3Server(QuicServer(handover.runner, handover))

        async def announce() -> None:
            busy = requests_in_progress(view)
            say(f"successor connected: handing off after {busy} request(s) in progress "
                f"finish (at most {grace:g} s)")
            if wait is not None:
                await wait()

        handover.before_stop = announce

    return hook


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..h3.qpack import require_pylsqpack

        require_pylsqpack()
    except ImportError as exc:
        return _fail(str(exc))
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0


# ---------------------------------------------------------------------------- get


class _Progress:
    def __init__(self, total: int | None, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled and (total is None or total >= PROGRESS_MIN)
        self.start = time.monotonic()
        self.last = 0.0
        self.printed = False
        self.tty = sys.stderr.isatty()

    def update(self, received: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and (now - self.last < PROGRESS_EVERY or received < PROGRESS_MIN):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        of = f" of {_human(self.total)}" if self.total else ""
        text = f"{_human(received)}{of}  {_human(received / elapsed)}/s"
        if self.tty:
            sys.stderr.write(f"\r{text:<48}" + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self.printed = True


async def _get(args: argparse.Namespace, url: Any, out: BinaryIO | None) -> int:
    from ..h3 import aio as h3

    host = url.hostname
    port = url.port or 443
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    config = Configuration(
        alpn_protocols=["h3"],
        verify_peer=not args.insecure,
        cafile=args.cafile,
        server_name=host,
        idle_timeout=args.timeout,
    )
    t0 = time.monotonic()
    authority = url.netloc.rpartition("@")[2]
    async with asyncio.timeout(args.timeout):
        client_cm = h3.connect(host, port, configuration=config)
        client = await client_cm.__aenter__()
    try:
        t_connected = time.monotonic()
        stream = await client.open_request("GET", path, args.header, end_stream=True,
                                           authority=authority)
        async with asyncio.timeout(args.timeout):
            await stream.wait_headers()
        t_headers = time.monotonic()
        length_text = stream.header("content-length")
        total = int(length_text) if length_text and length_text.isdigit() else None
        progress = _Progress(total, not args.quiet)
        digest = hashlib.sha256()
        size = 0
        while True:
            async with asyncio.timeout(args.timeout):
                chunk = await stream.read(1 << 20)
            if not chunk:
                break
            size += len(chunk)
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
            progress.update(size)
        if progress.printed:
            progress.update(size, final=True)
        t_done = time.monotonic()
    finally:
        await client_cm.__aexit__(None, None, None)
    status = stream.status
    if args.json:
        report = {
            "url": args.url,
            "status": status,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                        for n, v in stream.headers or [] if not n.startswith(b":")],
            "trailers": [[n.decode("latin-1"), v.decode("latin-1")]
                         for n, v in stream.trailers or []],
            "size": size,
            "sha256": digest.hexdigest(),
            "timings": {
                "connect": round(t_connected - t0, 6),
                "first_byte": round(t_headers - t0, 6),
                "total": round(t_done - t0, 6),
            },
        }
        print(json.dumps(report), flush=True)
    if not 200 <= status < 300:
        return _fail(f"HTTP status {status} from {args.url}")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    url = urlsplit(args.url)
    if url.scheme != "https" or not url.hostname:
        return _fail(f"expected an https:// URL, got {args.url!r}", 2)
    try:
        url.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return _fail(f"bad port in {args.url!r}: {exc}", 2)
    try:
        from ..h3.qpack import require_pylsqpack

        require_pylsqpack()
    except ImportError as exc:
        return _fail(str(exc))
    out: BinaryIO | None
    try:
        if args.output is not None and args.output != "-":
            out = open(args.output, "wb")  # noqa: SIM115 - closed below
        elif args.json:
            out = None  # stdout carries the JSON report; the body goes to -o only
        else:
            out = sys.stdout.buffer
    except OSError as exc:
        return _fail(f"cannot write {args.output}: {exc}")
    try:
        return asyncio.run(_get(args, url, out))
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Exception as exc:
        return _fail(_describe(exc))
    finally:
        if out is not None and out is not sys.stdout.buffer:
            out.close()
        elif out is not None:
            out.flush()


# ---------------------------------------------------------------------------- parsers


def register(sub: Any) -> None:
    """Add the ``serve`` and ``get`` subcommands to the ``quicflow`` parser."""
    serve = sub.add_parser(
        "serve",
        help="serve an ASGI application over HTTP/3 until SIGINT/SIGTERM",
        description="Serve an ASGI 3 application (http and lifespan scopes) over HTTP/3 "
        "(RFC 9114) until SIGINT or SIGTERM, then shut down gracefully: GOAWAY, the "
        "requests in progress finish (up to --grace seconds), lifespan shutdown, exit 0. "
        "Prints 'serving APP on https://HOST:PORT (HTTP/3)' on stderr once ready. Exit "
        "status: 0 after a clean shutdown, 1 on failure (one line on stderr: application "
        "not importable, certificate unreadable, port in use, lifespan startup failed), "
        "2 for bad arguments. Needs pip install 'quicflow[h3]'.",
    )
    serve.add_argument("app", metavar="MODULE:APP",
                       help="the ASGI application, e.g. myproject.main:app (the current "
                       "directory is on the import path)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=_port, default=4433,
                       help="UDP port to listen on (default: %(default)s)")
    serve.add_argument("--cert", required=True, metavar="FILE",
                       help="PEM certificate chain of the server")
    serve.add_argument("--key", required=True, metavar="FILE",
                       help="PEM private key of the certificate")
    serve.add_argument(
        "--workers", type=_workers, default=None, metavar="N",
        help="serve from N worker processes sharing the port (quicflow.serve(workers=N)), "
        "forked after the lifespan startup, which runs once, in the supervisor "
        "(default: one process)",
    )  # fmt: skip
    serve.add_argument("--lifespan", choices=["auto", "on", "off"], default="auto",
                       help="run the application's lifespan scope: auto = if it supports "
                       "it, on = it must succeed, off = never (default: %(default)s)")
    serve.add_argument("--root-path", default="", metavar="PATH",
                       help="ASGI root_path of the application (default: none)")
    serve.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECONDS",
                       help="idle timeout of connections (default: %(default)s)")
    serve.add_argument("--grace", type=_seconds, default=5.0, metavar="SECONDS",
                       help="on shutdown or handoff, how long requests in progress may "
                       "take (default: %(default)s)")
    serve.add_argument("--handoff", metavar="PATH",
                       help="offer the connections to a successor (quicflow serve "
                       "--takeover PATH) on a unix socket at PATH (mode 0600, same user "
                       "only); then exit 0 printing how many were handed off. Serves "
                       "HTTP/3 without QPACK dynamic tables (larger headers). With "
                       "--workers N, worker i hands over to the successor's worker i "
                       "(start it with the same --workers N)")
    serve.add_argument("--takeover", metavar="PATH",
                       help="take over the socket and connections of the server offering "
                       "a handoff at PATH (--host/--port unused; --workers as many as "
                       "it runs), then offer at PATH again. Requests still in progress "
                       "after --grace are reset")
    serve.set_defaults(func=cmd_serve)

    get = sub.add_parser(
        "get",
        help="fetch a URL over HTTP/3, like a small curl",
        description="Fetch an https:// URL over HTTP/3 (ALPN h3). The body goes to "
        "stdout, or to FILE with -o; with --json stdout carries a JSON report instead "
        "(keys: url, status, headers, trailers, size, sha256, timings{connect, "
        "first_byte, total} in seconds) and the body goes only to -o FILE. A progress "
        "line goes to stderr for bodies over 1 MiB. Exit status: 0 for a 2xx response, "
        "1 on failure with one line on stderr saying why (connection or certificate "
        "refused, timeout, reset, or a non-2xx status), 2 for bad arguments. Needs "
        "pip install 'quicflow[h3]'.",
    )
    get.add_argument("url", metavar="URL", help="https://HOST[:PORT]/PATH (port 443 "
                     "by default)")
    get.add_argument("-o", "--output", metavar="FILE",
                     help="write the body to FILE ('-': stdout) (default: stdout, or "
                     "nowhere with --json)")
    trust = get.add_mutually_exclusive_group()
    trust.add_argument("--cafile", metavar="FILE",
                       help="PEM file of the CA(s) that may sign the server's "
                       "certificate (default: the system store)")
    trust.add_argument("--insecure", action="store_true",
                       help="do not verify the server's certificate")
    get.add_argument("-H", "--header", type=_header, action="append", default=[],
                     metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    get.add_argument("--json", action="store_true",
                     help="print a JSON report on stdout (status, headers, size, sha256, "
                     "timings) instead of the body")
    get.add_argument("--timeout", type=_seconds, default=10.0, metavar="SECONDS",
                     help="handshake, response and idle timeout (default: %(default)s)")
    get.add_argument("-q", "--quiet", action="store_true",
                     help="no progress line on stderr")
    get.set_defaults(func=cmd_get)
