"""The HTTP/3 must-show set against ngtcp2's ``gtlsserver``/``gtlsclient`` (Debian
``ngtcp2-server``/``ngtcp2-client`` 0.12, nghttp3 0.8), in both roles where the tools allow:
10 MB GET and POST, 100 concurrent requests on one connection, the QPACK dynamic table used
both ways, GOAWAY, request cancellation; every body compared by SHA-256. Plus ``quicflow
serve`` (ASGI, the Starlette app of tests/support/starlette_app.py) fetched by gtlsclient.

What the tools cannot do, from their ``--help`` and their source (ngtcp2 v0.12.1
examples/server.cc and client.cc), so it is not tested here:

- gtlsserver has no GOAWAY: nothing calls ``nghttp3_conn_submit_shutdown_notice``; its
  only shutdown is SIGINT, which closes every connection at once with transport NO_ERROR
  (``Server::disconnect``). What our client sees of it is tested below.
- gtlsclient cannot cancel a request: none of its options (``--help``: -t -r -d -n -v -q -s
  --timeout --ciphers --groups --session-file --tp-file --dcid --scid
  --change-local-addr --nat-rebinding --key-update -m --delay-stream --no-preferred-addr
  --key --cert --download --no-quic-dump --no-http-dump --qlog-file --qlog-dir
  --max-data --max-stream-data-* --max-streams-* --exit-on-first-stream-close
  --exit-on-all-streams-close --disable-early-data --cc --token-file --sni --initial-rtt
  --max-window --max-stream-window --max-udp-payload-size --handshake-timeout --no-pmtud
  --ack-thresh) resets or stops a stream; it only answers a reset.
- Neither tool has an option for the QPACK table capacity: both advertise
  ``SETTINGS_QPACK_MAX_TABLE_CAPACITY`` 4096 and 100 blocked streams (hard-coded), and
  nghttp3's encoder inserts the fields whose names are in QPACK's static table
  (``:authority``, ``user-agent``, ``server``, ``content-type``, ``priority``...). The
  counters of our side's QPACK streams prove the table was used in both directions.
- gtlsserver cannot start a key update (no ``--key-update``; only gtlsclient has one, and
  that case is in tests/test_interop_ngtcp2.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from quicflow.aio.errors import ConnectionClosedError
from quicflow.h3 import aio as h3
from quicflow.h3.errors import H3_NO_ERROR, H3_REQUEST_CANCELLED
from tests.support import ngtcp2
from tests.support.prereq import have_module
from tests.support.quic_helpers import run, self_signed
from tests.support.starlette_app import body_of
from tests.test_h3_asgi import start_starlette
from tests.test_h3_loopback import h3_client_config, h3_server_config
from tests.test_interop_ngtcp2 import closed_cleanly_by_peer, file_handler

pytestmark = pytest.mark.interop
MB = 1024 * 1024
TEN = 10 * MB
MANY = 100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def many_name(i: int) -> str:
    return f"m{i:03d}.bin"


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Path:
    """Files to serve: 10 MB, 100 small ones of distinct sizes (random bytes, so the hex
    dumps of ngtcp2's log have no repeated lines)."""
    require(ngtcp2.available(), "gtlsserver/gtlsclient not installed (make deps: "
                                "Debian ngtcp2-server, ngtcp2-client)")
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")
    htdocs = tmp_path / "htdocs"
    htdocs.mkdir()
    (htdocs / "ten.bin").write_bytes(os.urandom(TEN))
    (htdocs / "half.bin").write_bytes(os.urandom(MB // 2))
    (htdocs / "small.bin").write_bytes(os.urandom(1000))
    for i in range(MANY):
        (htdocs / many_name(i)).write_bytes(os.urandom(500 + 97 * i))
    return htdocs


def files(site: Path, names: list[str]) -> dict[str, bytes]:
    return {name: (site / name).read_bytes() for name in names}


# ---------------------------------------------------------------- our client, gtlsserver

async def against_gtlsserver(site: Path, body: Callable[[h3.H3Client, ngtcp2.GtlsServer], Any],
                             *options: str) -> tuple[Any, str]:  # fmt: skip
    cert, key = self_signed().write(site.parent, "server")
    port = ngtcp2.free_udp_port()
    server = ngtcp2.GtlsServer(site, cert, key, port, *options,
                               log_path=site.parent / "gtlsserver.log")  # fmt: skip
    async with server:
        async with h3.connect("127.0.0.1", port, configuration=h3_client_config()) as client:
            result = await body(client, server)
    return result, server.log()


async def fetch(client: h3.H3Client, path: str, headers: Any = None) -> h3.H3Stream:
    resp = await client.get(path, headers)
    assert resp.status == 200, path
    return resp


def test_our_client_gtlsserver_get_and_post_10mb(site: Path) -> None:
    """A 10 MB download and a 10 MB upload on one connection; the upload is rebuilt from
    the STREAM data gtlsserver logged receiving (it answers a POST with the file)."""
    upload = os.urandom(TEN)

    async def body(client: h3.H3Client, _: ngtcp2.GtlsServer) -> int:
        resp = await fetch(client, "/ten.bin")
        assert sha(await resp.read()) == sha((site / "ten.bin").read_bytes())
        resp = await client.post("/small.bin", upload)
        assert resp.status == 200
        assert sha(await resp.read()) == sha((site / "small.bin").read_bytes())
        return resp.stream_id

    stream_id, log = run(against_gtlsserver(site, body), timeout=120)
    received = ngtcp2.request_body(log, stream_id)
    assert len(received) == TEN and sha(received) == sha(upload)
    assert ngtcp2.closes(log, "rx") == [H3_NO_ERROR]


def test_our_client_reads_gtlsserver_trailers(site: Path) -> None:
    """gtlsserver ``--send-trailers`` ends each file response with a trailer section
    naming the stream: the body is intact and the trailers arrive apart from the head."""

    async def body(client: h3.H3Client, _: ngtcp2.GtlsServer) -> list[tuple[int, Any]]:
        seen = []
        for _i in range(2):
            resp = await fetch(client, "/half.bin")
            assert sha(await resp.read()) == sha((site / "half.bin").read_bytes())
            assert resp.header("x-ngtcp2-stream-id") is None  # not in the head
            seen.append((resp.stream_id, resp.trailers))
        return seen

    seen, log = run(against_gtlsserver(site, body, "--send-trailers", "--no-quic-dump"),
                    timeout=30)  # fmt: skip
    assert seen == [(sid, [(b"x-ngtcp2-stream-id", str(sid).encode())]) for sid, _ in seen]
    assert ngtcp2.closes(log, "rx") == [H3_NO_ERROR]


def test_our_client_gtlsserver_100_concurrent_requests(site: Path) -> None:
    async def one(client: h3.H3Client, i: int) -> str:
        resp = await fetch(client, f"/{many_name(i)}")
        return sha(await resp.read())

    async def body(client: h3.H3Client, _: ngtcp2.GtlsServer) -> list[str]:
        hashes = await asyncio.gather(*(one(client, i) for i in range(MANY)))
        assert client.face.h3.counters.requests_sent == MANY
        return list(hashes)

    hashes, log = run(against_gtlsserver(site, body, "--no-quic-dump"), timeout=60)
    assert hashes == [sha((site / many_name(i)).read_bytes()) for i in range(MANY)]
    # all on one connection, and gtlsserver's limit (100 streams) let them run at once
    assert log.count("Closing QUIC connection") <= 1
    assert ngtcp2.closes(log, "rx") == [H3_NO_ERROR]


def test_our_client_gtlsserver_qpack_dynamic_table(site: Path) -> None:
    """Ten requests with the same fields: each encoder inserts into the other's dynamic
    table (encoder-stream bytes both ways) and gtlsserver's decoder acknowledges the
    sections that referenced ours (decoder-stream bytes to us)."""
    fields = [("priority", "u=2"), ("user-agent", "quicflow-interop/" + "x" * 30),
              ("accept-language", "en-GB,en;q=0.9,fr;q=0.8")]

    async def body(client: h3.H3Client, _: ngtcp2.GtlsServer) -> Any:
        for _i in range(10):
            resp = await fetch(client, "/small.bin", fields)
            assert sha(await resp.read()) == sha((site / "small.bin").read_bytes())
        return client.face.h3.counters

    counters, log = run(against_gtlsserver(site, body, "--no-quic-dump"), timeout=30)
    assert counters.encoder_bytes_sent > 0  # we inserted into gtlsserver's table
    assert counters.decoder_bytes_received > 0  # ... and it acknowledged those sections
    assert counters.encoder_bytes_received > 0  # gtlsserver inserted into ours
    assert counters.decoder_bytes_sent > 0  # ... and we acknowledged its sections
    assert ngtcp2.closes(log, "rx") == [H3_NO_ERROR]


def test_our_client_cancels_a_request_to_gtlsserver(site: Path) -> None:
    """We cancel a 20 MB download after its first bytes: gtlsserver receives STOP_SENDING
    with H3_REQUEST_CANCELLED (our request side was complete, so no RESET_STREAM is due),
    stops that response with RESET_STREAM carrying the same code, and the connection
    still serves a request."""

    async def body(client: h3.H3Client, _: ngtcp2.GtlsServer) -> int:
        resp = await fetch(client, f"/{20 * MB}")  # gtlsserver's generated content
        assert len(await resp.read(1000)) > 0
        resp.cancel()
        again = await fetch(client, "/small.bin")
        assert sha(await again.read()) == sha((site / "small.bin").read_bytes())
        return resp.stream_id

    stream_id, log = run(against_gtlsserver(site, body, "--no-quic-dump"), timeout=30)
    assert ngtcp2.stream_signals(log, "rx") == [
        ("STOP_SENDING", stream_id, H3_REQUEST_CANCELLED)]
    assert ngtcp2.stream_signals(log, "tx") == [
        ("RESET_STREAM", stream_id, H3_REQUEST_CANCELLED)]
    assert ngtcp2.closes(log, "rx") == [H3_NO_ERROR]


def test_our_client_sees_gtlsserver_shut_down(site: Path) -> None:
    """gtlsserver's shutdown (SIGINT; it has no GOAWAY) during a 20 MB download: the
    request in progress fails at once with the close code it sent, no hang, and no new
    request can start."""

    async def body(client: h3.H3Client, server: ngtcp2.GtlsServer) -> str:
        resp = await fetch(client, f"/{20 * MB}")
        assert len(await resp.read(1000)) > 0
        server.interrupt()
        with pytest.raises(ConnectionClosedError) as info:
            await asyncio.wait_for(resp.read(), 10)
        with pytest.raises((ConnectionClosedError, h3.RequestRefused)):
            await client.get("/small.bin")
        error = client.face._close_error
        assert error is not None and error.by_peer
        return str(info.value)

    message, log = run(against_gtlsserver(site, body, "--no-quic-dump"), timeout=30)
    assert "NO_ERROR" in message
    assert ngtcp2.closes(log, "tx") == [0]  # transport NO_ERROR, ngtcp2's own words


def test_gtlsserver_accepts_our_clients_goaway(site: Path) -> None:
    """Our client's GOAWAY (RFC 9114 §5.2: a push ID, 0, as we allow no push) during a
    download: gtlsserver receives it on our control stream (read back from its log),
    the request in progress completes intact, and the connection closes cleanly."""

    async def body(client: h3.H3Client, _: ngtcp2.GtlsServer) -> int:
        resp = await fetch(client, "/half.bin")
        client.goaway()
        assert sha(await resp.read()) == sha((site / "half.bin").read_bytes())
        return client.face.h3.control_stream_id

    control, log = run(against_gtlsserver(site, body), timeout=30)
    assert (ngtcp2.FRAME_GOAWAY, b"\x00") in ngtcp2.control_frames(log, control)
    assert ngtcp2.closes(log, "rx") == [H3_NO_ERROR]


# ---------------------------------------------------------------- gtlsclient, our server

async def gtlsclient_against(site: Path, urls: list[str], *options: str,
                             during: Callable[[h3.H3Server], Any] | None = None,
                             quic_dump: bool = False
                             ) -> tuple[str, h3.H3QuicConnection, list[tuple[str, int]]]:
    """gtlsclient against our HTTP/3 file server; ``during(server)`` runs beside it."""
    uploads: list[tuple[str, int]] = []
    faces: list[h3.H3QuicConnection] = []
    server = await h3.serve(file_handler(site, uploads, faces), "127.0.0.1", 0,
                            configuration=h3_server_config())  # fmt: skip
    try:
        port = server.address[1]
        side = asyncio.ensure_future(during(server)) if during else None
        status, log = await ngtcp2.gtlsclient(
            port, [f"https://127.0.0.1:{port}{u}" for u in urls], *options,
            log_path=site.parent / "gtlsclient.log", quic_dump=quic_dump)
        if side is not None:
            await side
        assert status == 0, log[-2000:]
        assert len(faces) == 1, "one connection expected"
        for _ in range(200):  # the CONNECTION_CLOSE it sent on exit
            if faces[0].closed:
                break
            await asyncio.sleep(0.01)
        return log, faces[0], uploads
    finally:
        server.close()


def download_dir(site: Path) -> Path:
    into = site.parent / "down"
    into.mkdir(exist_ok=True)
    return into


def test_gtlsclient_our_server_get_10mb(site: Path) -> None:
    into = download_dir(site)
    log, face, _ = run(gtlsclient_against(site, ["/ten.bin"], f"--download={into}"),
                       timeout=120)  # fmt: skip
    ngtcp2.check_downloads(into, files(site, ["ten.bin"]), log)
    closed_cleanly_by_peer(face)


def test_gtlsclient_our_server_post_10mb(site: Path) -> None:
    body = site / "ten.bin"
    log, face, uploads = run(gtlsclient_against(
        site, ["/sha"], f"--data={body}", "--http-method=POST"), timeout=120)
    assert uploads == [(sha(body.read_bytes()), TEN)]
    closed_cleanly_by_peer(face)


def test_gtlsclient_our_server_100_concurrent_requests(site: Path) -> None:
    """100 requests at once on gtlsclient's one connection (our limit is 256 streams)."""
    into = download_dir(site)
    names = [many_name(i) for i in range(MANY)]
    log, face, _ = run(gtlsclient_against(site, [f"/{n}" for n in names],
                                          f"--download={into}"), timeout=60)  # fmt: skip
    ngtcp2.check_downloads(into, files(site, names), log)
    assert face.h3.counters.requests_received == MANY
    closed_cleanly_by_peer(face)


def test_gtlsclient_our_server_qpack_dynamic_table(site: Path) -> None:
    """gtlsclient's encoder inserts ``:authority`` and ``user-agent`` into our table and
    references them in its next requests; ours inserts the response fields into its."""
    into = download_dir(site)
    names = [many_name(i) for i in range(10)]
    log, face, _ = run(gtlsclient_against(site, [f"/{n}" for n in names],
                                          f"--download={into}", "--delay-stream=100ms"),
                       timeout=30)  # fmt: skip
    ngtcp2.check_downloads(into, files(site, names), log)
    counters = face.h3.counters
    assert counters.encoder_bytes_received > 0  # gtlsclient inserted into our table
    assert counters.decoder_bytes_sent > 0  # ... and we acknowledged its sections
    assert counters.encoder_bytes_sent > 0  # we inserted into gtlsclient's
    assert counters.decoder_bytes_received > 0  # ... and it acknowledged ours
    closed_cleanly_by_peer(face)


def test_gtlsclient_sees_our_graceful_shutdown(site: Path) -> None:
    """Our server's graceful shutdown (``H3Server.shutdown``: GOAWAY, finish the requests
    in progress, close with H3_NO_ERROR) while gtlsclient downloads 512 KiB: gtlsclient
    receives GOAWAY naming stream 4 on our control stream (read back from its log),
    the download completes intact, and the connection ends with H3_NO_ERROR."""
    into = download_dir(site)

    async def shut_down_after_first_request(server: h3.H3Server) -> None:
        while not server.connections or not server.connections[0].h3.counters.requests_received:
            await asyncio.sleep(0.002)
        await server.shutdown(timeout=20)

    log, face, _ = run(gtlsclient_against(site, ["/half.bin"], f"--download={into}",
                                          during=shut_down_after_first_request,
                                          quic_dump=True), timeout=60)  # fmt: skip
    ngtcp2.check_downloads(into, files(site, ["half.bin"]), log)
    control = ngtcp2.control_frames(log, face.h3.control_stream_id)
    assert (ngtcp2.FRAME_GOAWAY, b"\x04") in control
    assert face.h3.goaway_sent == 4
    # whichever side closed first (or both at once), the code was H3_NO_ERROR
    codes = ngtcp2.closes(log, "rx") + ngtcp2.closes(log, "tx")
    assert codes and set(codes) == {H3_NO_ERROR}


def test_check_downloads_reports_a_stalled_transfer(site: Path) -> None:
    """gtlsclient exits 0 after a transfer stalls (its idle timeout ends the run): the
    harness's check says which file is short and by how much, with gtlsclient's words."""
    into = download_dir(site)

    async def stall(request: h3.H3Stream) -> None:
        request.send_headers([(":status", "200")])
        await request.write(b"x" * 5000)
        await asyncio.sleep(30)  # never finishes

    async def go() -> tuple[int, str]:
        server = await h3.serve(stall, "127.0.0.1", 0, configuration=h3_server_config())
        try:
            port = server.address[1]
            return await ngtcp2.gtlsclient(
                port, [f"https://127.0.0.1:{port}/big.bin"], f"--download={into}",
                "--timeout=1s", log_path=site.parent / "gtlsclient.log")
        finally:
            server.close()

    status, log = run(go(), timeout=30)
    assert status == 0  # the reason for the explicit check
    with pytest.raises(AssertionError) as info:
        ngtcp2.check_downloads(into, {"big.bin": b"x" * 100_000}, log)
    assert "big.bin: incomplete, 5000 of 100000 bytes" in str(info.value)


# ---------------------------------------------------------------- quicflow serve (ASGI)

@pytest.fixture
def starlette(site: Path, require: Callable[[bool, str], None]
              ) -> Iterator[int]:  # fmt: skip
    require(have_module("starlette"), "starlette not installed (make venv)")
    pem = self_signed().write(site.parent, "asgi")
    for port, _proc in start_starlette(pem):
        yield port


def test_gtlsclient_fetches_from_quicflow_serve(site: Path, starlette: int) -> None:
    """gtlsclient against the Starlette app under ``quicflow serve``: a 3 MB download and a
    3 MB upload (the app answers its SHA-256 as JSON), both hash-checked."""
    into = download_dir(site)
    size = 3 * MB
    upload = site / "up.bin"
    upload.write_bytes(os.urandom(size))

    async def go() -> tuple[tuple[int, str], tuple[int, str]]:
        url = f"https://127.0.0.1:{starlette}"
        down = await ngtcp2.gtlsclient(starlette, [f"{url}/bytes/{size}"],
                                       f"--download={into}",
                                       log_path=site.parent / "get.log")  # fmt: skip
        up = await ngtcp2.gtlsclient(starlette, [f"{url}/sha"], f"--download={into}",
                                     f"--data={upload}", "--http-method=POST",
                                     log_path=site.parent / "post.log")  # fmt: skip
        return down, up

    (status_get, log_get), (status_post, log_post) = run(go(), timeout=60)
    assert status_get == 0 and status_post == 0
    ngtcp2.check_downloads(into, {str(size): body_of(size)}, log_get)
    answer = json.loads((into / "sha").read_bytes())
    assert answer == {"sha256": sha(upload.read_bytes()), "size": size}
    assert ngtcp2.closes(log_get, "tx") == ngtcp2.closes(log_post, "tx") == [H3_NO_ERROR]
