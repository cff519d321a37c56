"""HTTP/3 between quicflow's client and quicflow's server over real loopback sockets.

Bodies are checked by SHA-256; the other checks read the error code the peer saw or the
counter that moved (QPACK encoder-stream bytes for the dynamic table).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from collections.abc import Callable
from typing import Any

import pytest

from quicflow.aio.errors import StreamResetError
from quicflow.h3 import aio as h3
from quicflow.h3.errors import H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED
from tests.support.prereq import have_module
from tests.support.quic_helpers import client_config, run, server_config


def h3_server_config() -> Any:
    return replace(server_config(), alpn_protocols=["h3"])


def h3_client_config() -> Any:
    return replace(client_config(), alpn_protocols=["h3"])

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def _lsqpack(require: Callable[[bool, str], None]) -> None:
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")


def body_of(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def app(request: h3.H3Stream) -> None:
    """GET /bytes/N -> N bytes; POST /sha -> sha256 of the body; /slow waits for cancel;
    /headers echoes the x-* request headers."""
    path = request.path
    if path.startswith("/bytes/"):
        await request.read()
        size = int(path.rsplit("/", 1)[1])
        await request.respond(200, [("x-sha256", sha(body_of(size)))], body_of(size))
    elif path == "/sha":
        data = await request.read()
        await request.respond(200, [("content-type", "text/plain")], sha(data).encode(),
                              trailers=[("x-length", str(len(data)))])
    elif path == "/headers":
        echoed = [(n, v) for n, v in request.headers or [] if n.startswith(b"x-")]
        await request.respond(200, echoed, b"ok")
    elif path == "/slow":
        request.send_headers([(":status", "200")])
        try:
            while True:
                await request.write(b"x" * 1000)
                await asyncio.sleep(0.01)
        except StreamResetError as exc:
            request.face.app_state["cancelled"] = exc.error_code
    else:
        await request.respond(404)


async def with_server(body: Callable[[h3.H3Client, h3.H3Server], Any], **kw: Any) -> Any:
    server = await h3.serve(app, "127.0.0.1", 0, configuration=h3_server_config(), **kw)
    try:
        port = server.address[1]
        async with h3.connect("127.0.0.1", port, configuration=h3_client_config()) as client:
            return await body(client, server)
    finally:
        server.close()


def test_get_and_post_10mb() -> None:
    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        resp = await client.get(f"/bytes/{10 * MB}")
        assert resp.status == 200
        data = await resp.read()
        assert sha(data) == resp.header("x-sha256") == sha(body_of(10 * MB))
        upload = body_of(10 * MB, seed=7)
        resp = await client.post("/sha", upload)
        assert resp.status == 200
        assert (await resp.read()).decode() == sha(upload)
        assert resp.trailers == [(b"x-length", str(10 * MB).encode())]

    run(with_server(body), timeout=60)
