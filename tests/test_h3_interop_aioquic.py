"""HTTP/3 interop with aioquic's HTTP/3 (``aioquic.h3``) in both roles, real loopback.

aioquic runs in a process of its own (``tests/support/aioquic_h3_peer.py``, the same
routes as ``tests/test_h3_loopback.py``'s ``app``). Bodies are compared by SHA-256; the
other checks read the error code the peer saw or the counter that moved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.h3 import aio as h3
from quicflow.h3.errors import H3_NO_ERROR, H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED
from tests.support.aioquic_peer import AioquicProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import run, self_signed
from tests.test_h3_loopback import MB, app, body_of, h3_client_config, h3_server_config, sha

pytestmark = pytest.mark.interop
PEER = "tests.support.aioquic_h3_peer"
CUSTOM = [(f"x-custom-{i}", f"value-{i}-" + "v" * 40) for i in range(20)]


@pytest.fixture
def pem(tmp_path: Path, require: Callable[[bool, str], None]) -> tuple[str, str]:
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")
    return self_signed().write(tmp_path, "server")


# ---------------------------------------------------------------- our client, aioquic server

async def with_aioquic_server(pem: tuple[str, str],
                              body: Callable[[h3.H3Client, AioquicProcess], Any]) -> Any:
    cert, key = pem
    async with AioquicProcess("server", "--cert", cert, "--key", key, module=PEER) as peer:
        assert peer.port is not None
        async with h3.connect("127.0.0.1", peer.port,
                              configuration=h3_client_config()) as client:
            result = await body(client, peer)
        ended = await peer.next_event("terminated", timeout=10)
        assert ended["error_code"] == H3_NO_ERROR
        return result


def test_our_client_aioquic_server_get_post_10mb(pem: tuple[str, str]) -> None:
    async def body(client: h3.H3Client, peer: AioquicProcess) -> None:
        resp = await client.get(f"/bytes/{10 * MB}")
        data = await resp.read()
        assert resp.status == 200 and sha(data) == resp.header("x-sha256")
        assert sha(data) == sha(body_of(10 * MB))
        upload = body_of(10 * MB, seed=7)
        resp = await client.post("/sha", upload)
        assert (await resp.read()).decode() == sha(upload)
        assert resp.trailers == [(b"x-length", str(10 * MB).encode())]

    run(with_aioquic_server(pem, body), timeout=90)


def test_our_client_aioquic_server_100_concurrent(pem: tuple[str, str]) -> None:
    async def one(client: h3.H3Client, i: int) -> str:
        resp = await client.get(f"/bytes/{1000 + 997 * i}")
        return sha(await resp.read())

    async def body(client: h3.H3Client, peer: AioquicProcess) -> None:
        hashes = await asyncio.gather(*(one(client, i) for i in range(100)))
        assert hashes == [sha(body_of(1000 + 997 * i)) for i in range(100)]

    run(with_aioquic_server(pem, body), timeout=60)


def test_our_client_aioquic_server_qpack_dynamic_table(pem: tuple[str, str]) -> None:
    async def body(client: h3.H3Client, peer: AioquicProcess) -> None:
        for _ in range(10):
            resp = await client.get("/headers", CUSTOM)
            assert await resp.read() == b"ok"
            got = [(n.decode(), v.decode()) for n, v in resp.headers or [] if n != b":status"]
            assert got == CUSTOM
        counters = client.face.h3.counters
        assert counters.encoder_bytes_sent > 0  # we inserted into aioquic's table
        assert counters.encoder_bytes_received > 0  # aioquic inserted into ours
        assert counters.decoder_bytes_received > 0  # aioquic acknowledged our sections

    run(with_aioquic_server(pem, body), timeout=30)


def test_our_client_aioquic_server_cancel_and_goaway(pem: tuple[str, str]) -> None:
    async def body(client: h3.H3Client, peer: AioquicProcess) -> None:
        resp = await client.get("/slow")
        assert await resp.read(1000)
        resp.cancel()
        cancelled = await peer.next_event("cancelled", timeout=10)
        assert cancelled["error_code"] == H3_REQUEST_CANCELLED
        resp = await client.get("/goaway")
        assert await resp.read() == b"bye"
        while client.face.goaway_received is None:
            await asyncio.sleep(0.005)
        assert client.face.goaway_received == resp.stream_id + 4
        with pytest.raises(h3.RequestRefused):
            await client.get("/bytes/10")

    run(with_aioquic_server(pem, body), timeout=30)


# ---------------------------------------------------------------- aioquic client, our server

async def with_aioquic_client(pem: tuple[str, str], scenario: str,
                              during: Callable[[h3.H3Server], Any] | None = None
                              ) -> tuple[dict[str, Any], h3.H3Server]:
    cert, _ = pem
    server = await h3.serve(app, "127.0.0.1", 0, configuration=h3_server_config())
    try:
        port = server.address[1]
        async with AioquicProcess("client", "--port", str(port), "--cafile", cert,
                                  "--scenario", scenario, module=PEER) as peer:
            if during is not None:
                await during(server)
            result = await peer.next_event("result", timeout=60)
            counters = server.connections[0].h3.counters if server.connections else None
            await peer.next_event("terminated", timeout=10)
        result["_counters"] = counters
        return result, server
    finally:
        server.close()


def test_aioquic_client_our_server_get_post_10mb(pem: tuple[str, str]) -> None:
    result, _ = run(with_aioquic_client(pem, "get_post_10mb"), timeout=90)
    assert result["get_status"] == 200 and result["post_status"] == 200
    assert result["get_sha"] == result["get_header_sha"] == sha(body_of(10 * MB))
    assert result["post_answer"] == result["post_sha"] == sha(body_of(10 * MB, seed=7))
    assert result["trailers"] == [["x-length", str(10 * MB)]]


def test_aioquic_client_our_server_100_concurrent(pem: tuple[str, str]) -> None:
    result, _ = run(with_aioquic_client(pem, "concurrent_100"), timeout=60)
    assert result["statuses"] == [200] * 100
    assert result["hashes"] == [sha(body_of(1000 + 997 * i)) for i in range(100)]
    assert result["_counters"].requests_received == 100


def test_aioquic_client_our_server_qpack_dynamic_table(pem: tuple[str, str]) -> None:
    result, _ = run(with_aioquic_client(pem, "qpack"), timeout=30)
    assert result["echoed"] == [result["sent"]] * 10
    counters = result["_counters"]
    assert counters.encoder_bytes_received > 0  # aioquic inserted its fields
    assert counters.encoder_bytes_sent > 0  # we inserted ours into aioquic's table
    assert counters.decoder_bytes_sent > 0  # and acknowledged aioquic's sections


def test_aioquic_client_our_server_cancel(pem: tuple[str, str]) -> None:
    cancelled: list[int] = []

    async def watch(server: h3.H3Server) -> None:
        while not server.connections or "cancelled" not in server.connections[0].app_state:
            await asyncio.sleep(0.005)
        cancelled.append(server.connections[0].app_state["cancelled"])

    result, _ = run(with_aioquic_client(pem, "cancel", watch), timeout=30)
    assert cancelled == [H3_REQUEST_CANCELLED]
    assert result["after_cancel_sha"] == sha(body_of(100))


def test_aioquic_client_our_server_goaway(pem: tuple[str, str]) -> None:
    async def goaway_after_first_head(server: h3.H3Server) -> None:
        while not server.connections or not server.connections[0].h3.counters.requests_received:
            await asyncio.sleep(0.002)
        server.goaway()

    result, _ = run(with_aioquic_client(pem, "goaway", goaway_after_first_head), timeout=30)
    assert result["first_sha"] == sha(body_of(2 * MB))  # the request in progress finished
    assert result["late_reset"] == H3_REQUEST_REJECTED  # a new one was refused


