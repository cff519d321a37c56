"""The asyncio face of one QUIC connection."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from cryptography import x509

from ..transport import qlog
from ..transport.connection import Connection, StreamLimitReached
from ..transport.events import (
    ConnectionTerminated,
    DatagramReceived,
    Event,
    HandshakeCompleted,
    NewTokenReceived,
    PathMigrated,
    PathProbeFailed,
    SessionTicketReceived,
    StopSendingReceived,
    StreamOpened,
    StreamReadable,
    StreamReset,
    StreamsAvailable,
    StreamWritable,
)
from ..transport.path import PROBE_MIGRATE
from .errors import ConnectionClosedError
from .mallocpolicy import POLICY as MALLOC_POLICY
from .runner import EndpointRunner
from .sendbuffer import SendGate
from .streams import QuicStreamReader, QuicStreamWriter

log = logging.getLogger("quicflow.aio")

#: Application error code of a stream whose handler raised (RESET_STREAM/STOP_SENDING).
HANDLER_FAILED = 0x101
#: stream reader/writer pairs a connection holds beyond twice its open streams before it
#: lets go of those of ended streams (``QuicConnection._prune``)
PRUNE_SLACK = 64

StreamHandler = Callable[[QuicStreamReader, QuicStreamWriter], Awaitable[None] | None]


class QuicConnection:
    """A connection: open streams, accept the peer's, close.

    Futures, the queue of accepted streams and the task set are made when first needed:
    an idle server connection holds none of them.
    """

    __slots__ = (
        "runner", "conn", "loop", "stream_handler", "_readers", "_writers", "_incoming",
        "_terminated", "_is_connected", "_is_terminated", "_streams_waiters", "held_window",
        "_close_info", "_close_exc", "_tasks", "_datagrams", "_datagram_waiter",
        "datagrams_dropped",
        "app_state", "send_limit", "send_gate", "_send_accounted", "_migration",
        "_connect_waiters", "_close_waiters", "__weakref__",
    )
    #: why connections of this face class cannot be handed over or moved (None: they
    #: can); a subclass with state of its own sets it unless its capture hooks cover it
    capture_refusal: str | None = None

    def __init__(
        self,
        runner: EndpointRunner,
        conn: Connection,
        *,
        stream_handler: StreamHandler | None = None,
    ) -> None:
        self.runner = runner
        self.conn = conn
        self.loop = runner.loop
        self.stream_handler = stream_handler
        self._readers: dict[int, QuicStreamReader] = {}
        self._writers: dict[int, QuicStreamWriter] = {}
        self._incoming: asyncio.Queue[tuple[QuicStreamReader, QuicStreamWriter]] | None = None
        self._terminated: asyncio.Future[None] | None = None
        self._is_connected = False
        self._is_terminated = False
        self._streams_waiters: list[asyncio.Future[None]] = []  # blocked create_stream()s
        #: why it closed, once it did: ConnectionClosedError's arguments; the exception
        #: itself (and its message) is made when first raised or handed to a waiter
        #: (most short connections close with nobody asking)
        self._close_info: tuple[int, str, bool, int | None, bool] | None = None
        self._close_exc: ConnectionClosedError | None = None
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._datagrams: collections.deque[bytes] | None = None  # made by the first one
        self._datagram_waiter: asyncio.Future[None] | None = None
        self.datagrams_dropped = 0  # received but not read in time (queue full)
        #: the connection's receive window as last reported to the malloc policy (0:
        #: not counted; the runner counts it from ``add_face`` until the end)
        self.held_window = 0
        self.app_state: dict[str, Any] = {}
        # written-but-unacknowledged bytes: this connection's bound and its share of the
        # endpoint's (sendbuffer.py)
        self.send_limit = conn.configuration.send_buffer_per_connection
        self.send_gate = SendGate(self.loop)
        self._send_accounted = 0
        self._migration: asyncio.Future[tuple[Any, ...]] | None = None
        # one future per wait_connected()/wait_closed() call (made by the call): a waiter
        # cancelled alone leaves the others waiting, without a shield per call
        self._connect_waiters: list[asyncio.Future[None]] | None = None
        self._close_waiters: list[asyncio.Future[None]] | None = None

    # ------------------------------------------------------------------ state

    @property
    def closed(self) -> bool:
        return self._close_info is not None

    def _error(self) -> ConnectionClosedError:
        """The exception that says why the connection closed (made on first use)."""
        error = self._close_exc
        if error is None:
            error = self._close_exc = ConnectionClosedError(
                *(self._close_info or (0, "connection closed", False, None, False)))
        return error

    @property
    def _close_error(self) -> ConnectionClosedError | None:
        """The exception once the connection closed, else None."""
        return None if self._close_info is None else self._error()

    @property
    def alpn_protocol(self) -> str | None:
        return self.conn.alpn_protocol

    @property
    def session_resumed(self) -> bool:
        """The handshake resumed a session from a ticket (no certificate exchanged)."""
        return self.conn.session_resumed

    @property
    def early_data_accepted(self) -> bool:
        """The server accepted the client's 0-RTT data (known on a client once the
        server's EncryptedExtensions came; on a server at the ClientHello)."""
        return self.conn.early_data_accepted

    @property
    def peer_certificates(self) -> list[x509.Certificate]:
        """The peer's certificate chain (``cryptography`` certificates, leaf first) once
        connected: the server's on a client, the client's on a server (empty when the
        client presented none)."""
        return self.conn.peer_certificates

    def stats(self) -> dict[str, Any]:
        """Counters of this connection, its endpoint and its socket (plain dict)."""
        from .stats import connection_stats, datapath_stats, endpoint_stats

        return {
            "connection": connection_stats(self.conn),
            "endpoint": endpoint_stats(self.runner),
            "datapath": datapath_stats(self.runner),
        }

    @property
    def peer_address(self) -> tuple[Any, ...]:
        """The address the connection sends to now (a server's preferred address once a
        client moved there; a migrated client's new address on a server)."""
        return tuple(self.conn.peer_address)

    @property
    def local_address(self) -> tuple[Any, ...]:
        """(client) The local address and port the connection sends from now."""
        return self.runner.transport.local_address

    async def migrate(self, host: str | None = None, port: int = 0) -> tuple[Any, ...]:
        """(client) Move the connection to a new local address or port (RFC 9000 §9).

        A new socket is bound to ``host:port`` (default: the current socket's wildcard
        address, a new port) and connected to the server; the new path is validated
        with PATH_CHALLENGE and a connection ID never used before, while the data keeps
        flowing on the old path. Once the server answers, everything goes on the new
        path (RTT and congestion state start afresh), the old connection ID is retired
        and the old socket closed; returns the new local address. If the server does
        not answer within three probe timeouts, the connection stays where it was and
        :class:`MigrationError` says so. Also raised at once when migration is not
        allowed or possible: the server sent disable_active_migration, it gave no spare
        connection ID, another migration runs, or the connection shares its socket
        (``client_endpoint``). Waits for the handshake to be confirmed and a spare
        connection ID from the server first (three probe timeouts at most).
        """
        from ..transport.pathprobe import MigrationError, spare_peer_cid, start_probe
        from .paths import open_probe_socket

        self.raise_if_closed()
        conn = self.conn
        runner = self.runner
        if not conn.is_client or runner.connected_peer is None:
            raise MigrationError("migrate() moves a client connection made by connect(); "
                                 "a shared client socket or a server cannot")
        if self._migration is not None and not self._migration.done():
            raise MigrationError("a migration is already in progress")
        await self.wait_connected()
        # a client's handshake is confirmed by HANDSHAKE_DONE, one round trip at most;
        # our server's spare CIDs follow its first 1-RTT packet from us (our request, or
        # our ACK of HANDSHAKE_DONE): one more round trip
        deadline = self.loop.time() + 3 * conn.pto()
        while self.loop.time() < deadline and not (
            conn.handshake_confirmed
            and (spare_peer_cid(conn) is not None or not conn.peer_cid)
        ):
            await asyncio.sleep(conn.pto() / 4)
            self.raise_if_closed()
        start_probe(conn, self.loop.time())
        try:
            open_probe_socket(runner, host, port, runner.connected_peer)
        except (OSError, MigrationError) as exc:
            conn.probe = None
            if isinstance(exc, MigrationError):
                raise
            raise MigrationError(f"cannot open a socket on {host or '*'} port {port}: "
                                 f"{exc}") from None
        future: asyncio.Future[tuple[Any, ...]] = self.loop.create_future()
        self._migration = future
        self.flush()
        return await future

    def _on_path_event(self, event: Event) -> None:
        from ..transport.pathprobe import MigrationError

        future = self._migration
        if future is None or future.done() or event.kind != PROBE_MIGRATE:  # type: ignore[union-attr]
            return
        if type(event) is PathMigrated:
            future.set_result(self.runner.transport.local_address)
        else:
            future.set_exception(MigrationError(event.reason))  # type: ignore[union-attr]

    def raise_if_closed(self) -> None:
        if self._close_info is not None:
            raise self._error()

    async def wait_connected(self) -> None:
        """Wait for the handshake; raises ConnectionClosedError when it fails."""
        if self._is_connected:
            return
        if self._close_info is not None:
            raise self._error()
        waiters = self._connect_waiters
        if waiters is None:
            waiters = self._connect_waiters = []
        waiter: asyncio.Future[None] = self.loop.create_future()
        waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter.cancelled():
                _discard(waiters, waiter)

    async def wait_closed(self) -> None:
        """Wait until the connection is fully terminated."""
        if self._is_terminated:
            return
        waiter = self._close_waiter()
        try:
            await waiter
        finally:
            if waiter.cancelled() and self._close_waiters is not None:
                _discard(self._close_waiters, waiter)

    async def wait_closed_for(self, timeout: float) -> bool:
        """Wait until the connection is fully terminated, at most ``timeout`` seconds;
        whether it is (one future and one loop timer: no task, unlike ``wait_for``)."""
        if self._is_terminated:
            return True
        waiter = self._close_waiter()
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            if self._close_waiters is not None and not self._is_terminated:
                _discard(self._close_waiters, waiter)
        return self._is_terminated

    def _close_waiter(self) -> asyncio.Future[None]:
        waiters = self._close_waiters
        if waiters is None:
            waiters = self._close_waiters = []
        waiter: asyncio.Future[None] = self.loop.create_future()
        waiters.append(waiter)
        return waiter

    def _incoming_queue(self) -> asyncio.Queue[tuple[QuicStreamReader, QuicStreamWriter]]:
        if self._incoming is None:
            self._incoming = asyncio.Queue()
        return self._incoming

    def flush(self) -> None:
        self.runner.schedule_flush(self.conn)

    def sync_send_buffer(self) -> None:
        """Mirror the connection's unacknowledged written bytes into the endpoint's
        budget; wake a blocked writer when space was freed."""
        used = self.conn.send_buffered
        before = self._send_accounted
        if used != before:
            self._send_accounted = used
            budget = self.runner.send_budget
            budget.account(before, used)
            if used < before and used <= self.send_limit:
                if budget.over_fair_share(used, len(self.runner.faces)):
                    # still over its fair share: a writer woken now would only wait
                    # again. A later acknowledgement looks again, and the end of the
                    # pressure wakes it (as send_buffer_full() would have registered it)
                    if self.send_gate._waiters:
                        budget.share_waiters[self.send_gate] = None
                else:
                    self.send_gate.wake_one()

    def send_buffer_full(self) -> SendGate | None:
        """The gate to wait at when this connection or the endpoint is over its bound."""
        held = self.conn.send_buffered
        if held > self.send_limit:
            return self.send_gate
        budget = self.runner.send_budget
        if budget.used > budget.limit:
            return budget.gate
        if budget.over_fair_share(held, len(self.runner.faces)):
            budget.share_waiters[self.send_gate] = None  # woken when the pressure ends
            return self.send_gate  # or as its own bytes are acknowledged
        return None

    def after_read(self) -> None:
        """An application read (outside a receive turn) may owe the peer credit: window
        space (MAX_DATA, MAX_STREAM_DATA) or, when it ended a peer's stream, a stream
        slot (MAX_STREAMS): a send is scheduled for it. Nothing else may send soon: a
        peer waiting for the credit with nothing in flight waited for the idle timeout."""
        c = self.conn
        if (c.flow.pending_max_data or c.pending_stream_updates
                or c.bidi.pending_max_streams or c.uni.pending_max_streams):
            self.flush()
        held = self.held_window
        if held and c.flow.window != held:  # the window grew: the malloc policy follows
            self.held_window = c.flow.window
            MALLOC_POLICY.windows_changed(c.flow.window - held)

    # ------------------------------------------------------------------ streams

    def _faces(self, stream_id: int) -> tuple[QuicStreamReader, QuicStreamWriter]:
        readers = self._readers
        reader = readers.get(stream_id)
        if reader is None:
            if len(readers) >= 2 * len(self.conn.streams) + PRUNE_SLACK:
                self._prune()
            reader = readers[stream_id] = QuicStreamReader(self, stream_id)
            self._writers[stream_id] = QuicStreamWriter(self, stream_id)
        return reader, self._writers[stream_id]

    def _prune(self) -> None:
        """Let go of the reader and writer of each stream the connection has forgotten
        (both its halves ended, its data read): one long connection serving stream after
        stream (an HTTP/3 client's requests) otherwise kept a pair per stream it ever had
        for its whole life. The application may still hold them; they go on working
        (a read gives b"", a write raises as on an ended stream). Called when the pairs
        held reach twice the streams open plus ``PRUNE_SLACK``: O(1) amortised per stream.
        A pair with a waiting reader or writer is kept (it is woken with the rest)."""
        streams = self.conn.streams
        readers = self._readers
        writers = self._writers
        gone = [sid for sid, reader in readers.items()
                if sid not in streams and reader._waiter is None
                and writers[sid]._waiter is None]
        for sid in gone:
            del readers[sid]
            del writers[sid]

    async def create_stream(
        self, bidirectional: bool = True
    ) -> tuple[QuicStreamReader, QuicStreamWriter]:
        """Open a stream; waits while the peer's stream limit is reached."""
        while True:
            self.raise_if_closed()
            try:
                stream_id = self.conn.open_stream(bidirectional)
            except StreamLimitReached:
                limits = self.conn.bidi if bidirectional else self.conn.uni
                if limits.blocked_pending:  # STREAMS_BLOCKED goes now (RFC 9000 §4.6)
                    self.flush()
                waiter = self.loop.create_future()
                self._streams_waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._streams_waiters:
                        self._streams_waiters.remove(waiter)
                continue
            return self._faces(stream_id)

    async def accept_stream(self) -> tuple[QuicStreamReader, QuicStreamWriter]:
        """The next stream the peer opened (when no stream_handler was given)."""
        incoming = self._incoming_queue()
        while True:
            if not incoming.empty():
                return incoming.get_nowait()
            self.raise_if_closed()
            if self._terminated is None:
                self._terminated = self.loop.create_future()
            getter: asyncio.Future[Any] = asyncio.ensure_future(incoming.get())
            waiters: set[asyncio.Future[Any]] = {getter, self._terminated}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                pair: tuple[QuicStreamReader, QuicStreamWriter] = getter.result()
                return pair
            getter.cancel()

    # ------------------------------------------------------------------ datagrams

    #: received DATAGRAM frames kept until read; more are dropped (``datagrams_dropped``)
    DATAGRAM_QUEUE = 1024

    def send_datagram(self, data: bytes) -> None:
        """Send ``data`` in one DATAGRAM frame (RFC 9221): unreliable, unordered, never
        retransmitted. Both sides need ``Configuration.max_datagram_frame_size`` > 0;
        ValueError when the peer does not accept them or ``data`` does not fit."""
        self.raise_if_closed()
        self.conn.send_datagram(data)
        self.flush()

    async def receive_datagram(self) -> bytes:
        """The next DATAGRAM frame's payload; raises ConnectionClosedError once the
        connection is closed and none is left."""
        while not self._datagrams:
            self.raise_if_closed()
            if self._terminated is None:
                self._terminated = self.loop.create_future()
            waiter = self._datagram_waiter = self.loop.create_future()
            try:
                await asyncio.wait({waiter, self._terminated},
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._datagram_waiter = None
        assert self._datagrams is not None
        return self._datagrams.popleft()

    def _on_datagram(self, data: bytes) -> None:
        queue = self._datagrams
        if queue is None:
            queue = self._datagrams = collections.deque()
        if len(queue) >= self.DATAGRAM_QUEUE:
            queue.popleft()
            self.datagrams_dropped += 1
        queue.append(data)
        waiter = self._datagram_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ handoff

    async def stop(self) -> None:
        """Stop this face for a handoff: cancel the stream handler tasks and wait for
        them (what they wrote so far stays in the connection)."""
        tasks = list(self._tasks or ())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def has_tasks(self) -> bool:
        """Whether stream handler tasks of this connection are still running."""
        return any(not t.done() for t in self._tasks or ())

    def track_task(self, task: asyncio.Task[Any]) -> None:
        """Count ``task`` among this connection's handler tasks (``stop()`` cancels it)."""
        self._keep_task(task)

    def mark_connected(self) -> None:
        """The connection was restored after its handshake (handoff)."""
        self._on_connected()

    def _on_connected(self) -> None:
        self._is_connected = True
        waiters = self._connect_waiters
        if waiters:
            self._connect_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def stream_faces(self) -> dict[int, tuple[QuicStreamReader, QuicStreamWriter]]:
        """Reader and writer of every open stream of the connection."""
        return {sid: self._faces(sid) for sid in self.conn.stream_ids()}

    # ------------------------------------------------------------------ closing

    def close(self, error_code: int = 0, reason: str = "") -> None:
        """Close with an application error code and reason (CONNECTION_CLOSE 0x1d)."""
        if not self.conn.terminated:
            self.conn.close(error_code, reason, now=self.loop.time())
            self.flush()

    # ------------------------------------------------------------------ events

    def handle_events(self, events: list[Event]) -> None:
        for event in events:
            cls = type(event)
            if cls is StreamReadable:
                reader = self._readers.get(event.stream_id)  # type: ignore[union-attr]
                if reader is not None:
                    waiting = reader._waiter is not None
                    reader._wake()
                    sid = event.stream_id  # type: ignore[union-attr]
                    if waiting and (self.conn.stream_complete(sid)
                                    or self.conn.read_owes_credit(sid)):
                        # (after the wake: it runs first) the read that ends the stream,
                        # or gives the peer window credit, goes with the round's ACK
                        self.runner.defer_send(self.conn)
            elif cls is StreamWritable:
                writer = self._writers.get(event.stream_id)  # type: ignore[union-attr]
                if writer is not None and not writer._gated:  # (a gate wakes the rest)
                    writer._wake()
            elif cls is StreamOpened:
                self._on_stream_opened(event.stream_id)  # type: ignore[union-attr]
            elif cls is StreamReset or cls is StopSendingReceived:
                sid = event.stream_id  # type: ignore[union-attr]
                if sid in self._readers:
                    self._readers[sid]._wake()
                    self._writers[sid]._wake()
            elif cls is StreamsAvailable:
                if self._streams_waiters:
                    self._wake_stream_openers()
            elif cls is HandshakeCompleted:
                if self._streams_waiters:  # the peer's stream limits are known now
                    self._wake_stream_openers()
                self._is_connected = True
                if self._connect_waiters:
                    self._on_connected()
            elif cls is ConnectionTerminated:
                self._on_close_event(event)  # type: ignore[arg-type]
            elif cls is DatagramReceived:
                self._on_datagram(event.data)  # type: ignore[union-attr]
            elif cls is PathMigrated or cls is PathProbeFailed:
                self._on_path_event(event)
            elif cls is NewTokenReceived:
                self.runner.endpoint.store_token(self.conn, event.token)  # type: ignore[union-attr]
            elif cls is SessionTicketReceived:
                self.runner.endpoint.store_ticket(self.conn, event.ticket)  # type: ignore[union-attr]
        self.sync_send_buffer()

    def _on_stream_opened(self, stream_id: int) -> None:
        reader, writer = self._faces(stream_id)
        if self.stream_handler is not None:
            result = self.stream_handler(reader, writer)
            if asyncio.iscoroutine(result):
                task = self.loop.create_task(self._run_handler(result, writer))
                task.add_done_callback(partial(_close_unstarted, result))
                self._keep_task(task)
                self.runner.defer_send(self.conn)
        else:
            self._incoming_queue().put_nowait((reader, writer))

    def _keep_task(self, task: asyncio.Task[Any]) -> None:
        """Hold a reference to ``task`` until it is done (the set is made on first use)."""
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run_handler(self, coro: Awaitable[None], writer: QuicStreamWriter) -> None:
        """Run a stream handler; a failure is logged (``quicflow.aio``) and abandons
        its stream, never the connection, and nothing reaches the loop's handler."""
        try:
            await coro
        except ConnectionError:
            pass
        except Exception:
            log.exception("stream handler failed on stream %d", writer.stream_id)
            if not self.closed:
                self._abandon_stream(writer.stream_id, HANDLER_FAILED)

    def _abandon_stream(self, stream_id: int, error_code: int) -> None:
        """After its handler failed: RESET_STREAM if we can still send on the stream,
        STOP_SENDING on the peer's unidirectional one; nothing for a stream already
        finished and forgotten. Never raises (it runs in clean-up)."""
        try:
            stream = self.conn.streams.get(stream_id)
            if stream is None:
                return
            if stream.send is not None:
                self.conn.reset_stream(stream_id, error_code)
                self.sync_send_buffer()
            elif stream.recv is not None:
                self.conn.stop_sending(stream_id, error_code)
            self.flush()
        except Exception:  # noqa: BLE001 - clean-up must not replace the handler's error
            log.debug("could not abandon stream %d", stream_id, exc_info=True)

    def _on_close_event(self, event: ConnectionTerminated) -> None:
        if self.conn.qlog is not None:
            qlog.connection_closed(self.conn, self.loop.time(), event)
        if self._close_info is None:
            application = event.frame_type is None and event.reason != "idle timeout"
            if self.conn.close_error is not None and not event.by_peer:
                application = self.conn.close_error[3]
            self._close_info = (
                event.error_code, event.reason, event.by_peer, event.frame_type, application
            )
        self._wake_all()

    def _wake_all(self) -> None:
        """Wake whoever waits on this connection (each check is cheap: a connection that
        closes with nobody waiting, as most short ones do, makes no call here)."""
        if self._migration is not None and not self._migration.done():
            self._migration.set_exception(self._error())
            self._migration.exception()  # mark retrieved
        waiters = self._connect_waiters
        if waiters:
            self._connect_waiters = None
            error = self._error()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(error)
                    waiter.exception()  # mark retrieved
        if self._readers:
            for reader in self._readers.values():
                reader._wake()
            for writer in self._writers.values():
                writer._wake()
        gate = self.send_gate
        if gate._waiters:
            gate.wake_all()
        if self._streams_waiters:
            self._wake_stream_openers()

    def _wake_stream_openers(self) -> None:
        waiters, self._streams_waiters = self._streams_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def on_terminated(self) -> None:
        if self._send_accounted:  # nothing of it will be sent: release its share
            self.runner.send_budget.account(self._send_accounted, 0)
            self._send_accounted = 0
        self.runner.send_budget.share_waiters.pop(self.send_gate, None)
        if self._close_info is None:
            self._close_info = (0, "connection closed", False, None, False)
        self._wake_all()
        self._is_terminated = True
        if self._terminated is not None and not self._terminated.done():
            self._terminated.set_result(None)
        waiters = self._close_waiters
        if waiters:
            self._close_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        # the readers and writers refer back to this face: without these references the
        # connection's whole state (~200 objects) goes by reference counting once the
        # application lets go of it, instead of waiting as a cycle for a full collection
        # (which a server's raised collector thresholds put off for tens of thousands of
        # connections); they were all woken above and need nothing of these maps
        self._readers = {}
        self._writers = {}


def _expire(waiter: asyncio.Future[None]) -> None:
    """``wait_closed_for``'s timer: stop waiting (the caller sees it is not closed)."""
    if not waiter.done():
        waiter.set_result(None)


def _discard(waiters: list[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    try:
        waiters.remove(waiter)
    except ValueError:
        pass


def _close_unstarted(coro: Coroutine[Any, Any, Any], task: asyncio.Task[Any]) -> None:
    """A handler task cancelled before its first step (a handoff stops the connection
    right after the stream opened) never awaited the handler's coroutine: close it, or
    it warns "coroutine ... was never awaited" when collected. (A coroutine that ran is
    finished by then: closing it does nothing.)"""
    if task.cancelled():
        coro.close()
