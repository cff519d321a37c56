"""The asyncio face of HTTP/3: ``connect()`` (a client) and ``serve()`` (a server).

This module sits above ``quicflow.aio`` (the sans-I/O part of ``quicflow.h3`` sits below
it); ``quicflow.h3`` loads it lazily. ::

    async with quicflow.h3.connect("localhost", 4433, configuration=cfg) as client:
        response = await client.request("GET", "/file")
        body = await response.read()

    async def handler(request: H3Stream) -> None:
        body = await request.read()
        await request.respond(200, [("content-type", "text/plain")], b"hello")

    server = await quicflow.h3.serve(handler, "127.0.0.1", 4433, configuration=cfg)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from ..aio.api import QuicServer
from ..aio.api import connect as quic_connect
from ..aio.api import serve as quic_serve
from ..aio.connection import QuicConnection
from ..aio.errors import ConnectionClosedError, StreamResetError
from ..aio.handover import Handover
from ..aio.runner import EndpointRunner
from ..aio.workers import WorkerGroupServer
from ..transport.config import Configuration
from ..transport.connection import Connection, StreamLimitReached
from ..transport.events import (
    DatagramReceived,
    Event,
    HandshakeCompleted,
    StopSendingReceived,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamWritable,
)
from . import events as E
from .connection import H3Connection, RequestRefused
from .errors import H3_INTERNAL_ERROR, H3_NO_ERROR, H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED
from .handoff import RequestCapture, RequestResume

Headers = list[tuple[bytes, bytes]]
HeaderInput = Iterable[tuple[str | bytes, str | bytes]]
RequestHandler = Callable[["H3Stream"], Awaitable[None]]

#: write() waits while more than this many bytes are queued on the stream
WRITE_HIGH_WATER = 4 << 20
_H3_EVENTS = (StreamReadable, StreamOpened, StreamReset, StopSendingReceived,
              DatagramReceived)
DATAGRAM_FRAME_SIZE = 65535  # our transport's max_datagram_frame_size with datagrams on


def _b(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def normalize_headers(headers: HeaderInput | None) -> Headers:
    """Field list as (bytes, bytes), names lowercased."""
    return [(_b(n).lower(), _b(v)) for n, v in (headers or ())]


class H3Stream:
    """One request/response exchange (client: the response; server: the request)."""

    def __init__(self, face: H3QuicConnection, stream_id: int) -> None:
        self.face = face
        self.stream_id = stream_id
        self.headers: Headers | None = None
        self.trailers: Headers | None = None
        self._chunks: deque[bytes] = deque()
        self._ended = False
        self._reset_code: int | None = None
        self._stop_code: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._headers_sent = False
        self._fin_sent = False
        self._datagrams: deque[bytes] = deque()
        #: body bytes written (DATA payloads): where a resumed response goes on from
        self.body_sent = 0

    # ------------------------------------------------------------------ fields

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (str), or None."""
        key = name.lower().encode("latin-1")
        for n, v in self.headers or ():
            if n == key:
                return v.decode("latin-1")
        return None

    @property
    def status(self) -> int:
        """The response status (client side)."""
        value = self.header(":status")
        return int(value) if value is not None else 0

    @property
    def method(self) -> str:
        return self.header(":method") or ""

    @property
    def path(self) -> str:
        return self.header(":path") or ""

    # ------------------------------------------------------------------ waking

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self.face.raise_if_closed()
        self._waiter = self.face.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_read(self) -> None:
        if self._reset_code is not None:
            raise StreamResetError(self.stream_id, self._reset_code)

    # ------------------------------------------------------------------ reading

    async def wait_headers(self) -> Headers:
        """The peer's head (request or final response)."""
        while self.headers is None:
            self._check_read()
            if self._ended:
                raise StreamResetError(self.stream_id, H3_REQUEST_REJECTED)
            await self._wait()
        return self.headers

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` body bytes (all of them with -1); b"" at the end of the body."""
        if n < 0:
            parts = []
            while chunk := await self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        while not self._chunks:
            self._check_read()
            if self._ended:
                return b""
            await self._wait()
        chunks = self._chunks
        chunk = chunks.popleft()
        if len(chunk) > n:
            chunks.appendleft(chunk[n:])
            chunk = chunk[:n]
        self.face.consumed(self.stream_id, len(chunk))
        return chunk

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        while chunk := await self.read(1 << 20):
            yield chunk

    @property
    def at_eof(self) -> bool:
        return self._ended and not self._chunks

    # ------------------------------------------------------------------ writing

    def _check_write(self) -> None:
        self.face.raise_if_closed()
        if self._stop_code is not None:
            raise StreamResetError(self.stream_id, self._stop_code)

    def send_headers(self, headers: HeaderInput, end_stream: bool = False) -> None:
        """Send the head (or, after the body, trailers)."""
        self._check_write()
        self.face.h3.send_headers(self.stream_id, normalize_headers(headers), end_stream)
        self._headers_sent = True
        self._fin_sent = self._fin_sent or end_stream
        self.face.flush()

    async def write(self, data: bytes, end_stream: bool = False) -> None:
        """A DATA frame; waits while the stream's send buffer is over the high water."""
        self._check_write()
        self.face.h3.send_data(self.stream_id, data, end_stream)
        self.body_sent += len(data)
        self._fin_sent = self._fin_sent or end_stream
        self.face.flush()
        quic = self.face.conn
        while quic.stream_buffered(self.stream_id) > WRITE_HIGH_WATER:
            self._check_write()
            await self._wait()

    async def end(self, trailers: HeaderInput | None = None) -> None:
        """Finish the message (FIN), with trailers if given."""
        if self._fin_sent:
            return
        if trailers:
            self.send_headers(trailers, end_stream=True)
        else:
            await self.write(b"", end_stream=True)

    async def respond(
        self,
        status: int,
        headers: HeaderInput | None = None,
        body: bytes | AsyncIterable[bytes] | None = None,
        trailers: HeaderInput | None = None,
    ) -> None:
        """Server: send a whole response (``body`` bytes or an async iterable)."""
        head: list[tuple[str | bytes, str | bytes]] = [(b":status", str(status).encode())]
        head.extend(headers or ())
        if body is None and not trailers:
            self.send_headers(head, end_stream=True)
            return
        self.send_headers(head)
        if isinstance(body, bytes | bytearray | memoryview):
            if body:
                await self.write(bytes(body))
        elif body is not None:
            async for chunk in body:
                if chunk:
                    await self.write(chunk)
        await self.end(trailers)

    def cancel(self, error_code: int = H3_REQUEST_CANCELLED) -> None:
        """Abandon the exchange: RESET_STREAM and STOP_SENDING with ``error_code``."""
        if self._reset_code is None:
            self._reset_code = error_code
        self._fin_sent = True
        self._ended = True
        self.face.h3.cancel(self.stream_id, error_code)
        self.face.flush()
        self.face.forget_stream(self)
        self._wake()

    # ------------------------------------------------------------------ datagrams

    def send_datagram(self, data: bytes) -> None:
        """An HTTP/3 datagram on this request (RFC 9297)."""
        self.face.h3.send_datagram(self.stream_id, data)
        self.face.flush()

    async def receive_datagram(self) -> bytes:
        while not self._datagrams:
            self._check_read()
            await self._wait()
        return self._datagrams.popleft()


class H3QuicConnection(QuicConnection):
    """A QUIC connection whose streams carry HTTP/3 (the options are class attributes;
    :func:`connect` and :func:`serve` make a subclass with theirs)."""

    h3_options: dict[str, Any] = {}
    request_handler: RequestHandler | None = None
    #: HTTP/3 state is captured only through h3.serve(migratable=True)'s hooks
    capture_refusal: str | None = "its HTTP/3 state is captured only by h3.serve(migratable=True)"

    def __init__(self, runner: EndpointRunner, conn: Connection, **kw: Any) -> None:
        super().__init__(runner, conn, **kw)
        self.h3 = H3Connection(conn, is_client=conn.is_client, **self.h3_options)
        self.h3_streams: dict[int, H3Stream] = {}
        self.settings_received: asyncio.Future[dict[int, int]] = self.loop.create_future()
        self.goaway_received: int | None = None
        self._goaway_waiter: asyncio.Future[None] = self.loop.create_future()

    # events ------------------------------------------------------------------

    def handle_events(self, events: list[Event]) -> None:
        rest: list[Event] = []
        h3 = self.h3
        for event in events:
            cls = type(event)
            if cls in _H3_EVENTS:
                self._dispatch(h3.handle_event(event))
                if cls is StopSendingReceived or cls is StreamReset:
                    stream = self.h3_streams.get(event.stream_id)  # type: ignore[union-attr]
                    if stream is not None:
                        stream._wake()
                continue
            if cls is HandshakeCompleted:
                h3.handle_event(event)
            elif cls is StreamWritable:
                stream = self.h3_streams.get(event.stream_id)  # type: ignore[union-attr]
                if stream is not None:
                    stream._wake()
            rest.append(event)
        if rest:
            super().handle_events(rest)
        self.flush()

    def consumed(self, stream_id: int, nbytes: int) -> None:
        self._dispatch(self.h3.consumed(stream_id, nbytes, self.loop.time()))
        self.after_read()
        self.flush()

    def _dispatch(self, events: list[E.H3Event]) -> None:
        for ev in events:
            cls = type(ev)
            if cls is E.DataReceived:
                assert isinstance(ev, E.DataReceived)
                stream = self.h3_streams.get(ev.stream_id)
                if stream is None:
                    continue
                if ev.data:
                    stream._chunks.append(ev.data)
                if ev.stream_ended:
                    stream._ended = True
                    self._maybe_forget(stream)
                stream._wake()
            elif cls is E.HeadersReceived:
                assert isinstance(ev, E.HeadersReceived)
                self._on_headers(ev)
            elif cls is E.StreamReset:
                assert isinstance(ev, E.StreamReset)
                stream = self.h3_streams.get(ev.stream_id)
                if stream is not None:
                    stream._reset_code = ev.error_code
                    stream._ended = True
                    if not ev.by_peer:
                        stream._stop_code = ev.error_code
                    self._maybe_forget(stream)
                    stream._wake()
            elif cls is E.StopSendingReceived:
                assert isinstance(ev, E.StopSendingReceived)
                stream = self.h3_streams.get(ev.stream_id)
                if stream is not None:
                    stream._stop_code = ev.error_code
                    stream._fin_sent = True
                    self._maybe_forget(stream)
                    stream._wake()
            elif cls is E.SettingsReceived:
                assert isinstance(ev, E.SettingsReceived)
                if not self.settings_received.done():
                    self.settings_received.set_result(ev.settings)
            elif cls is E.GoawayReceived:
                assert isinstance(ev, E.GoawayReceived)
                self._on_goaway(ev.last_stream_id)
            elif cls is E.DatagramReceived:
                assert isinstance(ev, E.DatagramReceived)
                stream = self.h3_streams.get(ev.stream_id)
                if stream is not None:
                    stream._datagrams.append(ev.data)
                    stream._wake()

    def _on_headers(self, ev: E.HeadersReceived) -> None:
        stream = self.h3_streams.get(ev.stream_id)
        if ev.trailers:
            if stream is not None:
                stream.trailers = ev.headers
            return
        if stream is None:
            if self.conn.is_client or self.request_handler is None:
                return
            stream = self.h3_streams[ev.stream_id] = H3Stream(self, ev.stream_id)
            stream.headers = ev.headers
            self.start_request(stream, self.request_handler(stream))
            return
        for name, value in ev.headers:
            if name == b":status" and value.startswith(b"1"):
                return  # informational response
        stream.headers = ev.headers
        stream._wake()

    def start_request(self, stream: H3Stream, work: Awaitable[None]) -> None:
        """Run ``work`` (the handler's coroutine for ``stream``, or one resuming it after
        a handoff) as the request's task; ``stop()`` cancels it."""
        self._keep_task(self.loop.create_task(self._run_request(stream, work)))

    async def _run_request(self, stream: H3Stream, work: Awaitable[None]) -> None:
        try:
            await work
            if not stream._fin_sent and not self.closed:
                if not stream._headers_sent:
                    await stream.respond(500)
                else:
                    await stream.end()
        except (ConnectionError, StreamResetError):
            pass
        except Exception:
            if not self.closed and not stream._fin_sent:
                stream.cancel(H3_INTERNAL_ERROR)
            raise
        finally:
            if stream._fin_sent and not stream._ended and not self.closed:
                # answered without reading the whole request: stop its upload
                stream._ended = True
                self.h3.stop_reading(stream.stream_id)
                self.flush()
            self._maybe_forget(stream)

    def _on_goaway(self, last: int) -> None:
        self.goaway_received = last
        if not self._goaway_waiter.done():
            self._goaway_waiter.set_result(None)
        if self.conn.is_client:
            for sid, stream in list(self.h3_streams.items()):
                if sid >= last and stream.headers is None:
                    stream._reset_code = H3_REQUEST_REJECTED
                    stream._ended = True
                    stream._wake()

    def _maybe_forget(self, stream: H3Stream) -> None:
        if stream._ended and stream._fin_sent:
            self.forget_stream(stream)

    def forget_stream(self, stream: H3Stream) -> None:
        """Stop routing events to ``stream`` (the object keeps what it received)."""
        if self.h3_streams.get(stream.stream_id) is stream:
            del self.h3_streams[stream.stream_id]

    def _wake_all(self) -> None:
        super()._wake_all()
        for stream in list(self.h3_streams.values()):
            stream._wake()
        if not self.settings_received.done():
            self.settings_received.cancel()

    # requests ------------------------------------------------------------------

    @property
    def active_requests(self) -> int:
        return len(self.h3_streams)

    @property
    def undelivered_requests(self) -> int:
        """Request streams whose sending side the peer has not yet acknowledged in full
        (a response written and finished by its handler can still be in the buffers).
        Counted over the open streams: for shutdown, not for every packet."""
        return sum(1 for sid, stream in self.conn.streams.items()
                   if not sid & 2 and stream.send is not None
                   and not stream.send.is_complete())  # fmt: skip

    async def open_request(self) -> H3Stream:
        while True:
            self.raise_if_closed()
            try:
                stream_id = self.h3.open_request()
            except StreamLimitReached:
                waiter = self.loop.create_future()
                self._streams_waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._streams_waiters:
                        self._streams_waiters.remove(waiter)
                continue
            stream = self.h3_streams[stream_id] = H3Stream(self, stream_id)
            return stream

    def send_goaway(self) -> int:
        last = self.h3.send_goaway()
        self.flush()
        return last

    def close_h3(self, code: int = H3_NO_ERROR, reason: str = "") -> None:
        self.close(code, reason)


NOT_MIGRATABLE = ("its QPACK dynamic tables cannot be captured: serve HTTP/3 with "
                  "migratable=True (no dynamic table) to hand over or move connections")


def _face_class(
    options: dict[str, Any], handler: RequestHandler | None = None
) -> type[H3QuicConnection]:
    attrs: dict[str, Any] = {
        "h3_options": options,
        "request_handler": staticmethod(handler) if handler is not None else None,
        "capture_refusal": None if options.get("capturable") else NOT_MIGRATABLE,
    }
    return type("H3Face", (H3QuicConnection,), attrs)


def _h3_configuration(configuration: Configuration | None, datagrams: bool) -> Configuration:
    config = replace(configuration) if configuration is not None else Configuration()
    if not config.alpn_protocols:
        config.alpn_protocols = ["h3"]
    if datagrams and not config.max_datagram_frame_size:
        config.max_datagram_frame_size = DATAGRAM_FRAME_SIZE
    return config


class H3Client:
    """An HTTP/3 client on one QUIC connection (from :func:`connect`)."""

    def __init__(self, face: H3QuicConnection, authority: str) -> None:
        self.face = face
        self.authority = authority

    @property
    def connection(self) -> H3QuicConnection:
        return self.face

    async def open_request(
        self,
        method: str,
        path: str,
        headers: HeaderInput | None = None,
        *,
        end_stream: bool = False,
        authority: str | None = None,
        scheme: str = "https",
        protocol: str | None = None,
    ) -> H3Stream:
        """Send a request head and return the stream (write the body, then ``end()``).
        ``protocol`` makes it an extended CONNECT (RFC 9220)."""
        if self.face.goaway_received is not None:
            raise RequestRefused("the server sent GOAWAY: no new requests on this connection")
        if protocol is not None:
            await self.settings()
            if not self.face.h3.peer_allows_extended_connect:
                raise RequestRefused("the server did not enable extended CONNECT (RFC 9220)")
        stream = await self.face.open_request()
        head: list[tuple[str | bytes, str | bytes]] = [(":method", method)]
        if protocol is not None:
            head.append((":protocol", protocol))
        head += [(":scheme", scheme), (":authority", authority or self.authority),
                 (":path", path)]
        head.extend(headers or ())
        stream.send_headers(head, end_stream=end_stream)
        return stream

    async def request(
        self,
        method: str,
        path: str,
        headers: HeaderInput | None = None,
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        trailers: HeaderInput | None = None,
    ) -> H3Stream:
        """Send a request and wait for the response head; read the body from the
        returned stream (``read()``, ``iter_chunks()``)."""
        if path.startswith(("https://", "http://")):
            from urllib.parse import urlsplit

            parts = urlsplit(path)
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
        no_body = body is None and not trailers
        stream = await self.open_request(method, path, headers, end_stream=no_body)
        if not no_body:
            if isinstance(body, bytes | bytearray | memoryview):
                if body:
                    await stream.write(bytes(body))
            elif body is not None:
                async for chunk in body:
                    if chunk:
                        await stream.write(chunk)
            await stream.end(trailers)
        await stream.wait_headers()
        return stream

    async def get(self, path: str, headers: HeaderInput | None = None) -> H3Stream:
        return await self.request("GET", path, headers)

    async def post(self, path: str, body: bytes, headers: HeaderInput | None = None) -> H3Stream:
        return await self.request("POST", path, headers, body)

    def goaway(self) -> None:
        self.face.send_goaway()

    async def settings(self) -> dict[int, int]:
        return await asyncio.shield(self.face.settings_received)

    def close(self, code: int = H3_NO_ERROR, reason: str = "") -> None:
        self.face.close(code, reason)


@asynccontextmanager
async def connect(
    host: str,
    port: int,
    *,
    configuration: Configuration | None = None,
    enable_datagram: bool = False,
    max_table_capacity: int = 4096,
    **kwargs: Any,
) -> AsyncIterator[H3Client]:
    """Connect an HTTP/3 client (ALPN ``h3`` unless the configuration names others);
    extra keyword arguments go to :func:`quicflow.connect`. Closes with H3_NO_ERROR."""
    options = {"enable_datagram": enable_datagram, "max_table_capacity": max_table_capacity}
    async with quic_connect(
        host, port, configuration=_h3_configuration(configuration, enable_datagram),
        face_class=_face_class(options), **kwargs,
    ) as face:
        assert isinstance(face, H3QuicConnection)
        authority = host if ":" not in host else f"[{host}]"
        client = H3Client(face, f"{authority}:{port}")
        try:
            yield client
        finally:
            if not face.closed:
                face.close(H3_NO_ERROR)


class H3Server:
    """A running HTTP/3 server (from :func:`serve`). With ``workers=N`` the connections
    live in the worker processes: ``goaway()`` and ``connections`` see none of them, and
    ``shutdown()``/``close()`` stop the workers."""

    def __init__(self, server: QuicServer | WorkerGroupServer) -> None:
        self.server = server

    @property
    def address(self) -> tuple[Any, ...]:
        return self.server.address

    @property
    def connections(self) -> list[H3QuicConnection]:
        if not isinstance(self.server, QuicServer):
            return []
        return [c for c in self.server.connections if isinstance(c, H3QuicConnection)]

    def goaway(self) -> None:
        """GOAWAY on every connection: requests already received finish, new ones are
        refused (H3_REQUEST_REJECTED)."""
        for face in self.connections:
            if not face.closed and face.h3.started:
                face.send_goaway()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Graceful shutdown: GOAWAY, wait for the requests in progress to finish and
        their responses to be acknowledged (up to ``timeout`` seconds), then close every
        connection with H3_NO_ERROR."""
        self.goaway()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(
            (f.active_requests or f.undelivered_requests) and not f.closed
            for f in self.connections
        ):
            await asyncio.sleep(0.01)
        for face in self.connections:
            face.close(H3_NO_ERROR)
        await asyncio.sleep(0.05)
        self.server.close()
        await self.server.wait_closed()

    def close(self) -> None:
        for face in self.connections:
            face.close(H3_NO_ERROR)
        self.server.close()

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def _single(self) -> QuicServer:
        if not isinstance(self.server, QuicServer):
            raise ValueError("moves are not available with workers yet")
        return self.server

    def handoff(self, path: str) -> asyncio.Future[int]:
        """Offer the connections to a successor (``serve(..., takeover=path)``, with as
        many workers); see ``QuicServer.handoff`` and ``WorkerGroupServer.handoff``.
        ValueError unless served with ``migratable=True``."""
        return self.server.handoff(path)

    async def move_to(self, host: str, port: int, context: Any, **kwargs: Any) -> int:
        """Move connections to another host; see ``QuicServer.move_to``."""
        return await self._single().move_to(host, port, context, **kwargs)

    async def __aenter__(self) -> H3Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def serve(
    handler: RequestHandler,
    host: str,
    port: int,
    *,
    configuration: Configuration,
    enable_connect_protocol: bool = False,
    enable_datagram: bool = False,
    max_table_capacity: int = 4096,
    migratable: bool = False,
    capture_request: RequestCapture | None = None,
    resume_request: RequestResume | None = None,
    handoff_grace: float = 0.0,
    **kwargs: Any,
) -> H3Server:
    """Start an HTTP/3 server: ``await handler(request)`` runs for each request (an
    :class:`H3Stream`; respond with ``respond()`` or ``send_headers``/``write``/``end``).
    A handler that raises resets its stream with H3_INTERNAL_ERROR; one that returns
    without answering sends 500. Extra keyword arguments go to :func:`quicflow.serve`
    (``workers=N`` included: each worker process serves HTTP/3 with its own copy of
    ``handler``).

    ``migratable=True`` (implied by ``takeover=PATH``) makes the connections capturable:
    no QPACK dynamic table either way (we advertise capacity 0, our encoder uses none;
    header blocks get larger, see README), so ``server.server.handoff(path)``,
    ``move_to()`` and a successor's ``serve(..., takeover=path)`` carry them along.
    A request whose response is in progress continues in the successor when
    ``capture_request(stream)`` returns its JSON-able state and ``resume_request(stream,
    state)`` finishes it there (``stream.body_sent`` bytes were already written);
    otherwise the successor resets that stream with H3_REQUEST_CANCELLED.
    ``handoff_grace`` (seconds, 0: none) lets requests in progress finish, for up to that
    long, before a handoff or move stops the connections (for applications that cannot
    resume them, e.g. ASGI). Without ``migratable`` a handoff or move raises
    ValueError."""
    if "capture" in kwargs or "restore" in kwargs:
        raise ValueError("HTTP/3 servers take capture_request/resume_request (per request)")
    migratable = migratable or kwargs.get("takeover") is not None
    options: dict[str, Any] = {
        "enable_connect_protocol": enable_connect_protocol,
        "enable_datagram": enable_datagram,
        "max_table_capacity": max_table_capacity,
    }
    if migratable:
        from .handoff import hooks, wait_for_requests

        options["capturable"] = True
        kwargs["capture"], kwargs["restore"] = hooks(capture_request, resume_request)
        if handoff_grace > 0:  # in each worker too: its own connections' requests
            then = kwargs.get("on_handover")

            def on_handover(handover: Handover) -> None:
                view = H3Server(QuicServer(handover.runner, handover))
                handover.before_stop = lambda: wait_for_requests(view, handoff_grace)
                if then is not None:
                    then(handover)

            kwargs["on_handover"] = on_handover
    server = await quic_serve(
        None, host, port, configuration=_h3_configuration(configuration, enable_datagram),
        face_class=_face_class(options, handler), **kwargs,
    )
    return H3Server(server)


__all__ = [
    "ConnectionClosedError",
    "H3Client",
    "H3QuicConnection",
    "H3Server",
    "H3Stream",
    "RequestRefused",
    "StreamResetError",
    "connect",
    "normalize_headers",
    "serve",
]
