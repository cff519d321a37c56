"""Client migration (RFC 9000 §9) and the server's preferred address (§9.6): quicflow at
both ends over loopback, transfers checked by SHA-256, the server's path counters."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

import quicflow
from quicflow.datapath.connected import SocketPolicy
from tests.support.quic_helpers import client_config, run, server_config

CHUNK = 64 * 1024


def _data(n: int, seed: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * (CHUNK // 32)
    return (block * (n // CHUNK + 1))[:n]


async def _sink_and_source(reader: quicflow.QuicStreamReader,
                           writer: quicflow.QuicStreamWriter) -> None:
    """Server: reads the upload to its end, answers with its SHA-256 and then the
    download the first 8 bytes asked for."""
    want = int.from_bytes(await reader.readexactly(8), "big")
    digest = hashlib.sha256()
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            break
        digest.update(chunk)
    writer.write(digest.digest())
    writer.write(_data(want, 2))
    await writer.drain()
    writer.write_eof()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _transfer(conn: quicflow.QuicConnection, up: int, down: int,
                    during: asyncio.Event | None = None) -> tuple[bytes, bytes]:
    """Upload ``up`` bytes and download ``down``; ``during`` is set half-way through the
    upload and waited for before the rest is written."""
    reader, writer = await conn.create_stream()
    writer.write(down.to_bytes(8, "big"))
    payload = _data(up, 1)
    half = up // 2
    writer.write(payload[:half])
    await writer.drain()
    if during is not None:
        during.set()
        await asyncio.sleep(0)
    writer.write(payload[half:])
    await writer.drain()
    writer.write_eof()
    digest = await reader.readexactly(32)
    body = hashlib.sha256()
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            break
        body.update(chunk)
    return digest, body.digest()


def _server_conn(server: quicflow.QuicServer) -> quicflow.QuicConnection:
    conns = server.connections
    assert len(conns) == 1
    return conns[0]


@pytest.mark.parametrize("sockets", [0, 16], ids=["listener", "per-connection-sockets"])
def test_client_migrates_mid_transfer(sockets: int) -> None:
    up, down = 3_000_000, 3_000_000

    async def main() -> None:
        server = await quicflow.serve(
            _sink_and_source, "127.0.0.1", 0, configuration=server_config(),
            connection_sockets=sockets, socket_policy=SocketPolicy(min_bytes=0, min_age=0),
        )
        async with server:
            port = server.address[1]
            async with quicflow.connect("127.0.0.1", port,
                                        configuration=client_config()) as conn:
                before = conn.local_address
                half = asyncio.Event()
                task = asyncio.ensure_future(_transfer(conn, up, down, half))
                await half.wait()
                new_local = await conn.migrate()
                assert new_local[1] != before[1]
                assert conn.local_address == new_local
                up_digest, down_digest = await task
                assert up_digest == hashlib.sha256(_data(up, 1)).digest()
                assert down_digest == hashlib.sha256(_data(down, 2)).digest()
                client_stats = conn.stats()["connection"]
                assert client_stats["migrations"] == 1
                # the old CID was retired, a fresh one is in use
                served = _server_conn(server)
                srv = served.stats()["connection"]
                assert srv["path_changes"] >= 1
                assert tuple(srv["peer_address"])[1] == new_local[1]
                # more data on the new path still flows, and the server is there
                again = await _transfer(conn, 200_000, 200_000)
                assert again[0] == hashlib.sha256(_data(200_000, 1)).digest()
                if sockets:
                    sock = server.runner.connection_socket(served.conn)
                    assert sock is not None
                    assert sock.getpeername()[1] == new_local[1]

    run(main(), timeout=60)
