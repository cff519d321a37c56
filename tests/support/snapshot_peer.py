"""Snapshot/restore test support: a tiny download app, a sans-I/O peer, and a child process.

``LocalSide`` drives one connection of an :class:`Endpoint` with an app (``ServerApp``
answers a perf-style request: 8-byte big-endian size + FIN, with that many deterministic
bytes; ``ClientApp`` asks for them and keeps what it got). ``RemoteSide`` is the same
peer living in a child process (``python -m tests.support.snapshot_peer``) that receives
a sealed snapshot over its stdin (key in ``QUICFLOW_SNAPSHOT_KEY``, hex), restores it and
then exchanges datagrams with the parent in lock step, framed on stdin/stdout.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Protocol

from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Address, Connection
from quicflow.transport.snapshot import open_snapshot, restore_connection

# (documentation addresses, RFC 5737: a simulated network path, paced; path.set_pacing)
SERVER_ADDR: Address = ("192.0.2.2", 4433)
CLIENT_ADDR: Address = ("192.0.2.1", 5555)
KEY_ENV = "QUICFLOW_SNAPSHOT_KEY"
CHUNK = 32 * 1024
SEND_AHEAD = 256 * 1024
SEED = 20240901


@functools.lru_cache(maxsize=4)
def payload(size: int) -> bytes:
    """The deterministic bytes the server sends for a request of ``size``."""
    return random.Random(SEED + size).randbytes(size)


class App(Protocol):
    def process(self, conn: Connection) -> None: ...
    def state(self) -> bytes: ...


class ServerApp:
    """Answers each request stream with ``size`` bytes of :func:`payload`, written ahead
    of the transport by at most SEND_AHEAD bytes (so its own state matters)."""

    def __init__(self, state: bytes = b"") -> None:
        # stream id -> [request bytes (hex), wanted (-1 unknown), sent]
        self.streams: dict[int, list[Any]] = {}
        if state:
            self.streams = {int(k): v for k, v in json.loads(state).items()}

    def state(self) -> bytes:
        return json.dumps(self.streams).encode()

    def process(self, conn: Connection) -> None:
        for sid in conn.stream_ids():
            if sid not in self.streams and not sid & 1:
                self.streams[sid] = ["", -1, 0]
        conn.pop_events()
        for sid, entry in self.streams.items():
            if entry[1] < 0:
                data = conn.read_stream(sid)
                entry[0] += data.hex()
                if conn.stream_at_eof(sid):
                    entry[1] = int.from_bytes(bytes.fromhex(entry[0])[:8], "big")
            if entry[1] < 0 or entry[2] >= entry[1]:
                continue
            body = payload(entry[1])
            while entry[2] < entry[1] and conn.stream_buffered(sid) < SEND_AHEAD:
                end = min(entry[2] + CHUNK, entry[1])
                conn.send_stream_data(sid, body[entry[2]:end], end_stream=end == entry[1])
                entry[2] = end


class ClientApp:
    """Requests ``size`` bytes on one stream and keeps what arrives."""

    def __init__(self, size: int = 0, state: bytes = b"") -> None:
        self.size = size
        self.stream_id: int | None = None
        self.received = bytearray()
        self.done = False
        self.readable_events = 0
        if state:
            sid, self.size, done = struct.unpack_from("!qQ?", state)
            self.stream_id = None if sid < 0 else sid
            self.done = done
            self.received = bytearray(state[struct.calcsize("!qQ?"):])

    def state(self) -> bytes:
        sid = -1 if self.stream_id is None else self.stream_id
        return struct.pack("!qQ?", sid, self.size, self.done) + self.received

    def process(self, conn: Connection) -> None:
        from quicflow.transport.events import StreamReadable

        for event in conn.pop_events():
            if isinstance(event, StreamReadable):
                self.readable_events += 1
        if self.stream_id is None:
            if not conn.handshake_complete:
                return
            self.stream_id = conn.open_stream()
            conn.send_stream_data(self.stream_id, self.size.to_bytes(8, "big"), True)
        if self.done:
            return
        self.received += conn.read_stream(self.stream_id)
        if conn.stream_at_eof(self.stream_id):
            self.done = True

    def digest(self) -> str:
        return hashlib.sha256(self.received).hexdigest()


class Peer(Protocol):
    def step(self, now: float, incoming: list[bytes]) -> list[bytes]: ...
    def timer(self) -> float | None: ...


class LocalSide:
    """One endpoint with one connection and its app, in this process."""

    def __init__(
        self, endpoint: Endpoint, app: Any, peer_address: Address,
        conn: Connection | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.app = app
        self.peer_address = peer_address
        self._conn = conn

    @property
    def conn(self) -> Connection | None:
        if self._conn is None and self.endpoint.all_connections:
            self._conn = next(iter(self.endpoint.all_connections))
        return self._conn

    def step(self, now: float, incoming: list[bytes]) -> list[bytes]:
        for datagram in incoming:
            self.endpoint.receive(datagram, self.peer_address, now)
        conn = self.conn
        if conn is None:
            return []
        deadline = conn.timer()
        if deadline is not None and deadline <= now:
            conn.handle_timer(now)
        self.app.process(conn)
        return self.endpoint.datagrams_to_send(conn, now)

    def timer(self) -> float | None:
        conn = self.conn
        return None if conn is None else conn.timer()


def adopt(endpoint: Endpoint, conn: Connection) -> None:
    """Register a restored connection in an endpoint (its CIDs and the list)."""
    endpoint.adopt(conn)


def restore_side(sealed: bytes, key: bytes, now: float) -> LocalSide:
    """Open a sealed snapshot and restore it into a fresh endpoint with its app."""
    blob = open_snapshot(sealed, key)
    from quicflow.transport.snapshot import snapshot_info

    is_client = snapshot_info(blob)["role"] == "client"
    endpoint = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False),
                        is_server=not is_client)
    conn, app_state = restore_connection(
        blob, engine=endpoint.engine, now=now, configuration=endpoint.configuration
    )
    adopt(endpoint, conn)
    app: Any = ClientApp(state=app_state) if is_client else ServerApp(app_state)
    return LocalSide(endpoint, app, SERVER_ADDR if is_client else CLIENT_ADDR, conn)


# ---------------------------------------------------------------------- framing
# message: kind (1 byte) | now (double) | count (u32) | count x (u32 length | bytes)

_HEAD = struct.Struct("!cdI")
_LEN = struct.Struct("!I")


def write_message(out: IO[bytes], kind: bytes, now: float, items: list[bytes]) -> None:
    parts = [_HEAD.pack(kind, now, len(items))]
    for item in items:
        parts.append(_LEN.pack(len(item)))
        parts.append(item)
    out.write(b"".join(parts))
    out.flush()


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError("peer closed the pipe")
    return data


def read_message(stream: IO[bytes]) -> tuple[bytes, float, list[bytes]]:
    kind, now, count = _HEAD.unpack(_read_exact(stream, _HEAD.size))
    items = []
    for _ in range(count):
        (length,) = _LEN.unpack(_read_exact(stream, _LEN.size))
        items.append(_read_exact(stream, length))
    return kind, now, items


class RemoteSide:
    """A restored peer in a child process. Replies carry the next timer as ``now``
    (NaN for none); the quit reply carries a summary (JSON)."""

    def __init__(self, sealed: bytes, key: bytes, now: float) -> None:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env[KEY_ENV] = key.hex()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), env.get("PYTHONPATH", "")) if p
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.snapshot_peer"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, env=env,
        )
        self._timer: float | None = None
        self._call(b"R", now, [sealed])

    def _call(self, kind: bytes, now: float, items: list[bytes]) -> list[bytes]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        write_message(self.proc.stdin, kind, now, items)
        _, timer, out = read_message(self.proc.stdout)
        self._timer = None if math.isnan(timer) else timer
        return out

    def step(self, now: float, incoming: list[bytes]) -> list[bytes]:
        return self._call(b"S", now, incoming)

    def timer(self) -> float | None:
        return self._timer

    def close(self) -> dict[str, Any]:
        out = self._call(b"Q", 0.0, [])
        self.proc.wait(timeout=30)
        summary: dict[str, Any] = json.loads(out[0])
        return summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def child_main() -> int:
    """The child: restore from the first message, then step on each one until 'Q'."""
    key = bytes.fromhex(os.environ[KEY_ENV])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    side: LocalSide | None = None
    while True:
        kind, now, items = read_message(stdin)
        out: list[bytes] = []
        if kind == b"R":
            side = restore_side(items[0], key, now)
            out = side.step(now, [])
        elif kind == b"S":
            assert side is not None
            out = side.step(now, items)
        elif kind == b"Q":
            assert side is not None
            summary: dict[str, Any] = {"pid": os.getpid()}
            if isinstance(side.app, ClientApp):
                summary.update(done=side.app.done, sha256=side.app.digest(),
                               received=len(side.app.received))
            conn = side.conn
            if conn is not None:
                summary["packets_lost"] = conn.counters.packets_lost
            write_message(stdout, b"Q", math.nan, [json.dumps(summary).encode()])
            return 0
        else:
            raise SystemExit(f"unknown message {kind!r}")
        timer = side.timer() if side is not None else None
        write_message(stdout, b"A", math.nan if timer is None else timer, out)


if __name__ == "__main__":
    raise SystemExit(child_main())
