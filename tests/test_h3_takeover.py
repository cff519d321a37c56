"""HTTP/3 servers handed over to a successor process mid-response (issue 7 item 3 for
HTTP/3, issue 9 item 1's "HTTP/3 state captured with the snapshot").

The old server (``tests/support/h3_takeover_server.py``, quicflow's h3 asyncio face with
``migratable=True``) stalls its response after STALL bytes, so the switch lands
mid-download every time; the successor continues the response from ``body_sent`` through
``capture_request``/``resume_request``. Checked: the body's SHA-256, the same connection
(no second handshake: the successor accepted none, aioquic saw one HandshakeCompleted),
a further request on the restored connection, the old process's exit status and count.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from quicflow.aio.api import serve as quic_serve
from quicflow.aio.errors import StreamResetError
from quicflow.h3 import aio as h3
from quicflow.h3.connection import H3Connection
from quicflow.h3.errors import H3_REQUEST_CANCELLED
from quicflow.h3.snapshot import H3CaptureError, capture_h3
from quicflow.transport.config import Configuration
from tests.support.aioquic_peer import AioquicProcess
from tests.support.h3_takeover_server import body_sha256, body_slice
from tests.support.prereq import have_module
from tests.support.quic_helpers import client_config, run, server_config
from tests.support.takeover import ROOT, ServerProc, write_certificate

MB = 1 << 20
SIZE = 32 * MB
STALL = 6 * MB


@pytest.fixture(autouse=True)
def _lsqpack(require: Callable[[bool, str], None]) -> None:
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")


class H3ServerProc(ServerProc):
    """``tests/support/h3_takeover_server.py`` in a process (ServerProc's helpers)."""

    def __init__(self, args: list[str], *, wait_for_go: bool = False,
                 module: str = "tests.support.h3_takeover_server") -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        cmd = [sys.executable, "-m", module, *args]
        if wait_for_go:
            cmd.append("--wait-go")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=ROOT, env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()


def _servers(tmp_path: Path) -> tuple[H3ServerProc, H3ServerProc, str]:
    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "handoff.sock")
    common = ["--cert", cert, "--key", key]
    old = H3ServerProc([*common, "--handoff", path, "--stall-after", str(STALL)])
    new = H3ServerProc([*common, "--takeover", path], wait_for_go=True)
    return old, new, cert


def _take_over(old: H3ServerProc, new: H3ServerProc) -> tuple[int, dict[str, Any] | None]:
    new.go()
    status, doc = old.finish()
    new.wait_line("listening on ")
    return status, doc


def _check_successor(new: H3ServerProc) -> None:
    status, summary = new.stop()
    assert status == 0 and summary is not None
    endpoint = summary["endpoint"]
    assert endpoint["connections_accepted"] == 0, "no new handshake after the switch"


@pytest.mark.timeout(300)
def test_h3_takeover_mid_download_quicflow_client(tmp_path: Path) -> None:
    old, new, cert = _servers(tmp_path)
    try:
        port = old.port()

        async def client() -> tuple[str, int, Any, bytes, bool]:
            loop = asyncio.get_running_loop()
            config = Configuration(alpn_protocols=["h3"], cafile=cert,
                                   server_name="localhost")
            async with h3.connect("127.0.0.1", port, configuration=config) as c:
                first = c.face.conn
                response = await c.get(f"/bytes/{SIZE}")
                assert response.status == 200
                import hashlib

                digest = hashlib.sha256()
                got = at = 0
                switch: asyncio.Future[Any] | None = None
                while chunk := await response.read(256 * 1024):
                    digest.update(chunk)
                    got += len(chunk)
                    if switch is None and got >= MB:
                        at = got
                        switch = loop.run_in_executor(None, _take_over, old, new)
                    if switch is not None and not switch.done():
                        await asyncio.sleep(0.005)  # read slowly: data stays in flight
                assert switch is not None
                switched = await switch
                second = await c.get("/bytes/1000")  # a new request after the switch
                tail = await second.read()
                same = c.face.conn is first and not c.face.closed
                return digest.hexdigest(), at, switched, tail, same

        digest, at, (status, doc), tail, same = asyncio.run(client())
        assert 0 < at < STALL < SIZE, "the switch happened mid-download"
        assert digest == body_sha256(SIZE)
        assert tail == body_slice(0, 1000)
        assert same, "the same QUIC connection carried the whole exchange"
        assert status == 0 and doc == {"handed_off_connections": 1}
        _check_successor(new)
    finally:
        old.kill()
        new.kill()


@pytest.mark.interop
@pytest.mark.timeout(300)
def test_h3_takeover_mid_download_aioquic_client(
    tmp_path: Path, require: Callable[[bool, str], None]
) -> None:
    """aioquic's HTTP/3 client (it knows nothing of quicflow) sees one handshake and
    every byte while the HTTP/3 server process is replaced under it."""
    require(importlib.util.find_spec("aioquic") is not None, "aioquic is not installed")
    old, new, cert = _servers(tmp_path)

    async def go() -> tuple[dict[str, Any], Any, int]:
        port = old.port()
        loop = asyncio.get_running_loop()
        async with AioquicProcess("client", "--port", str(port), "--cafile", cert,
                                  "--scenario", "download", "--size", str(SIZE),
                                  module="tests.support.aioquic_h3_peer") as client:
            await client.next_event("progress", timeout=60)
            switched = await loop.run_in_executor(None, _take_over, old, new)
            result = await client.next_event("result", timeout=120)
            rc = await client.wait_exit()
            return result, switched, rc

    try:
        result, (status, doc), rc = asyncio.run(go())
        assert rc == 0
        assert result["status"] == 200 and result["reset"] is None
        assert result["bytes"] == SIZE and result["sha"] == body_sha256(SIZE)
        assert result["second_status"] == 200
        assert result["handshakes"] == 1
        assert status == 0 and doc == {"handed_off_connections": 1}
        _check_successor(new)
    finally:
        old.kill()
        new.kill()


def test_successor_without_resume_hook_cancels_requests_in_progress(tmp_path: Path) -> None:
    """A response in progress that the application cannot continue (no resume_request)
    is reset with H3_REQUEST_CANCELLED by the successor; the connection goes on and
    answers the next request (one process holds both servers here)."""
    stalled = asyncio.Event()

    async def old_handler(stream: h3.H3Stream) -> None:
        stream.send_headers([(":status", "200")])
        await stream.write(b"x" * 1000)
        stalled.set()
        await asyncio.Event().wait()  # never finishes here

    async def new_handler(stream: h3.H3Stream) -> None:
        await stream.respond(200, [], b"from the successor")

    async def go() -> tuple[int, int, bytes, bool]:
        h3_server = replace(server_config(), alpn_protocols=["h3"])
        path = str(tmp_path / "handoff.sock")
        old = await h3.serve(old_handler, "127.0.0.1", 0, configuration=h3_server,
                             migratable=True)
        async with h3.connect("127.0.0.1", old.address[1],
                              configuration=replace(client_config(), alpn_protocols=["h3"])
                              ) as client:
            first = client.face.conn
            response = await client.get("/busy")
            await stalled.wait()
            handed = old.handoff(path)
            new = await h3.serve(new_handler, "127.0.0.1", 0, configuration=h3_server,
                                 takeover=path)
            count = await handed
            with pytest.raises(StreamResetError) as info:
                await response.read()
            after = await client.get("/next")
            text = await after.read()
            same = client.face.conn is first and not client.face.closed
            accepted = new.stats()["endpoint"]["connections_accepted"]
            new.close()
            return count, info.value.error_code, text, same and accepted == 0

    count, code, text, same = run(go(), timeout=30)
    assert count == 1
    assert code == H3_REQUEST_CANCELLED
    assert text == b"from the successor"
    assert same


def test_capture_refuses_what_it_cannot_capture_whole() -> None:
    """A connection with a QPACK dynamic table, and one whose peer sent encoder
    instructions beyond capacity 0, are refused; a capturable one is captured and its
    SETTINGS advertise no dynamic table."""

    async def go() -> list[str]:
        reasons: list[str] = []
        for migratable in (False, True):
            server = await h3.serve(lambda s: s.respond(200), "127.0.0.1", 0,
                                    configuration=replace(server_config(),
                                                          alpn_protocols=["h3"]),
                                    migratable=migratable)
            try:
                async with h3.connect("127.0.0.1", server.address[1],
                                      configuration=replace(client_config(),
                                                            alpn_protocols=["h3"])) as c:
                    settings = await c.settings()
                    await (await c.get("/")).read()
                    face = server.connections[0]
                    conn: H3Connection = face.h3
                    if not migratable:
                        assert settings[0x01] == 4096  # QPACK_MAX_TABLE_CAPACITY
                    else:
                        assert settings[0x01] == 0 and settings[0x07] == 0
                        assert capture_h3(conn)["format"] == 1
                        conn.qpack_encoder_dirty = True  # as _read_uni sets it
                    with pytest.raises(H3CaptureError) as info:
                        capture_h3(conn)
                    reasons.append(str(info.value))
            finally:
                server.close()
        return reasons

    reasons = run(go(), timeout=30)
    assert "dynamic table" in reasons[0]
    assert "beyond capacity 0" in reasons[1]


def test_takeover_refused_for_a_face_that_cannot_be_captured(tmp_path: Path) -> None:
    """serve(takeover=...) with a face class whose state is not captured refuses before
    it touches the handoff socket."""
    face = h3._face_class({})  # an HTTP/3 face without migratable

    async def go() -> None:
        with pytest.raises(ValueError, match="takeover is not available.*migratable=True"):
            await quic_serve(None, "127.0.0.1", 0, configuration=server_config(),
                             takeover=str(tmp_path / "nothing.sock"), face_class=face)

    run(go(), timeout=10)


def test_h3_connection_moves_to_another_server_mid_response(tmp_path: Path) -> None:
    """``H3Server.move_to`` (issue 7 item 4a for HTTP/3): the response in progress
    continues on server B after the route switches (a relay stands for the router);
    same connection, body intact (one process holds A, B and the client)."""
    from quicflow.migration.transfer import client_context, server_context
    from quicflow.tls.certs import (
        certificate_pem,
        generate_ca,
        issue_certificate,
        private_key_pem,
    )
    from tests.support.relay import LossyUdpRelay

    ca, ca_key = generate_ca("h3 move CA")
    (tmp_path / "ca.pem").write_bytes(certificate_pem(ca))
    files = {}
    for name in ("a", "b"):
        cert, key = issue_certificate(ca, ca_key, ["localhost", "127.0.0.1"],
                                      client_auth=True)
        (tmp_path / f"{name}.pem").write_bytes(certificate_pem(cert))
        (tmp_path / f"{name}.key").write_bytes(private_key_pem(key))
        files[name] = (str(tmp_path / f"{name}.pem"), str(tmp_path / f"{name}.key"))
    ca_file = str(tmp_path / "ca.pem")
    size, stall = 4 * MB, MB
    from tests.support.h3_takeover_server import send_body

    def capture_request(stream: h3.H3Stream) -> Any:
        return {"size": size}

    async def resume_request(stream: h3.H3Stream, state: Any) -> None:
        await send_body(stream, int(state["size"]), None)

    async def handler_a(stream: h3.H3Stream) -> None:
        stream.send_headers([(":status", "200")])
        await send_body(stream, size, stall)

    async def go() -> tuple[int, str, bool]:
        config = replace(server_config(), alpn_protocols=["h3"])
        a = await h3.serve(handler_a, "127.0.0.1", 0, configuration=config,
                           migratable=True, capture_request=capture_request)
        b = await h3.serve(handler_a, "127.0.0.1", 0, configuration=config,
                           migratable=True, resume_request=resume_request)
        receiver = await b.server.accept_moves(  # type: ignore[union-attr]
            "127.0.0.1", 0, server_context(*files["b"], ca_file))
        relay = await LossyUdpRelay(("127.0.0.1", a.address[1])).start()
        try:
            async with h3.connect(relay.address[0], relay.address[1],
                                  configuration=replace(client_config(),
                                                        alpn_protocols=["h3"])) as c:
                first = c.face.conn
                response = await c.get("/bytes")
                import hashlib

                digest = hashlib.sha256()
                got = 0
                moved = 0
                while chunk := await response.read(64 * 1024):
                    digest.update(chunk)
                    got += len(chunk)
                    if not moved and got >= stall // 2:
                        moved = await a.move_to(
                            receiver.address[0], receiver.address[1],
                            client_context(*files["a"], ca_file), server_name="localhost")
                        relay.server_addr = ("127.0.0.1", b.address[1])
                same = c.face.conn is first and not c.face.closed
                return moved, digest.hexdigest(), same
        finally:
            await relay.close()
            receiver.close()
            a.close()
            b.close()

    moved, digest, same = run(go(), timeout=60)
    assert moved == 1
    assert digest == body_sha256(4 * MB)
    assert same


@pytest.mark.timeout(120)
@pytest.mark.parametrize("grace", ["20", "0.01"])
def test_quicflow_serve_asgi_handoff_and_requests_in_progress(
    tmp_path: Path, require: Callable[[bool, str], None], grace: str
) -> None:
    """``quicflow serve APP --handoff PATH`` / ``--takeover PATH``. ASGI requests cannot
    move (the application's coroutine holds their state): a response in progress when
    the successor arrives finishes in the old process within --grace (20 s here), or,
    with --grace 0.01, the successor resets it with H3_REQUEST_CANCELLED. Either way the
    connection moves and its next request is answered by the successor."""
    require(have_module("starlette"), "starlette not installed (make venv)")
    from tests.support.starlette_app import body_of as starlette_body

    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "asgi.sock")
    app = ["serve", "tests.support.starlette_app:app", "--cert", cert, "--key", key,
           "--grace", grace]
    old = H3ServerProc([*app, "--port", "0", "--handoff", path], module="quicflow")
    new: H3ServerProc | None = None
    try:
        port = int(old.wait_line("serving ").split(":")[-1].split()[0])

        async def client() -> tuple[bytes, int | None, bytes, int, bool, list[str]]:
            nonlocal new
            loop = asyncio.get_running_loop()
            config = Configuration(alpn_protocols=["h3"], cafile=cert,
                                   server_name="localhost")
            async with h3.connect("127.0.0.1", port, configuration=config) as c:
                first = c.face.conn
                response = await c.get("/stream/400")  # 25 MiB: more than the windows hold
                body = bytearray(await response.read(64 * 1024))
                new = H3ServerProc([*app, "--takeover", path], module="quicflow")
                # not reading meanwhile: flow control holds the response in progress
                line = await loop.run_in_executor(None, old.wait_line, "successor connected")
                assert "after 1 request(s) in progress" in line
                reset = None
                try:
                    while chunk := await response.read(64 * 1024):
                        body += chunk
                except StreamResetError as exc:
                    reset = exc.error_code
                status, _ = await loop.run_in_executor(None, old.finish)
                await loop.run_in_executor(None, new.wait_line, "serving ")
                after = await c.get("/bytes/100000")
                data = await after.read()
                same = c.face.conn is first and not c.face.closed
                return bytes(body), reset, data, status, same, old.seen

        body, reset, data, status, same, old_lines = asyncio.run(client())
        if grace == "20":
            assert reset is None
            assert body == b"".join(starlette_body(65536, seed=i) for i in range(400))
        else:
            assert reset == H3_REQUEST_CANCELLED and len(body) < 400 * 65536
        assert data == starlette_body(100000)
        assert status == 0 and same
        assert "handed off 1 connection(s)" in old_lines
        assert "lifespan shutdown" in old_lines
        assert new is not None
        new.proc.terminate()
        assert new.proc.wait(timeout=30) == 0
    finally:
        old.kill()
        if new is not None:
            new.kill()


def test_accept_moves_refused_where_http3_state_cannot_go() -> None:
    """A non-migratable HTTP/3 server refuses to receive moved connections (it could not
    restore their HTTP/3 state)."""

    async def go() -> None:
        server = await h3.serve(lambda s: s.respond(200), "127.0.0.1", 0,
                                configuration=replace(server_config(), alpn_protocols=["h3"]))
        try:
            with pytest.raises(ValueError, match="migratable=True"):
                await server.server.accept_moves(  # type: ignore[union-attr]
                    "127.0.0.1", 0, None)  # type: ignore[arg-type]
        finally:
            server.close()

    run(go(), timeout=10)


def _wait_lines(proc: H3ServerProc, prefix: str, count: int,
                timeout: float = 60.0) -> list[str]:
    """The first ``count`` lines of ``proc``'s stderr starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while sum(line.startswith(prefix) for line in proc.seen) < count:
        assert time.monotonic() < deadline, f"no {count} {prefix!r} lines: {proc.seen}"
        try:
            line = proc.lines.get(timeout=0.2)
        except queue.Empty:
            continue
        assert line is not None, f"the server exited early: {proc.seen}"
        proc.seen.append(line)
    return [line for line in proc.seen if line.startswith(prefix)][:count]


@pytest.mark.timeout(240)
def test_quicflow_serve_workers_asgi_takeover(
    tmp_path: Path, require: Callable[[bool, str], None]
) -> None:
    """``quicflow serve APP --workers 2 --handoff PATH`` taken over by ``--workers 2
    --takeover PATH``: each worker hands its HTTP/3 connections to its successor worker,
    after letting its requests in progress finish (--grace, per worker). Downloads on
    connections of both workers arrive whole, each connection's next request is answered
    by the successor on the same connection (no new handshake), the old group exits 0
    saying how many connections it handed off. A successor with another worker count is
    refused first, and the group goes on serving."""
    require(have_module("starlette"), "starlette not installed (make venv)")
    from quicflow.aio.workers import CidPlan
    from tests.support.starlette_app import body_of as starlette_body

    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "asgi.sock")
    app = ["serve", "tests.support.starlette_app:app", "--cert", cert, "--key", key,
           "--grace", "60", "--workers", "2"]
    old = H3ServerProc([*app, "--port", "0", "--handoff", path], module="quicflow")
    new: H3ServerProc | None = None
    chunks = 128  # 8 MiB per response: more than the windows and send buffers hold
    offset = CidPlan().layout(0).worker_cid_offset
    try:
        port = int(old.wait_line("serving ").split(":")[-1].split()[0])
        three = subprocess.run(
            [sys.executable, "-m", "quicflow", *app[:-1], "3", "--takeover", path],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert three.returncode == 1 and "start it with --workers 2" in three.stderr

        async def client() -> tuple[list[int], list[bytes], list[bytes], list[str], int,
                                    bool]:
            nonlocal new
            loop = asyncio.get_running_loop()
            config = Configuration(alpn_protocols=["h3"], cafile=cert,
                                   server_name="localhost")
            async with contextlib.AsyncExitStack() as stack:
                clients: list[h3.H3Client] = []
                workers: list[int] = []
                while len(clients) < 4 or len(set(workers)) < 2:
                    assert len(clients) < 16, f"connections not spread: {workers}"
                    c = await stack.enter_async_context(
                        h3.connect("127.0.0.1", port, configuration=config))
                    clients.append(c)
                    workers.append(c.face.conn.peer_cid[offset])  # the worker byte
                firsts = [c.face.conn for c in clients]
                responses = [await c.get(f"/stream/{chunks}") for c in clients]
                bodies = [bytearray(await r.read(64 * 1024)) for r in responses]
                new = H3ServerProc([*app, "--takeover", path], module="quicflow")
                # not reading meanwhile: flow control holds the responses in progress
                lines = await loop.run_in_executor(
                    None, _wait_lines, old, "successor connected", 2)

                async def rest(response: h3.H3Stream, body: bytearray) -> None:
                    while chunk := await response.read(256 * 1024):
                        body += chunk

                await asyncio.gather(*(rest(r, b)
                                       for r, b in zip(responses, bodies, strict=True)))
                status, _ = await loop.run_in_executor(None, old.finish, 120)
                await loop.run_in_executor(None, new.wait_line, "serving ")
                afters = [await (await c.get(f"/bytes/{1000 + i}")).read()
                          for i, c in enumerate(clients)]
                same = all(c.face.conn is first and not c.face.closed
                           for c, first in zip(clients, firsts, strict=True))
                return workers, [bytes(b) for b in bodies], afters, lines, status, same

        workers, bodies, afters, lines, status, same = asyncio.run(client())
        n = len(workers)
        assert sorted(set(workers)) == [0, 1]
        whole = hashlib.sha256(b"".join(starlette_body(65536, seed=i)
                                        for i in range(chunks))).hexdigest()
        assert [hashlib.sha256(b).hexdigest() for b in bodies] == [whole] * n
        assert afters == [starlette_body(1000 + i) for i in range(n)]
        # each worker let its own requests in progress finish before handing over
        busy = [int(line.split(" after ")[1].split()[0]) for line in lines]
        assert sum(busy) == n, lines
        assert status == 0 and same
        assert f"handed off {n} connection(s)" in old.seen
        assert "lifespan shutdown" in old.seen
        assert new is not None
        assert new.wait_line("took over ") == f"took over {n} connection(s) from {path}"
        new.proc.terminate()
        assert new.proc.wait(timeout=30) == 0
    finally:
        old.kill()
        if new is not None:
            new.kill()
