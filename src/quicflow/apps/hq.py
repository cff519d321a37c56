"""hq-interop: HTTP/0.9 over QUIC (ALPN ``hq-interop``), the application interop tools use.

A client opens one bidirectional stream per file, sends ``GET /path\\r\\n`` and FIN; the
server answers with the bytes of that file and FIN. There are no headers and no status:
a request the server cannot or will not answer (malformed, too long, a path outside the
served directory, a missing file) gets its stream reset with :data:`HQ_REQUEST_REFUSED`
and STOP_SENDING with the same code.

Server: :class:`HqServerHandler` (a stream handler for :func:`quicflow.serve`) or
:func:`start_server`. Client: :func:`run_client` (several URLs, one connection per
``host:port``, every file on its own stream at the same time, written into a directory),
or :func:`fetch` for one file over a connection you hold.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from ..aio import (
    ConnectionClosedError,
    QuicConnection,
    QuicServer,
    QuicStreamReader,
    QuicStreamWriter,
    StreamResetError,
    connect,
    serve,
)
from ..aio.workers import CidPlan
from ..transport.config import Configuration
from .handoff_state import progress_table, resume, stopping
from .tasks import wait_all

ALPN = "hq-interop"
#: longest request accepted (``GET `` + path + CRLF); longer requests are refused
MAX_REQUEST = 4096
#: application error code of a refused request (RESET_STREAM and STOP_SENDING)
HQ_REQUEST_REFUSED = 0x1
#: bytes read from a file or a stream per call
CHUNK_SIZE = 1 << 20
#: extra seconds given to a handshake beyond ``timeout`` before giving up on it
HANDSHAKE_GUARD = 0.5


class HqError(Exception):
    """An hq-interop exchange failed (bad URL, refused request, write error...)."""


# ---------------------------------------------------------------------------- requests


def parse_request(data: bytes) -> str | None:
    """The path of ``GET /path\\r\\n`` (a bare LF or no line end is accepted too), or
    None when ``data`` is not such a request."""
    if len(data) > MAX_REQUEST or not data.startswith(b"GET /"):
        return None
    line = data[4:]
    if line.endswith(b"\r\n"):
        line = line[:-2]
    elif line.endswith(b"\n"):
        line = line[:-1]
    if any(c <= 0x20 or c == 0x7F for c in line):  # one token: no spaces, controls, CR/LF
        return None
    try:
        return line.decode("ascii")
    except UnicodeDecodeError:
        return None


def resolve_path(root: str, request_path: str) -> str | None:
    """The file under ``root`` that ``request_path`` names, or None when the path (after
    percent-decoding, ``..`` and symbolic links) escapes ``root`` or names no regular
    file. ``root`` must be an absolute, resolved path (``os.path.realpath``)."""
    path = unquote(request_path.split("?", 1)[0].split("#", 1)[0])
    if "\x00" in path or not path.startswith("/"):
        return None
    full = os.path.realpath(os.path.join(root, path.lstrip("/")))
    if full != root and not full.startswith(root.rstrip(os.sep) + os.sep):
        return None
    if not os.path.isfile(full):
        return None
    return full


# ---------------------------------------------------------------------------- server


@dataclass
class HqServerStats:
    """What an hq server has done so far (plain counters)."""

    requests: int = 0  # requests answered in full
    refused: int = 0  # requests refused (malformed, outside the root, missing file)
    bytes_sent: int = 0  # file bytes written to streams


class HqServerHandler:
    """Serves the files under ``root``: a stream handler for :func:`quicflow.serve`, with
    the handoff hooks ``capture``/``restore`` (a response in progress continues from its
    offset in the successor, which reopens the file).

    Per stream it keeps ``[request bytes read (hex), request read to FIN, response bytes
    written]`` in ``connection.app_state["hq"]``, updated before every await, so a stream
    stopped at any await point is described exactly.
    """

    def __init__(self, root: str) -> None:
        if not os.path.isdir(root):
            raise ValueError(f"not a directory: {root}")
        self.root = os.path.realpath(root)
        self.stats = HqServerStats()

    def _refuse(self, reader: QuicStreamReader, writer: QuicStreamWriter) -> None:
        self.stats.refused += 1
        writer.reset(HQ_REQUEST_REFUSED)
        if not reader.at_eof():
            reader.stop(HQ_REQUEST_REFUSED)

    def __call__(self, reader: QuicStreamReader, writer: QuicStreamWriter
                 ) -> Coroutine[Any, Any, None]:
        # The progress entry is made here, not in the task: a handoff that stops the
        # connection before the task's first step still captures the stream (and the
        # successor serves it from the start).
        progress: list[Any] = ["", False, 0]
        if not reader.stream_id & 0x2:
            progress_table(writer.connection, "hq")[reader.stream_id] = progress
        return self._serve(reader, writer, progress)

    async def _serve(self, reader: QuicStreamReader, writer: QuicStreamWriter,
                     p: list[Any]) -> None:  # fmt: skip
        if reader.stream_id & 0x2:  # unidirectional: hq-interop has none
            self.stats.refused += 1
            reader.stop(HQ_REQUEST_REFUSED)
            return
        table = progress_table(writer.connection, "hq")
        try:
            await self._respond(reader, writer, p)
        finally:
            if not stopping():
                table.pop(reader.stream_id, None)

    async def _respond(self, reader: QuicStreamReader, writer: QuicStreamWriter,
                       p: list[Any]) -> None:  # fmt: skip
        request = bytes.fromhex(p[0])
        while not p[1]:
            try:
                data = await reader.read(MAX_REQUEST + 1 - len(request))
            except StreamResetError:
                self.stats.refused += 1
                return
            if not data:
                p[1] = True
                break
            request += data
            p[0] = request.hex()
            if len(request) > MAX_REQUEST:
                self._refuse(reader, writer)
                return
        path = parse_request(request)
        full = resolve_path(self.root, path) if path is not None else None
        if full is None:
            self._refuse(reader, writer)
            return
        try:
            f = open(full, "rb")
        except OSError:
            self._refuse(reader, writer)
            return
        with f:
            if p[2]:
                f.seek(p[2])
            while True:
                chunk = f.read(CHUNK_SIZE)
                if not chunk:
                    break
                writer.write(chunk)
                self.stats.bytes_sent += len(chunk)
                p[2] += len(chunk)
                await writer.drain()
        writer.write_eof()
        self.stats.requests += 1

    # -- handoff hooks -----------------------------------------------------------------

    def capture(self, connection: QuicConnection) -> dict[str, Any]:
        """The state of the connection's requests in progress (JSON-able). Response bytes
        written but not yet sent are taken back (the successor reads them from the file
        again), so the snapshot holds only what is in flight."""
        table = progress_table(connection, "hq")
        for sid, p in table.items():
            if p[1] and sid in connection.conn.streams:
                before, p[2] = p[2], connection.conn.take_back_unsent(sid)
                self.stats.bytes_sent -= before - p[2]
        return {str(sid): p for sid, p in table.items()}

    async def restore(
        self, connection: QuicConnection, state: Any,
        streams: dict[int, tuple[QuicStreamReader, QuicStreamWriter]],
    ) -> None:
        """Continue every request in progress from where the old process stopped."""
        table = progress_table(connection, "hq")
        for key, p in (state or {}).items():
            sid = int(key)
            if (sid not in streams or type(p) is not list or len(p) != 3
                    or type(p[0]) is not str or type(p[2]) is not int):
                continue
            table[sid] = p
            reader, writer = streams[sid]
            resume(connection, self._serve(reader, writer, p))





def server_configuration(
    certificate_chain: list[Any], private_key: Any, **options: Any
) -> Configuration:
    """A server Configuration for hq-interop (ALPN ``hq-interop``)."""
    return Configuration(
        alpn_protocols=[ALPN],
        certificate_chain=certificate_chain,
        private_key=private_key,
        **options,
    )


async def start_server(
    host: str, port: int, *, root: str, configuration: Configuration, backend: str = "auto",
    takeover: str | None = None, cid_plan: CidPlan | None = None,
) -> tuple[QuicServer, HqServerHandler]:
    """Serve ``root`` over hq-interop; returns the server and its handler (with stats).

    The server can hand its connections to a successor (``server.handoff(path)``) or
    move them to another host (``server.accept_moves`` there); ``takeover=path`` starts
    by taking over those of the hq server offering a handoff at ``path`` (responses in
    progress go on from where they were). ``cid_plan``: the QUIC-LB layout of the
    connection IDs (host ID), for a balancer that routes by it."""
    config = replace(configuration)
    if ALPN not in config.alpn_protocols:
        config.alpn_protocols = [*config.alpn_protocols, ALPN]
    handler = HqServerHandler(root)
    server = await serve(handler, host, port, configuration=config, backend=backend,
                         capture=handler.capture, restore=handler.restore,
                         takeover=takeover, cid_plan=cid_plan)  # fmt: skip
    return server, handler


# ---------------------------------------------------------------------------- client


@dataclass
class HqDownload:
    """One file fetched: where from, where to, how many bytes and their SHA-256."""

    url: str
    path: str
    file: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {"url": self.url, "path": self.path, "file": self.file,
                "bytes": self.bytes, "sha256": self.sha256}  # fmt: skip


@dataclass
class HqResult:
    """The outcome of :func:`run_client`."""

    downloads: list[HqDownload]
    seconds: float
    connections: int
    handshake_seconds: float
    bytes_received: int = field(init=False)

    def __post_init__(self) -> None:
        self.bytes_received = sum(d.bytes for d in self.downloads)

    def to_dict(self) -> dict[str, object]:
        return {
            "files": [d.to_dict() for d in self.downloads],
            "bytes_received": self.bytes_received,
            "seconds": self.seconds,
            "connections": self.connections,
            "handshake_seconds": self.handshake_seconds,
        }


@dataclass(frozen=True)
class HqUrl:
    """A parsed ``https://host[:port]/path`` URL."""

    url: str
    host: str
    port: int
    path: str


def parse_url(url: str) -> HqUrl:
    """Parse an ``https://`` URL; raises ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ValueError(f"{url}: only https:// URLs are supported")
    if not parts.hostname:
        raise ValueError(f"{url}: no host")
    try:
        port = parts.port or 443
    except ValueError:
        raise ValueError(f"{url}: bad port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if len(path) + 6 > MAX_REQUEST or any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in path):
        raise ValueError(f"{url}: the path must be printable ASCII without spaces")
    return HqUrl(url, parts.hostname, port, path)


def output_name(path: str) -> str:
    """The file name a download of ``path`` is stored under: its last segment
    (percent-decoded), ``index.html`` for a directory; never a path of its own."""
    name = unquote(path.split("?", 1)[0]).rstrip("/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\x00" in name or os.sep in name:
        return "index.html"
    return name


ProgressCallback = Callable[[int, int, float], None]
"""``progress(bytes_received, bytes_sent, seconds_since_transfer_start)``."""


async def fetch(conn: QuicConnection, path: str, sink: BinaryIO | None = None,
                counter: list[int] | None = None) -> tuple[int, str]:
    """GET ``path`` on its own stream of ``conn``; the body goes to ``sink`` (if any).

    Returns ``(bytes, sha256 hex)``. ``counter[0]`` (if given) is raised as bytes arrive.
    Raises :class:`HqError` when the server refuses (resets) the request.
    """
    reader, writer = await conn.create_stream()
    writer.write(b"GET " + path.encode("ascii") + b"\r\n")
    writer.write_eof()
    digest = hashlib.sha256()
    got = 0
    try:
        while True:
            data = await reader.read(CHUNK_SIZE)
            if not data:
                break
            digest.update(data)
            got += len(data)
            if counter is not None:
                counter[0] += len(data)
            if sink is not None:
                sink.write(data)
    except StreamResetError as e:
        raise HqError(f"{path}: the server refused the request "
                      f"(stream reset with code {e.error_code})") from None  # fmt: skip
    return got, digest.hexdigest()


class _Run:
    def __init__(self, connections: int) -> None:
        self.pending = connections
        self.connected = asyncio.Event()
        self.connected_at = 0.0
        self.received = [0]


async def _run_connection(run: _Run, host: str, port: int, urls: list[HqUrl], files: list[str],
                          config: Configuration, backend: str,
                          timeout: float | None) -> list[HqDownload]:  # fmt: skip
    async with connect(host, port, configuration=config, backend=backend,
                       wait_connected=False) as conn:  # fmt: skip
        guard = None if timeout is None else timeout + HANDSHAKE_GUARD
        try:
            await asyncio.wait_for(conn.wait_connected(), guard)
        except TimeoutError:
            raise TimeoutError(
                f"timed out: no handshake with {host} port {port} within {timeout:g} s"
            ) from None
        except ConnectionClosedError as e:
            if e.reason == "idle timeout" and not e.by_peer:
                raise TimeoutError(f"timed out: no answer from {host} port {port}"
                                   f" within {config.idle_timeout:g} s") from None  # fmt: skip
            raise
        run.pending -= 1
        if run.pending == 0:
            run.connected_at = time.perf_counter()
            run.connected.set()

        async def one(u: HqUrl, file: str) -> HqDownload:
            with open(file, "wb") as sink:
                size, sha = await fetch(conn, u.path, sink, run.received)
            return HqDownload(u.url, u.path, file, size, sha)

        return list(await asyncio.gather(*(one(u, f) for u, f in zip(urls, files, strict=True))))


async def run_client(
    urls: list[str],
    output_dir: str,
    *,
    configuration: Configuration | None = None,
    backend: str = "auto",
    timeout: float | None = None,
    progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
) -> HqResult:
    """Download every URL into ``output_dir`` (file name: the path's last segment).

    URLs of the same ``host:port`` share one connection and are fetched at the same time,
    one stream each. Raises ValueError (bad URL, two URLs with the same file name, no such
    directory), :class:`HqError`, :class:`quicflow.ConnectionClosedError` or
    :class:`TimeoutError` (its message starts with "timed out").
    """
    if not urls:
        raise ValueError("no URL given")
    if not os.path.isdir(output_dir):
        raise ValueError(f"not a directory: {output_dir}")
    parsed = [parse_url(u) for u in urls]
    files = [os.path.join(output_dir, output_name(u.path)) for u in parsed]
    if len(set(files)) != len(files):
        raise ValueError("two URLs would be saved under the same file name")
    config = replace(configuration) if configuration is not None else Configuration()
    config.alpn_protocols = [ALPN]
    groups: dict[tuple[str, int], list[int]] = {}
    for i, u in enumerate(parsed):
        groups.setdefault((u.host, u.port), []).append(i)
    run = _Run(len(groups))
    started = time.perf_counter()
    tasks = [
        asyncio.create_task(_run_connection(
            run, host, port, [parsed[i] for i in idx], [files[i] for i in idx], config,
            backend, timeout))
        for (host, port), idx in groups.items()
    ]  # fmt: skip
    reporter = None
    if progress is not None:
        reporter = asyncio.create_task(_report(run, progress, progress_interval))
    try:
        await wait_all(tasks)
    finally:
        for t in tasks:
            t.cancel()
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
    finished = time.perf_counter()
    by_index: dict[int, HqDownload] = {}
    for t, idx in zip(tasks, groups.values(), strict=True):
        for i, d in zip(idx, t.result(), strict=True):
            by_index[i] = d
    return HqResult(
        downloads=[by_index[i] for i in range(len(parsed))],
        seconds=max(finished - (run.connected_at or started), 1e-9),
        connections=len(groups),
        handshake_seconds=(run.connected_at or finished) - started,
    )


async def _report(run: _Run, progress: ProgressCallback, interval: float) -> None:
    await run.connected.wait()
    while True:
        await asyncio.sleep(interval)
        progress(run.received[0], 0, time.perf_counter() - run.connected_at)
