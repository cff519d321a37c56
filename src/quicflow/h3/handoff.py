"""Handoff and moves of HTTP/3 server connections (the asyncio face's part).

``quicflow.h3.serve(..., migratable=True)`` serves HTTP/3 without QPACK dynamic tables
(see ``h3/snapshot.py``), and hands the transport's handoff machinery (``aio/handover.py``)
a ``capture`` and a ``restore`` hook that carry, per connection:

- the sans-I/O :class:`H3Connection` state (``capture_h3``);
- each request stream the face knows: the request head and trailers received, body bytes
  received but not yet read by the handler, what was sent (head, FIN, body bytes);
- for each request whose response was in progress (its handler was stopped before it
  finished), the application's own state from ``capture_request(stream)``.

In the successor, ``resume_request(stream, state)`` runs as that request's handler and
continues the response (``stream.body_sent`` says how many body bytes were already
written; they are in the transport's buffers and are delivered). A request in progress
for which there is no ``resume_request``, or whose ``capture_request`` returned None,
is reset with H3_REQUEST_CANCELLED by the successor: the client sees that stream fail,
never a hang, and the connection's other requests go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..transport.events import StreamReadable
from .errors import H3_REQUEST_CANCELLED
from .snapshot import H3CaptureError, b64, capture_h3, restore_h3, unb64

if TYPE_CHECKING:
    from .aio import H3QuicConnection, H3Stream

#: ``capture_request(stream)`` -> JSON-able state of a request whose response is in
#: progress (None: it cannot continue elsewhere)
RequestCapture = Callable[["H3Stream"], Any]
#: ``resume_request(stream, state)``: continues that response in the new process
RequestResume = Callable[["H3Stream", Any], Awaitable[None]]


def _headers(headers: list[tuple[bytes, bytes]] | None) -> list[list[str]] | None:
    return None if headers is None else [[b64(n), b64(v)] for n, v in headers]


def _unheaders(value: Any) -> list[tuple[bytes, bytes]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(nv, list) and len(nv) == 2 for nv in value
    ):
        raise H3CaptureError("malformed HTTP/3 state: headers")
    return [(unb64(n), unb64(v)) for n, v in value]


def in_progress(stream: H3Stream) -> bool:
    """A server request whose response its handler had not finished."""
    return (not stream._fin_sent and stream._reset_code is None
            and stream._stop_code is None)


async def capture_face(face: H3QuicConnection,
                       capture_request: RequestCapture | None) -> dict[str, Any]:
    """The JSON-able HTTP/3 state of a stopped server face (H3CaptureError: refused)."""
    if face.conn.is_client:
        raise H3CaptureError("HTTP/3 client connections are not captured")
    h3_state = capture_h3(face.h3)
    streams = []
    for sid, stream in face.h3_streams.items():
        app = None
        if in_progress(stream) and capture_request is not None:
            app = capture_request(stream)
            if asyncio.iscoroutine(app):
                app = await app
        streams.append({
            "id": sid, "headers": _headers(stream.headers),
            "trailers": _headers(stream.trailers),
            "chunks": b64(b"".join(stream._chunks)), "ended": stream._ended,
            "reset": stream._reset_code, "stop": stream._stop_code,
            "headers_sent": stream._headers_sent, "fin_sent": stream._fin_sent,
            "body_sent": stream.body_sent, "app": app,
        })
    return {"h3": h3_state, "streams": streams, "goaway": face.goaway_received}


def restore_face(face: H3QuicConnection, state: Any,
                 resume_request: RequestResume | None) -> None:
    """Install a captured HTTP/3 state into a restored face; start ``resume_request``
    for each request in progress (or reset those that cannot go on)."""
    from .aio import H3Stream

    if not isinstance(state, dict) or not isinstance(state.get("streams"), list):
        raise H3CaptureError("not a captured HTTP/3 connection")
    restored: list[tuple[H3Stream, Any]] = []
    for d in state["streams"]:
        if not isinstance(d, dict) or type(d.get("id")) is not int:
            raise H3CaptureError("malformed HTTP/3 state: request stream")
        stream = H3Stream(face, d["id"])
        stream.headers = _unheaders(d.get("headers"))
        stream.trailers = _unheaders(d.get("trailers"))
        chunk = unb64(d.get("chunks"))
        if chunk:
            stream._chunks.append(chunk)
        flags = [d.get(k) for k in ("ended", "headers_sent", "fin_sent")]
        codes = [d.get(k) for k in ("reset", "stop")]
        if not all(type(f) is bool for f in flags) or not all(
            c is None or type(c) is int for c in codes
        ) or type(d.get("body_sent")) is not int:
            raise H3CaptureError("malformed HTTP/3 state: request stream flags")
        stream._ended, stream._headers_sent, stream._fin_sent = (bool(f) for f in flags)
        stream._reset_code, stream._stop_code = codes
        stream.body_sent = d["body_sent"]
        restored.append((stream, d.get("app")))
    goaway = state.get("goaway")
    if goaway is not None and type(goaway) is not int:
        raise H3CaptureError("malformed HTTP/3 state: goaway")
    restore_h3(face.h3, state.get("h3"))  # checks all its fields before installing
    face.goaway_received = goaway
    if face.h3.peer_settings is not None and not face.settings_received.done():
        face.settings_received.set_result(dict(face.h3.peer_settings))
    for stream, _ in restored:
        face.h3_streams[stream.stream_id] = stream
    for stream, app in restored:
        if not in_progress(stream):
            continue
        if resume_request is None or app is None:
            stream.cancel(H3_REQUEST_CANCELLED)
            continue
        face.start_request(stream, resume_request(stream, app))
    # what arrived while the old process was stopping was read by nobody: read it now
    for sid in list(face.conn.streams):
        face._dispatch(face.h3.handle_event(StreamReadable(sid)))
    face.flush()


def requests_in_progress(server: Any) -> int:
    """How many requests of ``server`` (an H3Server) have a response in progress."""
    return sum(1 for face in server.connections if not face.closed
               for stream in face.h3_streams.values() if in_progress(stream))


async def wait_for_requests(server: Any, timeout: float) -> None:
    """Wait (up to ``timeout`` seconds) until no request of ``server`` (an H3Server) has
    a response in progress; new requests keep being served meanwhile."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and requests_in_progress(server):
        await asyncio.sleep(0.01)


def hooks(capture_request: RequestCapture | None, resume_request: RequestResume | None
          ) -> tuple[Callable[[Any], Awaitable[Any]], Callable[[Any, Any, Any], None]]:
    """The transport-level (``quicflow.serve``) capture and restore hooks."""

    async def capture(face: Any) -> Any:
        return await capture_face(face, capture_request)

    def restore(face: Any, state: Any, streams: Any) -> None:
        try:
            restore_face(face, state, resume_request)
        except H3CaptureError as exc:  # never serve half a state: end this connection
            from .errors import H3_INTERNAL_ERROR

            face.close(H3_INTERNAL_ERROR, str(exc))

    return capture, restore


__all__ = ["RequestCapture", "RequestResume", "capture_face", "hooks", "in_progress",
           "requests_in_progress", "restore_face", "wait_for_requests"]
