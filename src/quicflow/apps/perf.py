"""The QUIC performance protocol (draft-banks-quic-performance, ALPN ``perf``).

A client opens a bidirectional stream and sends the number of response bytes it wants as
an 8-byte big-endian integer, then any upload bytes, then FIN; the server reads to FIN and
answers with that many bytes, then FIN. A unidirectional client stream is upload only.

The response bytes are a fixed 64 KiB pattern repeated (byte ``k`` of a response is
``PATTERN[k % 65536]``), so a client can check what it receives cheaply (``verify=True``).

Counting: ``bytes_received`` is the sum of the response payloads the client read (the
download), ``bytes_sent`` the sum of the upload payloads it wrote (the 8-byte size headers
are not counted). Goodput is ``(bytes_received + bytes_sent) / seconds``, where ``seconds``
runs from the moment every connection finished its handshake to the end of the last stream.
``cpu_seconds`` is the client process's CPU time (user + system, all threads) in that same
window: with ``seconds`` it tells whether the client itself was what limited the goodput
(a client at one core has ``cpu_seconds`` close to ``seconds``).
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..aio import (
    ClientEndpoint,
    ConnectionClosedError,
    QuicConnection,
    QuicServer,
    QuicStreamReader,
    QuicStreamWriter,
    client_endpoint,
    connect,
    serve,
)
from ..aio.workers import CidPlan, WorkerGroupServer, worker_counters
from ..datapath.connected import DEFAULT_CONNECTION_SOCKETS
from ..datapath.socket import wildcard_host
from ..transport.config import Configuration
from .handoff_state import progress_table, resume, stopping
from .tasks import wait_all

ALPN = "perf"
PATTERN_SIZE = 64 * 1024
#: bytes written per ``write()`` call; a multiple of PATTERN_SIZE so the pattern stays aligned
CHUNK_SIZE = 16 * PATTERN_SIZE
#: largest read per ``read()`` call
READ_SIZE = 1 << 20
#: application error code used to reset a malformed request stream
PERF_REQUEST_ERROR = 0x1
#: extra seconds given to a handshake beyond ``timeout`` before giving up on it
HANDSHAKE_GUARD = 0.5


def _make_pattern() -> bytes:
    # Within each 256-byte block i*131 is a permutation of 0..255 (131 is odd); XOR with the
    # block number makes the blocks differ, so shifted or repeated data does not match.
    return bytes(((i * 131) ^ (i >> 8)) & 0xFF for i in range(PATTERN_SIZE))


PATTERN = _make_pattern()
#: the preallocated send buffer: PATTERN repeated to CHUNK_SIZE bytes
CHUNK = PATTERN * (CHUNK_SIZE // PATTERN_SIZE)


class PerfError(Exception):
    """A perf exchange went wrong (short response, bytes that differ from the pattern)."""


class PatternChecker:
    """Checks a byte stream against the repeated pattern, chunk by chunk."""

    def __init__(self) -> None:
        self.offset = 0
        # long enough that one READ_SIZE chunk at any pattern position is one slice
        self._ref = PATTERN * (READ_SIZE // PATTERN_SIZE + 1)

    def feed(self, data: bytes) -> int:
        """Check ``data`` (the next bytes); returns -1 if it matches, else the stream offset
        of the first chunk that differs."""
        ref = self._ref
        n = len(data)
        i = 0
        while i < n:
            pos = (self.offset + i) % PATTERN_SIZE
            take = min(n - i, len(ref) - pos)
            part = data if (i == 0 and take == n) else data[i : i + take]
            if part != ref[pos : pos + take]:
                return self.offset + i
            i += take
        self.offset += n
        return -1


# ---------------------------------------------------------------------------- server


@dataclass
class ServerStats:
    """What a perf server has done so far (plain counters)."""

    streams: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    bad_requests: int = 0


class PerfServerHandler:
    """The server side: a stream handler for :func:`quicflow.serve`, with the handoff
    hooks ``capture``/``restore`` (a response in progress continues from its offset).

    Per stream it keeps ``[header hex, size (-1 unknown), request read to FIN, sent]`` in
    ``connection.app_state["perf"]``, updated before every await, so a stream stopped at
    any await point is described exactly.
    """

    def __init__(self) -> None:
        self.stats = ServerStats()

    def __call__(self, reader: QuicStreamReader, writer: QuicStreamWriter
                 ) -> Coroutine[Any, Any, None]:
        # The progress entry is made here, not in the task: a handoff that stops the
        # connection before the task's first step still captures the stream (and the
        # successor serves it from the start).
        self.stats.streams += 1
        progress: list[Any] = ["", -1, False, 0]
        progress_table(writer.connection, "perf")[reader.stream_id] = progress
        return self._serve(reader, writer, progress)

    async def _serve(
        self, reader: QuicStreamReader, writer: QuicStreamWriter, p: list[Any]
    ) -> None:
        stats = self.stats
        table = progress_table(writer.connection, "perf")
        try:
            if reader.stream_id & 0x2:  # a unidirectional client stream: upload only
                await self._read_to_fin(reader)
                return
            while p[1] < 0:
                head = bytes.fromhex(p[0])
                if len(head) >= 8:
                    (p[1],) = struct.unpack("!Q", head[:8])
                    stats.bytes_received += len(head) - 8
                    break
                chunk = await reader.read(8 - len(head))
                if not chunk:
                    stats.bad_requests += 1
                    writer.reset(PERF_REQUEST_ERROR)
                    return
                p[0] = (head + chunk).hex()
            if not p[2]:
                await self._read_to_fin(reader)
                p[2] = True
            size = p[1]
            while p[3] < size:
                # drain first: with many streams, every first write would otherwise go past
                # the connection's send buffer bound at once
                await writer.drain()
                start = p[3] % PATTERN_SIZE
                n = min(size - p[3], CHUNK_SIZE - start)
                writer.write(CHUNK[start : start + n] if start or n < CHUNK_SIZE else CHUNK)
                stats.bytes_sent += n
                p[3] += n
            writer.write_eof()
        finally:
            if not stopping():
                table.pop(reader.stream_id, None)

    async def _read_to_fin(self, reader: QuicStreamReader) -> None:
        stats = self.stats
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            stats.bytes_received += len(data)

    # -- handoff hooks -----------------------------------------------------------------

    def capture(self, connection: QuicConnection) -> dict[str, Any]:
        """The state of the connection's streams in progress (JSON-able). Response bytes
        written but not yet sent are taken back (the pattern is written again after the
        restore), so the snapshot holds only what is in flight."""
        table = progress_table(connection, "perf")
        for sid, p in table.items():
            if p[1] >= 0 and p[2] and sid in connection.conn.streams:
                before, p[3] = p[3], connection.conn.take_back_unsent(sid)
                self.stats.bytes_sent -= before - p[3]
        return {str(sid): p for sid, p in table.items()}

    async def restore(
        self, connection: QuicConnection, state: Any,
        streams: dict[int, tuple[QuicStreamReader, QuicStreamWriter]],
    ) -> None:
        """Continue every stream in progress from where the old process stopped."""
        table = progress_table(connection, "perf")
        for key, p in (state or {}).items():
            sid = int(key)
            if sid not in streams or type(p) is not list or len(p) != 4:
                continue
            table[sid] = p
            reader, writer = streams[sid]
            resume(connection, self._serve(reader, writer, p))





def server_configuration(
    certificate_chain: list[Any], private_key: Any, **options: Any
) -> Configuration:
    """A server Configuration for perf (ALPN ``perf``) with the given certificate."""
    return Configuration(
        alpn_protocols=[ALPN],
        certificate_chain=certificate_chain,
        private_key=private_key,
        **options,
    )


async def start_server(
    host: str,
    port: int,
    *,
    configuration: Configuration,
    backend: str = "auto",
    workers: int | None = None,
    steering: bool = True,
    cid_plan: CidPlan | None = None,
    connection_sockets: int = DEFAULT_CONNECTION_SOCKETS,
    takeover: str | None = None,
) -> tuple[QuicServer | WorkerGroupServer, PerfServerHandler]:
    """Start a perf server; returns the server and its handler (which holds the stats;
    with ``workers``, each worker has its own copy: see :func:`server_report`).
    ``connection_sockets``: the cap of per-connection sockets (each worker's).

    ``takeover=path`` takes over the connections of the perf server offering a handoff
    at ``path`` (responses in progress go on from where they were); with ``workers``,
    the worker group offering at ``path`` (as many workers)."""
    config = replace(configuration)
    if ALPN not in config.alpn_protocols:
        config.alpn_protocols = [*config.alpn_protocols, ALPN]
    handler = PerfServerHandler()
    server: QuicServer | WorkerGroupServer
    if workers is None:
        server = await serve(
            handler, host, port, configuration=config, backend=backend, cid_plan=cid_plan,
            connection_sockets=connection_sockets, capture=handler.capture,
            restore=handler.restore, takeover=takeover,
        )  # fmt: skip
    else:
        server = await serve(
            handler, host, port, configuration=config, backend=backend, workers=workers,
            steering=steering, cid_plan=cid_plan, app_stats=lambda: asdict(handler.stats),
            connection_sockets=connection_sockets, capture=handler.capture,
            restore=handler.restore, takeover=takeover,
        )  # fmt: skip
    return server, handler


def server_report(
    server: QuicServer | WorkerGroupServer, handler: PerfServerHandler
) -> dict[str, Any]:
    """The perf server's totals (``streams``, ``bytes_received``, ``bytes_sent``,
    ``endpoint``, ``datapath``, ``packets_per_engine_call``, ``segments_per_gso_call``)
    and ``workers``: one dict per worker with ``pid``, ``connections``,
    ``datagrams_received``, ``misrouted_datagrams``, ``connected_sockets`` (one worker,
    this process, without ``workers=``). The top-level ``connected_sockets`` is the most
    per-connection sockets one worker held at once; ``sockets`` (without ``workers=``)
    has every per-connection socket counter."""
    if isinstance(server, WorkerGroupServer):
        stats = server.stats()
        app = stats["app"]
        report = {
            "streams": app.get("streams", 0),
            "bytes_received": app.get("bytes_received", 0),
            "bytes_sent": app.get("bytes_sent", 0),
            "endpoint": stats["endpoint"],
            "datapath": stats["datapath"],
            "connected_sockets": max(
                (w.get("connected_sockets", 0) for w in stats["workers"]), default=0
            ),
            "workers": stats["workers"],
        }
    else:
        counters = server.stats()
        row = worker_counters(server.runner, lambda: asdict(handler.stats))
        row.update(pid=os.getpid(), worker_id=0, restarts=0)
        report = {
            "streams": handler.stats.streams,
            "bytes_received": handler.stats.bytes_received,
            "bytes_sent": handler.stats.bytes_sent,
            "endpoint": counters["endpoint"],
            "datapath": counters["datapath"],
            "connected_sockets": counters["sockets"]["connected_sockets"],
            "sockets": counters["sockets"],
            "workers": [row],
        }
    report["packets_per_engine_call"] = report["endpoint"].get("packets_per_engine_call", 0.0)
    report["segments_per_gso_call"] = report["datapath"].get("segments_per_gso_call", 0.0)
    return report


# ---------------------------------------------------------------------------- client


ProgressCallback = Callable[[int, int, float], None]
"""``progress(bytes_received, bytes_sent, seconds_since_transfer_start)``."""


@dataclass
class PerfResult:
    """The outcome of :func:`run_client`. See the module docstring for the counting."""

    bytes_received: int
    bytes_sent: int
    seconds: float
    goodput_bytes_per_s: float
    connections: int
    streams: int
    handshake_seconds: float
    verified: bool
    counters: dict[str, int] = field(default_factory=dict)
    backend: str = ""
    #: each connection's payload bytes / its seconds from the common start to its last byte
    connection_goodputs: list[float] = field(default_factory=list)
    #: (``--resume``/``--0rtt``) the measured connection resumed a session; the server
    #: accepted its 0-RTT data (None: not a resumption run)
    resumed: bool | None = None
    early_data_accepted: bool | None = None
    #: the client process's CPU seconds in the ``seconds`` window (None: not measured)
    cpu_seconds: float | None = None

    @property
    def fairness(self) -> float:
        """Jain's index of ``connection_goodputs``: 1.0 when all are equal, 1/n worst."""
        xs = self.connection_goodputs
        square_sum = sum(x * x for x in xs)
        return sum(xs) ** 2 / (len(xs) * square_sum) if square_sum else 1.0

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON-ready dict (counters are merged in, plus syscalls_per_datagram)."""
        out: dict[str, Any] = {
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "seconds": self.seconds,
            "goodput_bytes_per_s": self.goodput_bytes_per_s,
            "connections": self.connections,
            "streams": self.streams,
            "handshake_seconds": self.handshake_seconds,
            "verified": self.verified,
            "connection_goodputs": list(self.connection_goodputs),
            "fairness": self.fairness,
        }
        out.update(self.counters)
        dgrams = self.counters.get("datagrams_sent", 0) + self.counters.get(
            "datagrams_received", 0
        )
        c = self.counters
        calls = c.get("syscalls_send", 0) + c.get("syscalls_recv", 0)
        out["syscalls_per_datagram"] = calls / dgrams if dgrams else 0.0
        sent, received = c.get("datagrams_sent", 0), c.get("datagrams_received", 0)
        out["send_syscalls_per_datagram"] = c.get("syscalls_send", 0) / sent if sent else 0.0
        out["recv_syscalls_per_datagram"] = (
            c.get("syscalls_recv", 0) / received if received else 0.0
        )
        out["segments_per_send_batch"] = sent / c["batches_sent"] if c.get("batches_sent") else 0.0
        out["segments_per_recv_batch"] = (
            received / c["batches_received"] if c.get("batches_received") else 0.0
        )
        out["segments_per_gso_call"] = out["segments_per_send_batch"]
        calls = c.get("endpoint_engine_seal_calls", 0)
        out["packets_per_engine_call"] = (
            c.get("endpoint_engine_packets_sealed", 0) / calls if calls else 0.0
        )
        out["backend"] = self.backend
        if self.cpu_seconds is not None:
            out["cpu_seconds"] = self.cpu_seconds
        if self.resumed is not None:
            out["resumed"] = self.resumed
            out["early_data_accepted"] = bool(self.early_data_accepted)
        return out


@dataclass
class _Tally:
    received: int = 0
    sent: int = 0


_DATAPATH_COUNTERS = (
    "syscalls_send",
    "syscalls_recv",
    "datagrams_sent",
    "datagrams_received",
    "bytes_sent",
    "bytes_received",
    "batches_sent",
    "batches_received",
    "truncated",
    "send_eagain",
    "send_errors",
    "recv_errors",
    "receive_drops",  # the kernel's, for a full receive buffer (SO_MEMINFO)
    "gso_fallbacks",
    "pmtu_drops",
)
_CONNECTION_COUNTERS = (
    "packets_sent",
    "packets_received",
    "packets_lost",
    "packets_dropped",
    "dropped_malformed",
    "dropped_no_keys",
    "dropped_undecryptable",
    "duplicate_packets",
    "migrations",  # paths the client moved to (e.g. the server's preferred address)
    "migrations_failed",
    "ack_frames_sent",  # (ACK frames per GiB: the ACK Frequency extension's effect)
    "ack_frames_received",
    "ack_frequency_sent",
    "data_blocked_received",  # (a download's client: the server held by its window)
    "data_blocked_grew",  # of them, those that doubled the connection window
    "key_updates_started",  # 1-RTT key updates the client started (--key-update-after)
)
_ENDPOINT_COUNTERS = (
    "lookups",
    "segments_received",
    "dropped",
    "engine_packets_sealed",
    "engine_seal_calls",
)


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers that differ by at most one (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


async def _run_stream(
    conn: QuicConnection, download: int, upload: int, tally: _Tally, verify: bool
) -> int:
    reader, writer = await conn.create_stream(bidirectional=True)
    sid = reader.stream_id
    writer.write(struct.pack("!Q", download))
    remaining = upload
    while remaining > 0:
        n = CHUNK_SIZE if remaining >= CHUNK_SIZE else remaining
        writer.write(CHUNK if n == CHUNK_SIZE else CHUNK[:n])
        tally.sent += n
        remaining -= n
        await writer.drain()
    writer.write_eof()
    checker = PatternChecker() if verify else None
    got = 0
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            break
        got += len(data)
        tally.received += len(data)
        if checker is not None:
            bad = checker.feed(data)
            if bad >= 0:
                raise PerfError(
                    f"stream {sid}: response bytes differ from the perf pattern "
                    f"in the {len(data)}-byte chunk at offset {bad}"
                )
        if got > download:
            raise PerfError(f"stream {sid}: server sent more than the {download} bytes asked")
        # not held while this connection waits for its next read: with 256 connections
        # their last reads (up to READ_SIZE each) were 170 MB of the client's heap
        del data
    if got != download:
        raise PerfError(f"stream {sid}: response ended after {got} of {download} bytes")
    return got + upload


class _Run:
    """Shared state of one run_client() call."""

    def __init__(self, connections: int) -> None:
        self.tally = _Tally()
        self.pending = connections
        self.all_connected = asyncio.Event()
        self.connected_at = 0.0
        self.finished_at = 0.0
        #: process CPU time (time.process_time) at ``connected_at`` and ``finished_at``
        self.cpu_connected = 0.0
        self.cpu_finished = 0.0
        self.counters: dict[str, int] = {}
        self.backend = ""
        self.moved: list[tuple[int, float]] = []  # per connection: (bytes, finished at)

    def add_counters(self, conn: QuicConnection, shared: bool = False) -> None:
        """Add ``conn``'s counters; with ``shared`` (one client endpoint for all
        connections) its connection counters only: the socket's and the endpoint's are
        added once, by ``add_shared_counters``."""
        stats = conn.stats()
        self._add(stats, ("connection",) if shared else
                  ("datapath", "connection", "endpoint"))

    def add_shared_counters(self, ep: ClientEndpoint) -> None:
        """The shared socket's and endpoint's counters (``--shared-socket``), once."""
        self._add(ep.stats(), ("datapath", "endpoint"))

    def _add(self, stats: dict[str, Any], groups: tuple[str, ...]) -> None:
        for group, names in (
            ("datapath", _DATAPATH_COUNTERS),
            ("connection", _CONNECTION_COUNTERS),
            ("endpoint", _ENDPOINT_COUNTERS),
        ):
            if group not in groups:
                continue
            values = stats[group]
            prefix = "endpoint_" if group == "endpoint" else ""
            for name in names:
                # socket byte counts are UDP payload, not the perf payload
                key = "udp_" + name if name.startswith("bytes_") else prefix + name
                self.counters[key] = self.counters.get(key, 0) + int(values.get(name, 0))
        if "datapath" in groups:
            self.backend = str(stats["datapath"]["backend"])


async def _run_connection(
    run: _Run,
    host: str,
    port: int,
    configuration: Configuration,
    backend: str,
    timeout: float | None,
    downloads: list[int],
    uploads: list[int],
    verify: bool,
    shared: ClientEndpoint | None,
) -> None:
    opened = (
        connect(host, port, configuration=configuration, backend=backend,
                wait_connected=False)
        if shared is None else shared.connect(host, port, wait_connected=False)
    )  # fmt: skip
    async with opened as conn:
        # The idle timeout normally ends a handshake that gets no answer (and ends it at
        # once); the guard is a fallback for a configuration with a longer idle timeout.
        guard = None if timeout is None else timeout + HANDSHAKE_GUARD
        try:
            await asyncio.wait_for(conn.wait_connected(), guard)
        except TimeoutError:
            raise TimeoutError(
                f"timed out: no handshake with {host} port {port} within {timeout:g} s"
            ) from None
        except ConnectionClosedError as e:
            if e.reason == "idle timeout" and not e.by_peer:
                raise TimeoutError(
                    f"timed out: no answer from {host} port {port}"
                    f" within {configuration.idle_timeout:g} s"
                ) from None
            raise
        run.pending -= 1
        if run.pending == 0:
            run.connected_at = time.perf_counter()
            run.cpu_connected = time.process_time()
            run.all_connected.set()
        await run.all_connected.wait()
        moved = await asyncio.gather(
            *(
                _run_stream(conn, d, u, run.tally, verify)
                for d, u in zip(downloads, uploads, strict=True)
            )
        )
        finished = time.perf_counter()
        if finished >= run.finished_at:
            run.finished_at = finished
            run.cpu_finished = time.process_time()
        run.moved.append((sum(moved), finished))
        run.add_counters(conn, shared is not None)


async def _report_progress(run: _Run, progress: ProgressCallback, interval: float) -> None:
    await run.all_connected.wait()
    while True:
        await asyncio.sleep(interval)
        progress(run.tally.received, run.tally.sent, time.perf_counter() - run.connected_at)


async def run_client(
    host: str,
    port: int,
    *,
    download: int,
    upload: int = 0,
    streams: int = 1,
    connections: int = 1,
    configuration: Configuration | None = None,
    backend: str = "auto",
    verify: bool = False,
    timeout: float | None = None,
    progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
    shared_socket: bool = False,
) -> PerfResult:
    """Run ``connections`` connections with ``streams`` bidirectional streams each.

    ``shared_socket``: all connections share one client socket and endpoint
    (:func:`quicflow.client_endpoint`) instead of a socket each.

    ``download`` and ``upload`` are totals over all streams, split evenly between them.
    ``timeout`` bounds each handshake (the configuration's ``idle_timeout`` bounds silence
    after it). ``verify`` checks the response bytes against the pattern.
    ``progress`` is called about every ``progress_interval`` seconds during the transfer.
    Raises :class:`quicflow.ConnectionClosedError`, :class:`TimeoutError` (its message
    starts with "timed out") or :class:`PerfError`.
    """
    if streams < 1 or connections < 1:
        raise ValueError("streams and connections must be at least 1")
    if download < 0 or upload < 0:
        raise ValueError("download and upload sizes must not be negative")
    config = replace(configuration) if configuration is not None else Configuration()
    if ALPN not in config.alpn_protocols:
        config.alpn_protocols = [ALPN]
    total = streams * connections
    downloads = split_evenly(download, total)
    uploads = split_evenly(upload, total)
    run = _Run(connections)
    async with AsyncExitStack() as stack:
        shared = None
        if shared_socket:  # IPv4-only for an IPv4 literal: no mapped addresses
            shared = await stack.enter_async_context(
                client_endpoint(wildcard_host(host), configuration=config, backend=backend))
        result = await _run_connections(
            run, host, port, config, backend, timeout, downloads, uploads, verify,
            progress, progress_interval, shared,
        )  # fmt: skip
        if shared is not None:
            run.add_shared_counters(shared)
            result.backend = run.backend
    return result


async def _run_connections(
    run: _Run, host: str, port: int, config: Configuration, backend: str,
    timeout: float | None, downloads: list[int], uploads: list[int], verify: bool,
    progress: ProgressCallback | None, progress_interval: float,
    shared: ClientEndpoint | None,
) -> PerfResult:
    connections = run.pending
    streams = len(downloads) // connections
    total = len(downloads)
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(
            _run_connection(
                run,
                host,
                port,
                config,
                backend,
                timeout,
                downloads[i * streams : (i + 1) * streams],
                uploads[i * streams : (i + 1) * streams],
                verify,
                shared,
            )
        )
        for i in range(connections)
    ]
    reporter = (
        asyncio.create_task(_report_progress(run, progress, progress_interval))
        if progress is not None
        else None
    )
    try:
        await wait_all(tasks)
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
    seconds = max(run.finished_at - run.connected_at, 1e-9)
    moved = run.tally.received + run.tally.sent
    return PerfResult(
        bytes_received=run.tally.received,
        bytes_sent=run.tally.sent,
        seconds=seconds,
        goodput_bytes_per_s=moved / seconds,
        connections=connections,
        streams=total,
        handshake_seconds=run.connected_at - started,
        verified=verify,
        counters=run.counters,
        backend=run.backend,
        connection_goodputs=[
            n / max(t - run.connected_at, 1e-9) for n, t in run.moved
        ],
        cpu_seconds=run.cpu_finished - run.cpu_connected,
    )
