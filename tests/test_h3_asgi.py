"""A Starlette application from PyPI served by ``quicflow serve`` (ASGI over HTTP/3),
fetched by ``quicflow get`` and by aioquic's HTTP/3 client; bodies compared by SHA-256.
Plus the ASGI adapter in-process (lifespan, streaming, errors) and the commands' exit
codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.aioquic_peer import AioquicProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import run, self_signed
from tests.support.starlette_app import body_of

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pem(tmp_path: Path, require: Callable[[bool, str], None]) -> tuple[str, str]:
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")
    require(have_module("starlette"), "starlette not installed (make venv)")
    return self_signed().write(tmp_path, "server")


def quicflow_cmd(*args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "quicflow", *args], cwd=ROOT,
                          capture_output=True, timeout=60, **kw)


@pytest.fixture
def starlette_server(pem: tuple[str, str]) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    yield from start_starlette(pem)


def start_starlette(pem: tuple[str, str], *extra: str
                    ) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    cert, key = pem
    proc = subprocess.Popen(
        [sys.executable, "-m", "quicflow", "serve", "tests.support.starlette_app:app",
         "--host", "127.0.0.1", "--port", "0", "--cert", cert, "--key", key, *extra],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines = []
    port = None
    for _ in range(20):
        line = proc.stderr.readline().decode()
        lines.append(line)
        found = re.search(r"on https://127\.0\.0\.1:(\d+) \(HTTP/3", line)
        if found:
            port = int(found.group(1))
            break
        if not line:
            break
    assert port is not None, f"server did not start: {lines}"
    assert "lifespan startup\n" in lines
    try:
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_quicflow_get_fetches_from_starlette_served_by_quicflow_serve(
    starlette_server: tuple[int, subprocess.Popen[bytes]], pem: tuple[str, str],
    tmp_path: Path,
) -> None:
    port, proc = starlette_server
    cert, _ = pem
    base = f"https://localhost:{port}"
    out = tmp_path / "body"
    # large body to a file, JSON report on stdout, progress line on stderr
    done = quicflow_cmd("get", f"{base}/bytes/{5 * MB}", "--cafile", cert, "--json",
                        "-o", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expected = sha(body_of(5 * MB))
    assert report["status"] == 200 and report["size"] == 5 * MB
    assert report["sha256"] == expected == sha(out.read_bytes())
    assert ["x-sha256", expected] in report["headers"]
    assert set(report["timings"]) == {"connect", "first_byte", "total"}
    assert b"MiB" in done.stderr  # the progress line
    # streamed response body to stdout, with a request header
    done = quicflow_cmd("get", f"{base}/stream/20", "--cafile", cert, "-H", "x-a: b", "-q")
    assert done.returncode == 0, done.stderr
    assert sha(done.stdout) == sha(b"".join(body_of(65536, seed=i) for i in range(20)))
    # lifespan ran before the first request
    done = quicflow_cmd("get", f"{base}/state", "--insecure")
    assert json.loads(done.stdout) == {"started": True}
    # a 404 is exit 1 with one line saying why; a bad URL is exit 2
    done = quicflow_cmd("get", f"{base}/nothing", "--cafile", cert)
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines() == [
        f"quicflow: HTTP status 404 from {base}/nothing"]
    done = quicflow_cmd("get", "ftp://localhost/x")
    assert done.returncode == 2
    # SIGTERM: graceful shutdown, lifespan shutdown, exit 0
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert b"lifespan shutdown" in err


def test_aioquic_client_fetches_from_starlette_served_by_quicflow_serve(
    starlette_server: tuple[int, subprocess.Popen[bytes]], pem: tuple[str, str],
    require: Callable[[bool, str], None],
) -> None:
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")
    port, _ = starlette_server
    cert, _ = pem

    async def go() -> dict[str, Any]:
        async with AioquicProcess("client", "--port", str(port), "--cafile", cert,
                                  "--scenario", "asgi",
                                  module="tests.support.aioquic_h3_peer") as peer:
            return await peer.next_event("result", timeout=60)

    result = run(go(), timeout=90)
    assert result["get_status"] == 200
    assert result["get_sha"] == result["get_header_sha"] == sha(body_of(3 * MB))
    assert result["post_status"] == 200
    assert result["post_answer"] == {"sha256": result["post_sha"], "size": 2 * MB}
    assert result["state"] == {"started": True}


def test_quicflow_serve_with_workers(pem: tuple[str, str]) -> None:
    cert, _ = pem
    servers = start_starlette(pem, "--workers", "2")
    port, proc = next(servers)
    try:
        for _ in range(4):
            done = quicflow_cmd("get", f"https://localhost:{port}/bytes/1000", "--cafile",
                                cert, "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["sha256"] == sha(body_of(1000))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert b"lifespan shutdown" in err
    finally:
        servers.close()


def test_quicflow_get_connection_refused_is_exit_1(pem: tuple[str, str],
                                                   free_udp_port: int) -> None:
    done = quicflow_cmd("get", f"https://127.0.0.1:{free_udp_port}/", "--insecure",
                        "--timeout", "3")
    assert done.returncode == 1
    assert len(done.stderr.decode().strip().splitlines()) == 1


def test_quicflow_serve_bad_app_is_exit_1_and_bad_args_exit_2(pem: tuple[str, str]) -> None:
    cert, key = pem
    done = quicflow_cmd("serve", "no_such_module:app", "--cert", cert, "--key", key)
    assert done.returncode == 1
    assert done.stderr.decode().startswith("quicflow: cannot import module 'no_such_module'")
    done = quicflow_cmd("serve", "tests.support.starlette_app:app", "--cert", cert)
    assert done.returncode == 2  # --key missing
    done = quicflow_cmd("serve", "tests.support.starlette_app:app", "--cert", cert,
                        "--key", key, "--workers", "0")
    assert done.returncode == 2
    done = quicflow_cmd("serve", "tests.support.starlette_app", "--cert", cert, "--key", key)
    assert done.returncode == 2  # not MODULE:APP


def test_quicflow_serve_that_cannot_start_shuts_the_app_down(
    pem: tuple[str, str], tmp_path: Path
) -> None:
    """The lifespan startup runs before the server exists; when the server then cannot
    start (here: a takeover with nobody to take over from), the lifespan is shut down
    (it used to be left pending: a 'Future exception was never retrieved' traceback)."""
    cert, key = pem
    nobody = tmp_path / "nobody.sock"
    done = quicflow_cmd("serve", "tests.support.starlette_app:app", "--cert", cert,
                        "--key", key, "--takeover", str(nobody))
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err and "never retrieved" not in err, err
    assert err.splitlines() == [
        "lifespan startup", "lifespan shutdown",
        f"quicflow: cannot take over at {nobody}: no server offers a handoff at {nobody}"
        " (No such file or directory)",
    ]


# ---------------------------------------------------------------- the adapter in-process

def test_asgi_errors_become_500_or_a_reset(pem: tuple[str, str]) -> None:
    from quicflow.aio.errors import StreamResetError
    from quicflow.apps.asgi import serve_asgi
    from quicflow.h3 import aio as h3
    from quicflow.h3.errors import H3_INTERNAL_ERROR
    from tests.test_h3_loopback import h3_client_config, h3_server_config

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")  # lifespan="auto" goes on without it
        if scope["path"] == "/early":
            raise ValueError("before the response")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await asyncio.sleep(0.2)  # the head and "part" leave before the reset (which
        raise ValueError("in the middle")  # would otherwise abandon them unsent)

    async def go() -> None:
        server = await serve_asgi(app, "127.0.0.1", 0, configuration=h3_server_config())
        try:
            async with h3.connect("127.0.0.1", server.address[1],
                                  configuration=h3_client_config()) as client:
                resp = await client.get("/early")
                assert resp.status == 500
                resp = await client.get("/late")
                assert resp.status == 200
                with pytest.raises(StreamResetError) as info:
                    await resp.read()
                assert info.value.error_code == H3_INTERNAL_ERROR
        finally:
            await server.shutdown(1.0)

    run(go(), timeout=30)


