"""HTTP/3 between quicflow's client and quicflow's server over real loopback sockets.

Bodies are checked by SHA-256; the other checks read the error code the peer saw or the
counter that moved (QPACK encoder-stream bytes for the dynamic table).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from quicflow.aio.errors import StreamResetError
from quicflow.h3 import aio as h3
from quicflow.h3.errors import H3_NO_ERROR, H3_REQUEST_CANCELLED, H3_REQUEST_REJECTED
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


def test_100_concurrent_requests_on_one_connection() -> None:
    async def one(client: h3.H3Client, i: int) -> str:
        size = 1000 + 997 * i
        resp = await client.get(f"/bytes/{size}")
        data = await resp.read()
        assert resp.status == 200 and sha(data) == resp.header("x-sha256")
        return sha(data)

    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        hashes = await asyncio.gather(*(one(client, i) for i in range(100)))
        assert hashes == [sha(body_of(1000 + 997 * i)) for i in range(100)]
        assert client.face.h3.counters.requests_sent == 100
        assert server.connections[0].h3.counters.requests_received == 100

    run(with_server(body), timeout=60)


def test_qpack_dynamic_table_carries_repeated_headers() -> None:
    custom = [(f"x-custom-{i}", f"value-{i}-" + "v" * 40) for i in range(20)]

    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        for _ in range(10):
            resp = await client.get("/headers", custom)
            assert await resp.read() == b"ok"
            got = [(n.decode(), v.decode()) for n, v in resp.headers or [] if n != b":status"]
            assert got == custom
        ours, theirs = client.face.h3.counters, server.connections[0].h3.counters
        # both encoders inserted the fields into the dynamic table ...
        assert ours.encoder_bytes_sent > 0 and theirs.encoder_bytes_received > 0
        assert theirs.encoder_bytes_sent > 0 and ours.encoder_bytes_received > 0
        # ... and the decoders acknowledged the sections (decoder-stream instructions)
        assert theirs.decoder_bytes_sent > 0 and ours.decoder_bytes_sent > 0
        # the 9 repeated requests were far smaller than the first: the table was used
        assert ours.encoder_bytes_sent < 20 * 60 * 2

    run(with_server(body), timeout=30)


def test_goaway_lets_requests_in_progress_finish_and_refuses_new_ones() -> None:
    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        first = await client.get(f"/bytes/{2 * MB}")  # head received, body in flight
        server.goaway()
        while client.face.goaway_received is None:
            await asyncio.sleep(0.005)
        assert client.face.goaway_received == 4  # first unprocessed request: stream 4
        data = await first.read()
        assert sha(data) == sha(body_of(2 * MB))
        with pytest.raises(h3.RequestRefused):
            await client.get("/bytes/10")

    run(with_server(body), timeout=30)


def test_graceful_shutdown_waits_until_responses_are_delivered() -> None:
    """``H3Server.shutdown()`` closes only once the responses in progress are acknowledged,
    not as soon as their handlers returned: a slow reader still gets the whole body
    (regression: the connection was closed with 4 MB still unsent; found with ngtcp2's
    gtlsclient)."""

    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        resp = await client.get(f"/bytes/{4 * MB}")
        received = bytearray(await resp.read(1000))
        face = server.connections[0]
        while face.active_requests:  # the handler returned: the body is all buffered
            await asyncio.sleep(0.005)
        shutdown = asyncio.ensure_future(server.shutdown(timeout=20))
        while chunk := await resp.read(64 * 1024):
            received += chunk
            await asyncio.sleep(0.002)  # a slow reader: flow control holds the rest back
        await shutdown
        assert sha(bytes(received)) == sha(body_of(4 * MB))
        error = face._close_error
        assert error is not None and error.error_code == H3_NO_ERROR and not error.by_peer

    run(with_server(body), timeout=60)


def test_server_rejects_requests_above_its_goaway_id() -> None:
    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        resp = await client.get("/bytes/10")
        assert await resp.read() == body_of(10)
        server.goaway()  # GOAWAY(4) is in flight while the client sends stream 4
        stream = await client.face.open_request()
        stream.send_headers([(":method", "GET"), (":scheme", "https"),
                             (":authority", "x"), (":path", "/bytes/10")], end_stream=True)
        with pytest.raises(StreamResetError) as info:
            await stream.wait_headers()
        assert info.value.error_code == H3_REQUEST_REJECTED
        assert server.connections[0].h3.counters.requests_rejected == 1

    run(with_server(body), timeout=30)


def test_cancelled_request_reaches_the_server_as_h3_request_cancelled() -> None:
    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        resp = await client.get("/slow")
        assert len(await resp.read(1000)) > 0
        resp.cancel()
        face = server.connections[0]
        while "cancelled" not in face.app_state:
            await asyncio.sleep(0.005)
        assert face.app_state["cancelled"] == H3_REQUEST_CANCELLED
        # the connection is still usable
        again = await client.get("/bytes/100")
        assert await again.read() == body_of(100)

    run(with_server(body), timeout=30)


async def tunnel(request: h3.H3Stream) -> None:
    """Extended CONNECT (RFC 9220): echo the tunnel's bytes upper-cased."""
    assert request.method == "CONNECT" and request.header(":protocol") == "echo-upper"
    request.send_headers([(":status", "200")])
    async for chunk in request.iter_chunks():
        await request.write(chunk.upper())
    await request.end()


def test_extended_connect_tunnel_both_ways() -> None:
    async def go() -> None:
        server = await h3.serve(tunnel, "127.0.0.1", 0, configuration=h3_server_config(),
                                enable_connect_protocol=True)
        try:
            async with h3.connect("127.0.0.1", server.address[1],
                                  configuration=h3_client_config()) as client:
                stream = await client.open_request("CONNECT", "/tunnel",
                                                   protocol="echo-upper")
                assert (await stream.wait_headers())[0] == (b":status", b"200")
                got = b""
                for word in (b"hello ", b"tunnel"):
                    await stream.write(word)
                    got += await stream.read(len(word))
                await stream.end()
                assert got + await stream.read() == b"HELLO TUNNEL"
        finally:
            server.close()

    run(go(), timeout=30)


def test_extended_connect_needs_the_servers_setting() -> None:
    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        with pytest.raises(h3.RequestRefused, match="extended CONNECT"):
            await client.open_request("CONNECT", "/x", protocol="websocket")

    run(with_server(body), timeout=30)


async def datagram_echo(request: h3.H3Stream) -> None:
    """HTTP/3 datagrams (RFC 9297) on an extended CONNECT: echo each one reversed."""
    request.send_headers([(":status", "200")])
    for _ in range(3):
        request.send_datagram((await request.receive_datagram())[::-1])
    await request.read()
    await request.end()


def test_http3_datagrams_on_an_extended_connect() -> None:
    async def go() -> None:
        server = await h3.serve(datagram_echo, "127.0.0.1", 0,
                                configuration=h3_server_config(),
                                enable_connect_protocol=True, enable_datagram=True)
        try:
            async with h3.connect("127.0.0.1", server.address[1],
                                  configuration=h3_client_config(),
                                  enable_datagram=True) as client:
                stream = await client.open_request("CONNECT", "/dg", protocol="connect-udp")
                await stream.wait_headers()
                got = []
                for word in (b"one", b"two", b"three"):
                    # datagrams are unreliable: resend until the echo arrives (loopback)
                    while True:
                        stream.send_datagram(word)
                        try:
                            got.append(await asyncio.wait_for(stream.receive_datagram(), 1))
                            break
                        except TimeoutError:
                            continue
                await stream.end()
                assert got == [b"eno", b"owt", b"eerht"]
                assert client.face.h3.counters.datagrams_received == 3
        finally:
            server.close()

    run(go(), timeout=30)


def test_datagrams_refused_when_not_negotiated() -> None:
    async def body(client: h3.H3Client, server: h3.H3Server) -> None:
        resp = await client.get("/bytes/10")
        with pytest.raises(RuntimeError, match="not enabled"):
            resp.send_datagram(b"x")

    run(with_server(body), timeout=30)


def test_early_response_stops_the_unread_upload_with_h3_no_error() -> None:
    """RFC 9114 §4.1: a server that answers before the request ends may ask the client
    to stop sending it (STOP_SENDING with H3_NO_ERROR); the response stays valid."""
    from quicflow.h3.errors import H3_NO_ERROR

    async def early(request: h3.H3Stream) -> None:
        await request.respond(413, [], b"too large")  # does not read the body

    async def go() -> None:
        server = await h3.serve(early, "127.0.0.1", 0, configuration=h3_server_config())
        try:
            async with h3.connect("127.0.0.1", server.address[1],
                                  configuration=h3_client_config()) as client:
                stream = await client.open_request("POST", "/upload")
                with pytest.raises(StreamResetError) as info:
                    for _ in range(100):  # 100 MB that nobody wants
                        await stream.write(b"x" * MB)
                assert info.value.error_code == H3_NO_ERROR
                await stream.wait_headers()
                assert stream.status == 413 and await stream.read() == b"too large"
        finally:
            server.close()

    run(go(), timeout=30)


def test_http3_server_refuses_handoff_and_moves(tmp_path: Any) -> None:
    """Without migratable=True an HTTP/3 server's connections use QPACK dynamic tables,
    whose state cannot be captured: handing them over or moving them is refused up
    front (saying how to make them movable), and the server keeps serving."""

    async def body(client: h3.H3Client, server: h3.H3Server) -> int:
        with pytest.raises(ValueError, match="cannot be handed over or moved.*migratable=True"):
            server.handoff(str(tmp_path / "handoff.sock"))
        with pytest.raises(ValueError, match="cannot be handed over or moved"):
            await server.move_to("127.0.0.1", 1, None)
        response = await client.request("GET", "/bytes/1000")
        return len(await response.read())

    assert run(with_server(body), 30) == 1000


def test_a_late_http3_reader_keeps_its_connection_window() -> None:
    """The HTTP/3 layer reads the transport as the application gives credit back, and
    hands the transport the application's time of that read: a client whose
    application reads a response body only long after the server said it was blocked
    at the client's connection limit (64 KiB) keeps that window, and the update is
    timed at that read (issue 11: without the time, the connection's last receive or
    build stood in, which can make a late read look prompt and times the next update's
    "fast updates" test from the wrong moment). The body arrives intact."""
    size = 512 * 1024

    async def main() -> tuple[int, int, int, float, bytes, str]:
        server = await h3.serve(app, "127.0.0.1", 0, configuration=h3_server_config())
        try:
            config = replace(h3_client_config(), max_data=64 * 1024,
                             max_data_window=4 * MB, max_stream_data=MB)
            async with h3.connect("127.0.0.1", server.address[1],
                                  configuration=config) as client:
                client.face.h3.stream_buffer = 16 * 1024  # body read as credit comes back
                resp = await client.get(f"/bytes/{size}")
                c = client.face.conn
                while not c.counters.data_blocked_received:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.5)  # the application is busy elsewhere
                assert 2 * c.rtt.smoothed_rtt < 0.5
                got = bytearray()
                updated = c.flow.last_update_time
                late = asyncio.get_running_loop().time()
                while c.flow.last_update_time == updated and len(got) < size:  # half a window
                    got += await resp.read(8 * 1024)
                window, grew = c.flow.window, c.counters.data_blocked_grew
                updated = c.flow.last_update_time - late
                got += await resp.read()
                return (window, grew, c.counters.data_blocked_received, updated,
                        bytes(got), resp.header("x-sha256"))
        finally:
            server.close()

    window, grew, received, updated, got, digest = run(main(), 60)
    assert window == 64 * 1024 and grew == 0 and received >= 1
    assert updated >= 0  # the update is timed at the application's read
    assert sha(got) == digest == sha(body_of(size))
