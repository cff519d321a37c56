"""Worker processes behind one port, steered by connection ID (issue 6, item 4).

Each test runs the server as a group of forked workers (``serve(..., workers=2)``) and
its clients on this process's event loop. A client tells which worker serves it from the
worker byte of the server's CIDs (QUIC-LB plaintext: first octet, host byte, worker
byte), and the supervisor's per-worker counters must agree.
"""

from __future__ import annotations

import asyncio
import signal
import struct
from collections import Counter
from typing import Any

import pytest

import quicflow
from tests.support.transfer import (
    client_configuration,
    digest,
    download,
    payload,
    serve_stream,
    server_configuration,
)

WORKER_BYTE = 2  # CID offset of the worker byte with the default plan (1 host byte)
pytestmark = pytest.mark.timeout(120)


def worker_of(conn: quicflow.QuicConnection) -> int:
    return conn.conn.peer_cid[WORKER_BYTE]


async def fetch(port: int, size: int, seed: int, *, host: str = "127.0.0.1",
                **cfg: Any) -> tuple[int, bool]:
    """Connect, download ``size`` bytes, return (worker, intact)."""
    async with quicflow.connect(
        host, port, configuration=client_configuration(**cfg)
    ) as conn:
        result = await download(conn, size, seed=seed)
        return worker_of(conn), result.ok


def check_worker_keys(stats: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    rows = stats["workers"]
    assert len(rows) == workers
    for row in rows:
        for key in ("pid", "connections", "datagrams_received", "misrouted_datagrams",
                    "connected_sockets"):
            assert isinstance(row[key], int), key
        assert row["pid"] > 0
    return rows


async def _sixty_four(steering: bool) -> None:
    server = await quicflow.serve(
        serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
        workers=2, steering=steering,
    )
    try:
        port = server.address[1]
        outcomes = await asyncio.gather(
            *(fetch(port, 64 * 1024, seed=i) for i in range(64))
        )
    finally:
        await server.wait_closed()
    assert all(ok for _, ok in outcomes), "a download was not intact"
    per_worker = Counter(w for w, _ in outcomes)
    assert set(per_worker) == {0, 1}, per_worker  # both workers carry connections
    rows = check_worker_keys(server.stats(), 2)
    for i, row in enumerate(rows):
        assert row["connections"] == per_worker[i]
        assert row["datagrams_received"] > 0
    return rows


def test_two_workers_serve_64_connections_steered():
    rows = asyncio.run(_sixty_four(steering=True))
    assert [row["misrouted_datagrams"] for row in rows] == [0, 0]
