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
import importlib.util
import os
import queue
import subprocess
import sys
import threading
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

    def __init__(self, args: list[str], *, wait_for_go: bool = False) -> None:  # noqa: D107
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        cmd = [sys.executable, "-m", "tests.support.h3_takeover_server", *args]
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
