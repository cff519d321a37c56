"""Zero-downtime takeover of a running server on the same host (issue 7, items 2 and 3).

Old process: :meth:`Handover.offer` listens on a unix socket (``migration.handoff``).
When a successor connects, the server stops reading its UDP socket, stops every
connection's asyncio face (its stream handler tasks are cancelled), asks the
application's ``capture`` hook for each connection's state (JSON-able), captures and
releases the connection (``transport.snapshot``: serial, sealed with the successor's
key), and passes the UDP socket with the sealed snapshots. ``handed_off`` resolves with
the number of connections handed over.

Successor: :func:`restore_server` restores each snapshot into a fresh endpoint on the
passed socket, gives each connection an asyncio face, re-attaches its open streams as
readers/writers and calls the application's ``restore`` hook with them, before the
socket is read again; then it can offer a handoff itself.

Connections that cannot be captured (handshake not yet confirmed, closing) are not
handed over: they end with the old process (a client still in its handshake retries).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..migration.handoff import HandoffError, HandoffListener, Offer, Received, refuse
from ..migration.server_keys import (
    SecretsError,
    adopt_secrets,
    merge_strikes,
    seal_secrets,
    seal_strikes,
)
from ..transport.codec import SnapshotError
from ..transport.connection import Connection
from ..transport.snapshot import SnapshotGuard, capture_sealed, restore_sealed
from .connection import QuicConnection, StreamHandler
from .streams import QuicStreamReader, QuicStreamWriter

if TYPE_CHECKING:
    from .runner import EndpointRunner

StreamFaces = dict[int, tuple[QuicStreamReader, QuicStreamWriter]]
#: ``capture(connection)`` -> JSON-able state (or an awaitable of it); runs after the
#: connection's asyncio face has stopped.
CaptureHook = Callable[[QuicConnection], Any]
#: ``restore(connection, state, streams)`` in the new process; ``streams`` maps each
#: open stream id to its (reader, writer).
RestoreHook = Callable[[QuicConnection, Any, StreamFaces], Awaitable[None] | None]

FORMAT = "quicflow-handoff-1"
#: connections captured at a time: the next ones are stopped only when the successor
#: has restored these (a captured connection is paused until its restore)
WINDOW = 16
BATCH = 8  # connections stopped together (stop() waits for their tasks to end)
#: seconds the successor restores (and processes forwarded datagrams) before it serves
RESTORE_SLICE = 0.01
#: seconds the successor waits for the next message of the old process
CHANNEL_TIMEOUT = 60.0



class Handover:
    """A server's handoff state: the replay record and the offer, if any."""

    def __init__(
        self,
        runner: EndpointRunner,
        capture: CaptureHook | None,
        guard: SnapshotGuard | None = None,
        *,
        handler: StreamHandler | None = None,
        restore: RestoreHook | None = None,
        face_class: type[QuicConnection] = QuicConnection,
    ) -> None:
        self.runner = runner
        self.face_class = face_class  # built for connections restored here
        self.capture = capture
        self.handler = handler  # for connections restored here later (cross-host moves)
        self.restore = restore
        self.guard = guard or SnapshotGuard()
        self.listener: HandoffListener | None = None
        self.handed_off: asyncio.Future[int] = runner.loop.create_future()
        self.skipped = 0  # connections that could not be captured
        self.skip_reasons: dict[str, int] = {}
        #: seconds a handoff waits for handshakes in progress before it captures
        self.handshake_grace = 3.0
        #: seconds spent: "stop" (faces), "capture" (hooks + snapshots), "send"
        self.timings: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.moves: set[asyncio.Task[None]] = set()
        self.moved_in = 0  # connections restored here from another host
        #: awaited before the connections are stopped for a handoff or a move (e.g. an
        #: application letting requests it cannot resume elsewhere finish for a while)
        self.before_stop: Callable[[], Awaitable[None]] | None = None

    async def capture_one(
        self, face: QuicConnection, key: bytes,
        prepare: Callable[[Connection], None] | None = None,
    ) -> bytes | None:
        """Capture and release one stopped connection, sealed with ``key``; None (and
        counted in ``skipped``) when it cannot be captured (handshake, closing).
        ``prepare(conn)`` runs right before the capture, with nothing sent in between."""
        runner = self.runner
        conn = face.conn
        conn.pop_events()
        try:
            state = None
            if self.capture is not None:
                state = self.capture(face)
                if asyncio.iscoroutine(state):
                    state = await state
            if prepare is not None:
                prepare(conn)
            return capture_sealed(
                conn, runner.loop.time(), key, json.dumps(state).encode(), guard=self.guard,
                wall_time=time.time(), local_address=runner.transport.local_address,
            )
        except SnapshotError as exc:
            self.skipped += 1  # not established yet, or closing: ends here
            self.skip_reasons[str(exc)] = self.skip_reasons.get(str(exc), 0) + 1
            return None

    def offer(self, path: str) -> None:
        """Accept one successor at ``path`` (unix socket, mode 0600, same uid only)."""
        if self.listener is not None:
            raise RuntimeError("a handoff is already offered")
        self.listener = HandoffListener(path)
        self.runner.loop.add_reader(self.listener.fileno(), self._on_connect)

    def close(self, *, unlink: bool = True) -> None:
        """Stop offering (``unlink=False``: leave the path, a successor owns it now)."""
        if self.listener is not None:
            try:
                self.runner.loop.remove_reader(self.listener.fileno())
            except (ValueError, OSError):
                pass
            self.listener.close(unlink=unlink)
            self.listener = None

    def _on_connect(self) -> None:
        listener = self.listener
        if listener is None or self._task is not None:
            return
        accepted = listener.accept()
        if accepted is None:
            return
        channel, kind, payload = accepted
        if kind == "group":  # a worker group cannot take over a single process
            refuse(channel, f"the server at {listener.path} runs without workers: start "
                   "the successor without --workers (workers take over from workers)")
            return
        if kind == "move":  # a command asks us to move connections to another host
            from .moving import serve_move_request

            task = self.runner.loop.create_task(serve_move_request(self, channel, payload))
            self.moves.add(task)
            task.add_done_callback(self.moves.discard)
            return
        self.runner.loop.remove_reader(listener.fileno())
        assert isinstance(payload, bytes)
        self._task = self.runner.loop.create_task(self._hand_over(channel, payload))

    async def _hand_over(self, channel: Any, key: bytes) -> None:
        try:
            count = await self._capture_and_send(channel, key)
        except BaseException as exc:
            self.close()
            if not self.handed_off.done():
                self.handed_off.set_exception(exc)
            raise
        # the successor offers at the same path next: never unlink it from here
        self.close(unlink=False)
        if not self.handed_off.done():
            self.handed_off.set_result(count)

    async def _capture_and_send(self, channel: Any, key: bytes) -> int:
        """Hand the connections over one by one while serving the others: each one is
        stopped, captured and sent (the successor restores it at once and serves it from
        then on); datagrams read meanwhile for those handed over already are forwarded.
        So a connection pauses only for its own capture and restore, not for the whole
        switch."""
        runner = self.runner
        loop = runner.loop
        endpoint = runner.endpoint
        # no new connections; let the handshakes in progress finish (for a while), so
        # they can be handed over too
        endpoint.accepting = False
        deadline = loop.time() + self.handshake_grace
        while loop.time() < deadline and any(
            not f.conn.handshake_confirmed and not f.conn.terminated
            for f in runner.faces.values()
        ):
            await asyncio.sleep(0.01)
        if self.before_stop is not None:
            await self.before_stop()
        if runner.sockets is not None:
            runner.sockets.cap = 0  # no new per-connection sockets from here on
        t0 = time.monotonic()
        faces = list(runner.faces.values())
        # The listener and every per-connection socket go over first (the successor holds
        # copies; we go on reading ours until each connection's turn), keyed by a CID of
        # their connection.
        sockets = [runner.transport.socket]
        by_cid: dict[str, int] = {}
        for face in faces:
            sock = runner.connection_socket(face.conn)
            if sock is not None:
                by_cid[face.conn.recv_key_cid().hex()] = len(sockets)
                sockets.append(sock)
        offer = Offer(channel)
        offer.begin({"format": FORMAT, "guard": self.guard.export().decode(),
                     "connection_sockets": by_cid,
                     "secrets": seal_secrets(endpoint, key)}, sockets)
        endpoint.forwarding = []
        runner.forward = lambda entries: offer.datagrams(
            [(data, len(data), addr, ecn) for data, addr, ecn in entries])
        size = 0
        stop_time = capture_time = 0.0
        detached: list[Any] = []
        try:
            for first in range(0, len(faces), BATCH):
                batch = [f for f in faces[first : first + BATCH] if not f.conn.terminated]
                # at most WINDOW captured connections wait for their restore: each of
                # them is paused, the others are served here meanwhile
                await _until_restored(offer, WINDOW - BATCH)
                started = time.monotonic()
                await asyncio.gather(*(face.stop() for face in batch))  # serving the rest
                stop_time += time.monotonic() - started
                for face in batch:
                    started = time.monotonic()
                    conn = face.conn
                    # what arrives for it from now on waits (and follows its snapshot)
                    endpoint.frozen[id(conn)] = []
                    while face.has_tasks():  # started by what arrived during stop()
                        await face.stop()
                    blob = await self.capture_one(face, key)
                    capture_time += time.monotonic() - started
                    held = endpoint.frozen.pop(id(conn), [])
                    if blob is None:  # it stays here (and ends with this process)
                        runner.deliver([(d, len(d), a, e) for d, a, e in held])
                        continue
                    detach_sock = runner.detach_connection_socket(conn)
                    if detach_sock is not None:
                        detached.append(detach_sock)  # the successor reads its copy now
                    runner.forget_connection(conn)  # its CIDs: forwarded from now on
                    face.on_terminated()
                    offer.snapshot(blob)  # blocking: the successor reads as we send
                    if held:
                        offer.datagrams([(d, len(d), a, e) for d, a, e in held])
                    size += len(blob)
            # the end: we read nothing more; what waits in the socket is the successor's
            runner.pause()
            if endpoint.forwarding:
                offer.datagrams([(d, len(d), a, e) for d, a, e in endpoint.forwarding])
        finally:
            endpoint.forwarding = None
            endpoint.frozen.clear()
            runner.forward = None
        t2 = time.monotonic()
        trailer: dict[str, Any] = {"guard": self.guard.export().decode()}
        strikes = seal_strikes(endpoint, key)  # (no 0-RTT accepted here from now on)
        if strikes is not None:
            trailer["strikes"] = strikes
        result = await loop.run_in_executor(None, offer.finish, trailer)
        self.timings = {"stop": stop_time, "capture": capture_time,
                        "send": t2 - t0 - capture_time - stop_time,
                        "ack": time.monotonic() - t2, "bytes": float(size)}
        for face in list(runner.faces.values()):  # not captured: they end here
            runner.remove_face(face.conn)
            face.on_terminated()
        runner.transport.close()  # the successor holds its own copies of the sockets
        for sock in detached:
            sock.close()
        if runner.sockets is not None:
            runner.sockets.close_all()
        restored = result.get("restored")
        if restored != offer.sent:
            raise HandoffError(f"successor restored {restored} of {offer.sent} connections")
        return offer.sent


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _until_restored(offer: Offer, most: int, timeout: float = 60.0) -> None:
    """Wait (serving the other connections) until at most ``most`` snapshots sent to
    the successor are not restored yet."""
    loop = asyncio.get_running_loop()
    fd = offer.channel.fileno()
    while offer.sent - offer.progress() > most:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, ready)
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            raise HandoffError("the successor stopped restoring") from None
        finally:
            loop.remove_reader(fd)


async def restore_server(
    runner: EndpointRunner,
    received: Received,
    *,
    handler: StreamHandler | None,
    restore: RestoreHook | None,
    face_class: type[QuicConnection] = QuicConnection,
) -> tuple[SnapshotGuard, int]:
    """Restore the snapshots of ``received`` into ``runner`` as they arrive, serving each
    restored connection at once (through its own socket, if it had one) and processing
    the datagrams the old process forwards for it; after the end mark, read the
    listening socket (``runner`` was made with ``read=False``). Returns the replay record
    and how many connections were restored."""
    header = received.header
    if header.get("format") != FORMAT:
        raise HandoffError("not a quicflow handoff (unknown format)")
    guard = SnapshotGuard()
    guard.merge(str(header.get("guard", "{}")).encode())
    sealed_keys = header.get("secrets")
    if isinstance(sealed_keys, str):  # (before any restore: their tokens use them)
        try:
            adopt_secrets(runner.endpoint, sealed_keys, received.key)
        except SecretsError as exc:
            raise HandoffError(str(exc)) from None
    by_cid = header.get("connection_sockets") or {}
    # Until the end mark, a short-header datagram for a CID this endpoint does not know
    # belongs to a connection still on its way (one read off a connection socket it was
    # not meant for: a socket's queue may hold other clients' datagrams): set aside and
    # dropped (QUIC sends it again), never answered with a stateless reset, which the
    # adopted reset key would make valid and so end that connection.
    runner.endpoint.forwarding = []
    try:
        return await _restore_all(runner, received, guard, by_cid, handler, restore,
                                  face_class, sealed_keys)
    finally:
        runner.endpoint.forwarding = None


async def _restore_all(
    runner: EndpointRunner, received: Received, guard: SnapshotGuard, by_cid: Any,
    handler: StreamHandler | None, restore: RestoreHook | None,
    face_class: type[QuicConnection], sealed_keys: Any,
) -> tuple[SnapshotGuard, int]:
    restored = 0
    loop = runner.loop
    frames: asyncio.Queue[Any] = asyncio.Queue()
    parser = received.frame_parser()
    channel = received.channel
    fd = channel.fileno()

    def on_readable() -> None:  # read in the loop: a reader thread starves for the GIL
        try:
            data = channel.recv(1 << 20)
            if not data:
                raise HandoffError("the old process closed the handoff channel early")
            for frame in parser.feed(data):
                frames.put_nowait(None if frame[0] == "end" else frame)
        except (OSError, ValueError, HandoffError) as exc:
            loop.remove_reader(fd)
            frames.put_nowait(exc if isinstance(exc, HandoffError)
                              else HandoffError(f"receiving the snapshots failed: {exc}"))
            return
        if parser.ended:
            loop.remove_reader(fd)

    loop.add_reader(fd, on_readable)
    slice_end = time.monotonic() + RESTORE_SLICE
    while True:
        if frames.empty():
            try:
                frame = await asyncio.wait_for(frames.get(), CHANNEL_TIMEOUT)
            except TimeoutError:
                loop.remove_reader(fd)
                raise HandoffError("the old process stopped sending") from None
        else:
            frame = frames.get_nowait()  # no loop turn per frame
        if frame is None:
            break
        if isinstance(frame, BaseException):
            loop.remove_reader(fd)
            raise frame
        kind, payload = frame
        if kind == "datagrams":
            runner.deliver(payload)
        else:
            one = restore_one(runner, payload, received.key, guard, handler, face_class)
            restored += 1
            index = by_cid.get(one[0].conn.recv_key_cid().hex())
            if type(index) is int and 0 < index < len(received.sockets):
                _attach(runner, one[0], received.sockets[index])
            start_restored(runner, [one], restore)
            received.report_progress(restored)  # the old process captures the next ones
        if frames.empty() or time.monotonic() >= slice_end:
            await asyncio.sleep(0)  # serve the restored connections (answer, send)
            slice_end = time.monotonic() + RESTORE_SLICE
    if received.trailer is not None:
        guard.merge(str(received.trailer.get("guard", "{}")).encode())
        if isinstance(sealed_keys, str):  # (a predecessor that sent its ticket key)
            strikes = received.trailer.get("strikes")
            merge_strikes(runner.endpoint, strikes if isinstance(strikes, str) else None,
                          received.key, time.time())
    runner.endpoint.forwarding = None  # every connection is here now
    runner.start_reading()  # the old process reads nothing more
    return guard, restored


def _attach(runner: EndpointRunner, face: QuicConnection, sock: Any) -> None:
    """Serve a restored connection through the socket it had (if this server gives
    connections sockets of their own; otherwise the listener serves it)."""
    try:
        runner.attach_connection_socket(face.conn, sock)
    except (ValueError, OSError):
        sock.close()  # what the kernel held for it is lost; QUIC sends it again


def restore_one(
    runner: EndpointRunner, sealed: bytes, key: bytes, guard: SnapshotGuard,
    handler: StreamHandler | None, face_class: type[QuicConnection] = QuicConnection,
) -> tuple[QuicConnection, Any, StreamFaces]:
    """Restore one sealed snapshot into ``runner`` (refused ones raise SnapshotError);
    returns the new face, the application's state and the open streams' faces."""
    endpoint = runner.endpoint
    conn, app_state = restore_sealed(
        sealed, key, guard=guard, wall_time=time.time(), engine=endpoint.engine,
        now=runner.loop.time(), configuration=endpoint.configuration,
    )
    endpoint.adopt(conn)
    face = face_class(runner, conn, stream_handler=handler)
    face.mark_connected()
    face.sync_send_buffer()  # its unacknowledged bytes count against this endpoint's budget
    runner.add_face(conn, face)
    return face, json.loads(app_state) if app_state else None, face.stream_faces()


def start_restored(
    runner: EndpointRunner, restored: list[tuple[QuicConnection, Any, StreamFaces]],
    restore: RestoreHook | None,
) -> None:
    """Flush the restored connections (their lost frames go out) and run the hooks."""
    for face, _, _ in restored:
        runner.schedule_flush(face.conn)
    for face, state, streams in restored:
        if restore is not None:
            result = restore(face, state, streams)
            if asyncio.iscoroutine(result):
                face.track_task(runner.loop.create_task(result))


__all__ = ["CaptureHook", "Handover", "RestoreHook", "StreamFaces", "restore_one",
           "restore_server", "start_restored"]
