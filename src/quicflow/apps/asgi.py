"""An ASGI 3 server over HTTP/3: ``http`` and ``lifespan`` scopes.

``serve_asgi(app, host, port, configuration=...)`` runs the application's lifespan
startup, then serves each HTTP/3 request as an ``http`` scope (``http_version`` "3").
``AsgiServer.shutdown()`` sends GOAWAY, lets the requests in progress finish, closes,
and runs the lifespan shutdown. ``quicflow serve MODULE:APP`` is the command for it.

Errors: an application that raises before ``http.response.start`` gets a 500 sent for
it; after the start its stream is reset with H3_INTERNAL_ERROR (the client sees the
response was cut). A response body is streamed as the application sends it, with
backpressure (``send`` waits while the stream's send buffer is full).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from ..aio.errors import StreamResetError
from ..h3.aio import H3Server, H3Stream
from ..h3.aio import serve as serve_h3
from ..h3.errors import H3_INTERNAL_ERROR
from ..transport.config import Configuration

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("quicflow.asgi")


class AppLoadError(Exception):
    """``MODULE:APP`` does not name an importable application."""


def load_app(spec: str) -> ASGIApp:
    """Import ``MODULE:ATTR`` (ATTR may be dotted); the current directory is searched."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(f"expected MODULE:APP, got {spec!r}")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise AppLoadError(f"{spec} is not callable")
    app: ASGIApp = obj
    return app


class Lifespan:
    """Runs the application's lifespan scope (``mode``: "auto", "on" or "off")."""

    def __init__(self, app: ASGIApp, mode: str = "auto") -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._startup: asyncio.Future[None] | None = None
        self._shutdown: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        if not self.supported:
            return
        loop = asyncio.get_running_loop()
        self._startup = loop.create_future()
        self._shutdown = loop.create_future()
        self._task = loop.create_task(self._run())
        await self._queue.put({"type": "lifespan.startup"})
        await self._startup

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        try:
            await self.app(scope, self._queue.get, self._send)
        except BaseException as exc:
            if self._startup is not None and not self._startup.done():
                if self.mode == "on":
                    self._startup.set_exception(RuntimeError(f"lifespan failed: {exc!r}"))
                else:  # "auto": the application does not do lifespan
                    self.supported = False
                    self._startup.set_result(None)
            elif self._shutdown is not None and not self._shutdown.done():
                self._shutdown.set_exception(RuntimeError(f"lifespan failed: {exc!r}"))
            if not isinstance(exc, Exception):
                raise

    async def _send(self, message: Message) -> None:
        kind = message.get("type")
        assert self._startup is not None and self._shutdown is not None
        if kind == "lifespan.startup.complete":
            self._startup.set_result(None)
        elif kind == "lifespan.startup.failed":
            self._startup.set_exception(
                RuntimeError(f"startup failed: {message.get('message', '')}")
            )
        elif kind == "lifespan.shutdown.complete":
            self._shutdown.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            self._shutdown.set_exception(
                RuntimeError(f"shutdown failed: {message.get('message', '')}")
            )

    async def shutdown(self) -> None:
        if not self.supported or self._shutdown is None:
            return
        await self._queue.put({"type": "lifespan.shutdown"})
        await self._shutdown


def _scope(request: H3Stream, state: dict[str, Any], root_path: str) -> Scope:
    headers = request.headers or []
    pseudo = {n: v for n, v in headers if n.startswith(b":")}
    regular = [(n, v) for n, v in headers if not n.startswith(b":")]
    authority = pseudo.get(b":authority")
    if authority and not any(n == b"host" for n, _ in regular):
        regular.insert(0, (b"host", authority))
    raw = pseudo.get(b":path", b"/")
    raw_path, _, query = raw.partition(b"?")
    conn = request.face.conn
    client = conn.peer_address
    local = request.face.runner.transport.local_address
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "3",
        "method": pseudo.get(b":method", b"GET").decode("latin-1"),
        "scheme": pseudo.get(b":scheme", b"https").decode("latin-1"),
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": regular,
        "client": (str(client[0]), int(client[1])) if client else None,
        "server": (str(local[0]), int(local[1])) if local else None,
        "state": dict(state),
    }


async def _run_request(app: ASGIApp, request: H3Stream, state: dict[str, Any],
                       root_path: str) -> None:
    response_started = False
    response_done = False
    body_done = False
    trailers_expected = False
    disconnected = asyncio.Event()

    async def receive() -> Message:
        nonlocal body_done
        if not body_done:
            try:
                chunk = await request.read(1 << 16)
            except (StreamResetError, ConnectionError):
                body_done = True
                disconnected.set()
                return {"type": "http.disconnect"}
            if chunk:
                return {"type": "http.request", "body": chunk, "more_body": True}
            body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal response_started, response_done, trailers_expected
        kind = message["type"]
        if kind == "http.response.start":
            if response_started:
                raise RuntimeError("http.response.start sent twice")
            response_started = True
            trailers_expected = bool(message.get("trailers", False))
            head: list[tuple[str | bytes, str | bytes]] = [
                (":status", str(int(message["status"])))
            ]
            for name, value in message.get("headers", ()):
                name = bytes(name).lower()
                if name in (b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                            b"proxy-connection"):
                    continue  # connection-specific: not allowed in HTTP/3
                head.append((name, bytes(value)))
            request.send_headers(head)
        elif kind == "http.response.body":
            if not response_started:
                raise RuntimeError("http.response.body before http.response.start")
            if response_done:
                return
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            end = not more and not trailers_expected
            try:
                await request.write(body, end_stream=end)
            except (StreamResetError, ConnectionError):
                disconnected.set()
                raise
            if end:
                response_done = True
                disconnected.set()
        elif kind == "http.response.trailers":
            if not trailers_expected:
                return
            more = bool(message.get("more_trailers", False))
            fields = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers", ())]
            if not more:
                request.send_headers(fields, end_stream=True)
                response_done = True
                disconnected.set()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    try:
        await app(_scope(request, state, root_path), receive, send)
    except (StreamResetError, ConnectionError):
        return
    except Exception:
        log.exception("ASGI application raised")
        if not response_started:
            await request.respond(500, [("content-type", "text/plain")],
                                  b"Internal Server Error")
        elif not response_done:
            request.cancel(H3_INTERNAL_ERROR)
        return
    if not response_started:
        await request.respond(500)
    elif not response_done:
        await request.end()


class AsgiServer:
    """A running ASGI-over-HTTP/3 server."""

    def __init__(self, server: H3Server, lifespan: Lifespan) -> None:
        self.h3 = server
        self.lifespan = lifespan

    @property
    def address(self) -> tuple[Any, ...]:
        return self.h3.address

    async def shutdown(self, timeout: float = 5.0) -> None:
        """GOAWAY, wait for requests in progress, close, then lifespan shutdown."""
        await self.h3.shutdown(timeout)
        await self.lifespan.shutdown()

    def handoff(self, path: str) -> asyncio.Future[int]:
        """Offer the connections to a successor ``serve_asgi(..., takeover=path)`` (the
        server must be started with ``migratable=True`` or ``takeover``). ASGI requests
        in progress cannot move (the application's coroutine holds their state): the
        handoff lets them finish for ``handoff_grace`` seconds first, and the successor
        resets those still running with H3_REQUEST_CANCELLED. Run ``lifespan.shutdown()``
        after the future resolves."""
        return self.h3.handoff(path)


async def serve_asgi(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    configuration: Configuration,
    lifespan: str = "auto",
    root_path: str = "",
    **kwargs: Any,
) -> AsgiServer:
    """Start serving ``app`` over HTTP/3 after its lifespan startup succeeded."""
    span = Lifespan(app, lifespan)
    await span.startup()

    async def handler(request: H3Stream) -> None:
        await _run_request(app, request, span.state, root_path)

    try:
        server = await serve_h3(handler, host, port, configuration=configuration, **kwargs)
    except Exception:
        # no server (port in use, takeover failed): end the lifespan the startup began,
        # so the application shuts down cleanly and nothing is left pending
        with contextlib.suppress(Exception):
            await span.shutdown()
        raise
    return AsgiServer(server, span)
