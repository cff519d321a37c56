"""Bulk transfers between quicflow's own server and client, checked with SHA-256.

The stream protocol (ALPN ``perf``, like the perf protocol with a seed added)::

    client -> server:  size (8 bytes, big endian) | seed (8 bytes) | upload ... FIN
    server -> client:  sha256(upload) (32 bytes) | payload(seed, size) FIN

``payload(seed, size)`` is pseudo-random (not periodic), so a chunk delivered twice, late
or at the wrong offset changes the digest.  ``run_transfer`` runs a server and a client
in this process on one event loop and returns both sides' stats (the datapath counters
tell which backend carried the bytes).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any

import quicflow
from quicflow.tls.certs import generate_self_signed

CHUNK = 1 << 20
_REQUEST = struct.Struct("!QQ")


@cache
def _credential() -> tuple[Any, Any]:
    return generate_self_signed(["localhost", "127.0.0.1", "::1"])


def server_configuration(**kw: Any) -> quicflow.Configuration:
    cert, key = _credential()
    return quicflow.Configuration(
        alpn_protocols=["perf"], certificate_chain=[cert], private_key=key, **kw
    )


def client_configuration(**kw: Any) -> quicflow.Configuration:
    kw.setdefault("verify_peer", False)
    return quicflow.Configuration(alpn_protocols=["perf"], **kw)


@lru_cache(maxsize=4)
def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size) if size > 0 else b""


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def serve_stream(reader: Any, writer: Any) -> None:
    """The server side of one stream (a ``quicflow.serve`` handler)."""
    size, seed = _REQUEST.unpack(await reader.readexactly(_REQUEST.size))
    h = hashlib.sha256()
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            break
        h.update(chunk)
    writer.write(h.digest())
    data = payload(seed, size)
    for i in range(0, size, CHUNK):
        writer.write(data[i : i + CHUNK])
        await writer.drain()
    writer.write_eof()


@dataclass
class StreamResult:
    received: int
    download_intact: bool
    upload_intact: bool

    @property
    def ok(self) -> bool:
        return self.download_intact and self.upload_intact


async def download(
    conn: quicflow.QuicConnection, size: int, *, seed: int = 1, upload: int = 0
) -> StreamResult:
    """One request on a new stream; checks both directions (raises nothing on a
    mismatch: look at the result)."""
    reader, writer = await conn.create_stream()
    writer.write(_REQUEST.pack(size, seed))
    up = payload(seed + 1_000_000, upload)
    for i in range(0, upload, CHUNK):
        writer.write(up[i : i + CHUNK])
        await writer.drain()
    writer.write_eof()
    up_digest = await reader.readexactly(32)
    h = hashlib.sha256()
    n = 0
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            break
        h.update(chunk)
        n += len(chunk)
    return StreamResult(
        received=n,
        download_intact=n == size and h.digest() == digest(payload(seed, size)),
        upload_intact=up_digest == digest(up),
    )


@dataclass
class TransferOutcome:
    results: list[StreamResult]
    client_stats: dict[str, Any]
    server_stats: dict[str, Any]
    server_address: tuple[Any, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


async def transfer(
    *,
    server_host: str = "127.0.0.1",
    client_host: str | None = None,
    size: int,
    upload: int = 0,
    backend: str = "auto",
    client_backend: str | None = None,
    max_datagram_size: int = 1200,
    timeout: float = 60.0,
    before: Callable[[quicflow.QuicServer, quicflow.QuicConnection], None] | None = None,
    connection_sockets: int | None = None,
) -> TransferOutcome:
    """Serve on ``server_host`` (port 0), connect to ``client_host`` (default: the same)
    and move ``size`` bytes down (and ``upload`` bytes up) on one stream.
    ``before(server, connection)`` runs once connected, before the transfer.
    ``connection_sockets``: the server's cap of per-connection sockets (None: default)."""
    server = await quicflow.serve(
        serve_stream, server_host, 0,
        configuration=server_configuration(max_datagram_size=max_datagram_size),
        backend=backend,
        **({} if connection_sockets is None else {"connection_sockets": connection_sockets}),
    )  # fmt: skip
    try:
        host = client_host or server_host
        async with quicflow.connect(
            host, server.address[1],
            configuration=client_configuration(max_datagram_size=max_datagram_size),
            backend=client_backend or backend,
        ) as conn:  # fmt: skip
            if before is not None:
                before(server, conn)
            result = await asyncio.wait_for(download(conn, size, upload=upload), timeout)
            await asyncio.sleep(0.05)  # the last ACKs
            client_stats = conn.stats()
            server_stats = server.stats()
        return TransferOutcome([result], client_stats, server_stats, server.address)
    finally:
        server.close()


def run_transfer(**kw: Any) -> TransferOutcome:
    """:func:`transfer` on a new event loop (works in any thread)."""
    return asyncio.run(transfer(**kw))
