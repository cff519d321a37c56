"""hq-interop (HTTP/0.9 over QUIC): the app, the ``quicflow hq`` command, and aioquic.

Every downloaded file is compared by SHA-256 with the served one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import quicflow
from quicflow.apps import hq
from tests.support import hq_peers
from tests.support.aioquic_hq import AioquicHqProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import run, self_signed

QUICFLOW = str(Path(sys.executable).parent / "quicflow")
KB, MB = 1024, 1024 * 1024


def make_root(root: Path, sizes: dict[str, int]) -> dict[str, str]:
    root.mkdir(exist_ok=True)
    digests = {}
    for name, size in sizes.items():
        data = os.urandom(size)
        (root / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- requests, paths


def test_parse_request() -> None:
    assert hq.parse_request(b"GET /a/b.txt\r\n") == "/a/b.txt"
    assert hq.parse_request(b"GET /x\n") == "/x"
    assert hq.parse_request(b"GET /x") == "/x"
    for bad in (b"", b"GET", b"GET x\r\n", b"PUT /x\r\n", b"GET /a b\r\n", b"GET /\xff\r\n",
                b"GET /a\r\nGET /b\r\n", b"GET /" + b"a" * hq.MAX_REQUEST):  # fmt: skip
        assert hq.parse_request(bad) is None, bad


@given(st.binary(max_size=200))
def test_parse_request_never_raises(data: bytes) -> None:
    path = hq.parse_request(data)
    assert path is None or path.startswith("/")


def test_resolve_path_stays_inside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.txt").write_text("x")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", root / "link-out")
    os.symlink(root / "sub" / "f.txt", root / "link-in")
    r = os.path.realpath(root)
    assert hq.resolve_path(r, "/sub/f.txt") == os.path.join(r, "sub", "f.txt")
    assert hq.resolve_path(r, "/sub/%66.txt") == os.path.join(r, "sub", "f.txt")
    assert hq.resolve_path(r, "/link-in") == os.path.join(r, "sub", "f.txt")
    for bad in ("/../secret", "/sub/../../secret", "/%2e%2e/secret", "/link-out", "/sub",
                "/", "/missing", "/sub/f.txt%00", "relative"):  # fmt: skip
        assert hq.resolve_path(r, bad) is None, bad


def test_parse_url_and_output_name() -> None:
    u = hq.parse_url("https://localhost:4433/dir/file.bin")
    assert (u.host, u.port, u.path) == ("localhost", 4433, "/dir/file.bin")
    assert hq.parse_url("https://[::1]/x").port == 443
    for bad in ("http://h/x", "https:///x", "https://h:99999/x", "https://h/a b"):
        with pytest.raises(ValueError):
            hq.parse_url(bad)
    assert hq.output_name("/dir/file.bin") == "file.bin"
    assert hq.output_name("/") == "index.html"
    assert hq.output_name("/a/..") == "index.html"
    assert hq.output_name("/%2e%2e%2fx") == "x"  # decoded, then only the last segment
    assert hq.output_name("/%2e%2e") == "index.html"


# ---------------------------------------------------------------------------- quicflow <-> quicflow


def _client_config() -> quicflow.Configuration:
    return quicflow.Configuration(alpn_protocols=[hq.ALPN], cadata=self_signed().cert_pem,
                                  server_name="localhost")  # fmt: skip


def _server_config() -> quicflow.Configuration:
    cred = self_signed()
    return hq.server_configuration([cred.cert], cred.key)


def test_quicflow_client_and_server(tmp_path: Path) -> None:
    sizes = {"empty": 0, "one": 1, "small.txt": 1500, "mid.bin": 300 * KB, "big.bin": 4 * MB}
    digests = make_root(tmp_path / "root", sizes)
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> tuple[hq.HqResult, hq.HqServerStats]:
        server, handler = await hq.start_server(
            "127.0.0.1", 0, root=str(tmp_path / "root"), configuration=_server_config())
        try:
            port = server.address[1]
            urls = [f"https://localhost:{port}/{name}" for name in sizes]
            return await hq.run_client(urls, str(out), configuration=_client_config()), \
                handler.stats
        finally:
            server.close()

    result, stats = run(main())
    assert result.connections == 1
    assert [d.bytes for d in result.downloads] == list(sizes.values())
    for d, name in zip(result.downloads, sizes, strict=True):
        assert d.sha256 == digests[name] == sha(out / name)
    assert stats.requests == len(sizes) and stats.refused == 0
    assert stats.bytes_sent == sum(sizes.values())


def test_refused_requests_leave_the_connection_working(tmp_path: Path) -> None:
    """Requests outside the root, for missing files and malformed ones are refused with
    RESET_STREAM code 1; the same connection then still serves a good request."""
    make_root(tmp_path / "root", {"ok.bin": 100 * KB})
    (tmp_path / "secret").write_bytes(b"not for you")

    async def main() -> tuple[list[str], int, hq.HqServerStats]:
        server, handler = await hq.start_server(
            "127.0.0.1", 0, root=str(tmp_path / "root"), configuration=_server_config())
        errors = []
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=_client_config()) as conn:
                for path in ("/../secret", "/%2e%2e/secret", "/missing"):
                    with pytest.raises(hq.HqError) as info:
                        await hq.fetch(conn, path)
                    errors.append(str(info.value))
                reader, writer = await conn.create_stream()
                writer.write(b"POST /ok.bin\r\n")
                writer.write_eof()
                with pytest.raises(quicflow.StreamResetError) as reset:
                    await reader.read()
                assert reset.value.error_code == hq.HQ_REQUEST_REFUSED
                size, _ = await hq.fetch(conn, "/ok.bin")
            return errors, size, handler.stats
        finally:
            server.close()

    errors, size, stats = run(main())
    assert all("refused" in e and "code 1" in e for e in errors), errors
    assert size == 100 * KB
    assert stats.refused == 4 and stats.requests == 1


def test_key_update_before_each_request_on_a_quiet_connection(tmp_path: Path) -> None:
    """Three files one after the other over quicflow at both ends, the client starting a
    key update before each (``hq_peers.start_key_update``, as the interop suites do).

    Between two requests the connection is quiet, so an update deferred by three PTOs
    (RFC 9001 §6.5) starts from the timer without sending anything: the peer answers it
    only once the next request goes out in the new key phase. Both sides must count all
    three updates and every file must arrive whole.
    """
    digests = make_root(tmp_path / "root", {f"f{i}.bin": 20 * KB for i in range(3)})

    async def main() -> tuple[list[str], int, int, int]:
        server = await quicflow.serve(hq.HqServerHandler(str(tmp_path / "root")),
                                      "127.0.0.1", 0, configuration=_server_config(),
                                      connection_handler=faces.append)
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=_client_config()) as face:
                got = []
                for name in digests:
                    await hq_peers.start_key_update(face)
                    got.append((await hq.fetch(face, "/" + name))[1])
                return got, face.conn.key_updates_received, \
                    faces[0].conn.key_updates_received, face.conn.key_phase
        finally:
            server.close()

    faces: list[quicflow.QuicConnection] = []
    got, answered, followed, phase = run(main())
    assert got == list(digests.values())
    assert followed == 3  # the server followed each update the client started
    assert answered == 3  # and the client saw each one answered
    assert phase == 1  # three flips of the key phase bit


# ---------------------------------------------------------------------------- the command


@dataclass
class HqServerProcess:
    proc: subprocess.Popen[str]
    port: int
    cafile: str


def _pump(stream: object, out: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line.rstrip("\n"))
    out.put(None)


def start_cli_server(root: Path, *extra: str, env: dict[str, str] | None = None
                     ) -> HqServerProcess:  # fmt: skip
    proc = subprocess.Popen(
        [QUICFLOW, "hq", "server", "--root", str(root), "--host", "127.0.0.1", "--port", "0",
         *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True).start()
    port = cafile = None
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        assert line is not None, f"hq server exited early: {seen}"
        seen.append(line)
        if line.startswith("self-signed certificate written to "):
            cafile = line.split()[4]
        if line.startswith("listening on "):
            port = int(line.split()[2].rstrip(",").rsplit(":", 1)[1])
    assert port is not None and cafile is not None, seen
    return HqServerProcess(proc, port, cafile)


def stop_cli_server(server: HqServerProcess) -> None:
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=10) == 0


@pytest.fixture
def cli_server(tmp_path: Path) -> Iterator[tuple[HqServerProcess, dict[str, str]]]:
    digests = make_root(tmp_path / "root", {"a.bin": 2 * MB, "b.txt": 5000, "c": 1})
    server = start_cli_server(tmp_path / "root")
    yield server, digests
    stop_cli_server(server)


def hq_client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUICFLOW, "hq", "client", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env=env)  # fmt: skip


def test_cli_downloads_and_json(cli_server: tuple[HqServerProcess, dict[str, str]],
                                tmp_path: Path) -> None:  # fmt: skip
    server, digests = cli_server
    out = tmp_path / "dl"
    out.mkdir()
    urls = [f"https://localhost:{server.port}/{name}" for name in digests]
    r = hq_client(*urls, "--output", str(out), "--cafile", server.cafile, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {f["file"]: f["sha256"] for f in doc["files"]} == {
        str(out / n): d for n, d in digests.items()}
    assert doc["bytes_received"] == 2 * MB + 5000 + 1
    for name, digest in digests.items():
        assert sha(out / name) == digest
    r = hq_client(urls[1], "--output", str(out), "--cafile", server.cafile, "-q")
    assert r.returncode == 0 and r.stderr == ""
    assert f"-> {out / 'b.txt'}: 5000 bytes, sha256 {digests['b.txt']}" in r.stdout


def test_cli_failures(cli_server: tuple[HqServerProcess, dict[str, str]],
                      tmp_path: Path) -> None:  # fmt: skip
    server, _ = cli_server
    base = f"https://localhost:{server.port}"
    r = hq_client(f"{base}/missing", "--output", str(tmp_path), "--cafile", server.cafile)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0], r.stderr
    r = hq_client(f"{base}/a.bin", "--output", str(tmp_path))  # system store: not trusted
    assert r.returncode == 1 and "certificate refused" in r.stderr
    for args in ([f"http://localhost:{server.port}/a.bin", "--output", str(tmp_path)],
                 [f"{base}/a.bin", "--output", str(tmp_path / "nope")],
                 [f"{base}/a.bin"]):  # fmt: skip
        r = hq_client(*args)
        assert r.returncode == 2, (args, r.stderr)
    r = subprocess.run([QUICFLOW, "hq", "server", "--root", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=30)  # fmt: skip
    assert r.returncode == 2 and "not a directory" in r.stderr


def test_sslkeylogfile_environment(cli_server: tuple[HqServerProcess, dict[str, str]],
                                   tmp_path: Path) -> None:  # fmt: skip
    """$SSLKEYLOGFILE gets the client's secrets (four labels, one client random); an
    explicit --keylog takes precedence over it."""
    server, _ = cli_server
    env_log, opt_log = tmp_path / "env.keys", tmp_path / "opt.keys"
    env = dict(os.environ, SSLKEYLOGFILE=str(env_log))
    url = f"https://localhost:{server.port}/c"
    r = hq_client(url, "--output", str(tmp_path), "--cafile", server.cafile, env=env)
    assert r.returncode == 0, r.stderr
    lines = env_log.read_text().splitlines()
    labels = sorted(line.split()[0] for line in lines)
    assert labels == ["CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0",
                      "SERVER_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"]
    assert len({line.split()[1] for line in lines}) == 1
    r = hq_client(url, "--output", str(tmp_path), "--cafile", server.cafile,
                  "--keylog", str(opt_log), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(opt_log.read_text().splitlines()) == 4
    assert len(env_log.read_text().splitlines()) == 4  # unchanged


# ---------------------------------------------------------------------------- aioquic


@pytest.fixture
def aioquic_site(tmp_path: Path, require: Callable[[bool, str], None]
                 ) -> tuple[Path, dict[str, str]]:  # fmt: skip
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")
    sizes = {"x.bin": 3 * MB, "y.bin": 70 * KB, "z.txt": 10}
    return tmp_path / "root", make_root(tmp_path / "root", sizes)


@pytest.mark.interop
def test_quicflow_client_aioquic_server(aioquic_site: tuple[Path, dict[str, str]],
                                        tmp_path: Path) -> None:  # fmt: skip
    root, digests = aioquic_site
    cert, key = self_signed().write(tmp_path, "server")
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> hq.HqResult:
        async with AioquicHqProcess("server", "--cert", cert, "--key", key,
                                    "--root", str(root)) as peer:  # fmt: skip
            urls = [f"https://localhost:{peer.port}/{n}" for n in digests]
            return await hq.run_client(urls, str(out), configuration=_client_config())

    result = run(main())
    assert [d.sha256 for d in result.downloads] == list(digests.values())
    for name, digest in digests.items():
        assert sha(out / name) == digest


@pytest.mark.interop
def test_aioquic_client_quicflow_server(aioquic_site: tuple[Path, dict[str, str]],
                                        tmp_path: Path) -> None:  # fmt: skip
    root, digests = aioquic_site
    cert, _ = self_signed().write(tmp_path, "server")
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> tuple[dict[str, object], hq.HqServerStats]:
        server, handler = await hq.start_server(
            "127.0.0.1", 0, root=str(root), configuration=_server_config())
        try:
            async with AioquicHqProcess("client", "--port", str(server.address[1]),
                                        "--cafile", cert, "--out", str(out),
                                        *(f"/{n}" for n in digests)) as peer:  # fmt: skip
                result = await peer.next_event("result")
                assert await peer.wait_exit(30) == 0
            await asyncio.sleep(0)
            return result, handler.stats
        finally:
            server.close()

    result, stats = run(main())
    files = result["files"]
    assert isinstance(files, list)
    assert {f["path"]: f["sha256"] for f in files} == {f"/{n}": d for n, d in digests.items()}
    for name, digest in digests.items():
        assert sha(out / name) == digest
    assert stats.requests == 3
