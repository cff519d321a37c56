"""The perf protocol and the ``quicflow`` command, with real processes on loopback.

Counting (see ``quicflow.apps.perf``): ``bytes_received`` is the sum of the response
payloads the client read; ``bytes_sent`` the sum of the upload payloads it wrote (the
8-byte size headers are not counted); ``--download``/``--upload`` are totals over all
streams of all connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import quicflow
from quicflow.apps.perf import PATTERN, PatternChecker, run_client, split_evenly, start_server
from quicflow.cli.main import main, parse_size
from quicflow.datapath.socket import bind_reuseport
from quicflow.tls.certs import certificate_pem, generate_self_signed

QUICFLOW = str(Path(sys.executable).parent / "quicflow")
MIB = 1 << 20
JSON_KEYS = {
    "bytes_received", "bytes_sent", "seconds", "goodput_bytes_per_s", "connections",
    "streams", "handshake_seconds", "datagrams_sent", "datagrams_received", "syscalls_send",
    "syscalls_recv", "syscalls_per_datagram", "packets_lost", "verified",
}  # fmt: skip


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    cafile: str
    lines: list[str]


def _pump(stream: object, out: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line.rstrip("\n"))
    out.put(None)


@pytest.fixture(scope="module")
def perf_server() -> Iterator[ServerProcess]:
    proc = subprocess.Popen(
        [QUICFLOW, "perf", "server", "--host", "127.0.0.1", "--port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True).start()
    seen: list[str] = []
    port = cafile = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        assert line is not None, f"perf server exited early: {seen}"
        seen.append(line)
        if line.startswith("self-signed certificate written to "):
            cafile = line.split()[4]
        if line.startswith("listening on "):
            port = int(line.split()[2].rsplit(":", 1)[1])
    assert port is not None and cafile is not None, seen
    assert os.path.isfile(cafile)
    server = ServerProcess(proc, port, cafile, seen)
    yield server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert not os.path.exists(cafile), "the temporary certificate is removed at exit"


def _client(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QUICFLOW, "perf", "client", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


# ---------------------------------------------------------------------------- the command


def test_download_upload_json(perf_server: ServerProcess) -> None:
    r = _client(
        "--host", "127.0.0.1", "--port", str(perf_server.port), "--cafile", perf_server.cafile,
        "--download", "5M", "--upload", "2M", "--streams", "4", "--connections", "2",
        "--verify", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert len(out) == 1, r.stdout
    result = json.loads(out[0])
    assert JSON_KEYS <= result.keys()
    assert result["bytes_received"] == 5 * MIB
    assert result["bytes_sent"] == 2 * MIB
    assert result["connections"] == 2
    assert result["streams"] == 8
    assert result["verified"] is True
    assert result["seconds"] > 0 and result["goodput_bytes_per_s"] > 0
    assert result["goodput_bytes_per_s"] == pytest.approx(7 * MIB / result["seconds"])
    assert result["datagrams_received"] > 5 * MIB // 1500
    assert result["syscalls_send"] > 0 and result["syscalls_recv"] > 0
    # batching counters (issue 11): the client's uploads went through the engine in runs
    assert result["packets_per_engine_call"] > 1.0
    assert result["segments_per_gso_call"] >= 1.0
    assert len(result["connection_goodputs"]) == 2
    assert 0.5 <= result["fairness"] <= 1.0
    # the client's own CPU in the goodput window: positive, and no more than its threads
    # could use in that window (bench/scale.py: is the client what limits the goodput?)
    assert 0 < result["cpu_seconds"] <= result["seconds"] * (os.cpu_count() or 1) + 0.01


def test_key_updates_by_packet_count(perf_server: ServerProcess) -> None:
    """--key-update-after: the client starts 1-RTT key updates by itself (the AEAD
    confidentiality limit's mechanism, RFC 9001 §6.6, made to come after 40 packets);
    the upload arrives intact and the JSON counts them."""
    r = _client(
        "--host", "127.0.0.1", "--port", str(perf_server.port), "--cafile", perf_server.cafile,
        "--download", "1M", "--upload", "4M", "--verify", "--json", "--key-update-after", "40",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["bytes_sent"] == 4 * MIB and result["bytes_received"] == 1 * MIB
    assert result["verified"] is True
    assert result["key_updates_started"] >= 1
    r = _client("--host", "127.0.0.1", "--key-update-after", "0")
    assert r.returncode == 2 and "must be at least 1" in r.stderr


def test_insecure_and_summary_line(perf_server: ServerProcess) -> None:
    r = _client(
        "--host", "127.0.0.1", "--port", str(perf_server.port), "--insecure",
        "--download", "1M", "--congestion", "newreno", "--backend", "basic",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("received 1.0 MiB, sent 0 B in ")
    assert "goodput" in r.stdout


def test_other_ca_is_refused(perf_server: ServerProcess, tmp_path: Path) -> None:
    other, _ = generate_self_signed(["localhost", "127.0.0.1"])
    ca = tmp_path / "other-ca.pem"
    ca.write_bytes(certificate_pem(other))
    r = _client(
        "--host", "127.0.0.1", "--port", str(perf_server.port), "--cafile", str(ca),
        "--download", "1M", "--timeout", "5",
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stdout == ""
    assert "certificate refused" in _one_error_line(r.stderr)


def test_no_server_times_out() -> None:
    """A peer that swallows every datagram (a bound socket that never answers; a closed
    port is refused at once instead, see test_fast_failure.py)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    start = time.monotonic()
    try:
        r = _client(
            "--host", "127.0.0.1", "--port", str(silent.getsockname()[1]), "--insecure",
            "--timeout", "2",
        )
    finally:
        silent.close()
    elapsed = time.monotonic() - start
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "timed out" in line
    # the handshake gives up after 2 s (+0.5 s guard); leaving the connection then waits
    # for its closing period (3 PTOs) in quicflow.aio.connect()
    assert elapsed < 10, elapsed


def test_every_connection_refused_is_one_error_line() -> None:
    """Several connections that all fail (a closed port refuses each at once): the
    command says so in one line; the other connections' failures are not left to
    asyncio's "Task exception was never retrieved" tracebacks."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    r = _client("--host", "127.0.0.1", "--port", str(port), "--insecure",
                "--connections", "4", "--timeout", "5")
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert line.startswith("quicflow: connection refused"), line


def test_bad_arguments_exit_2() -> None:
    r = _client("--host", "127.0.0.1", "--download", "5X")
    assert r.returncode == 2
    assert "invalid size" in r.stderr
    r = _client("--host", "127.0.0.1", "--resume", "--shared-socket")
    assert r.returncode == 2
    assert "drop --shared-socket" in r.stderr


def test_unwritable_keylog_is_refused(tmp_path: Path) -> None:
    """The TLS layer ignores key-log write errors, so an unwritable --keylog used to be
    silently ignored; the command refuses it up front."""
    r = _client("--host", "127.0.0.1", "--insecure", "--keylog", str(tmp_path / "no" / "k"))
    assert r.returncode == 2
    assert "--keylog: cannot append to" in r.stderr and "No such file" in r.stderr


def test_file_and_resolver_errors_are_not_network_errors(
    perf_server: ServerProcess, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    r = subprocess.run(
        [QUICFLOW, "perf", "client", "--host", "127.0.0.1", "--port", str(perf_server.port),
         "--insecure", "--download", "1K", "-q"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "QLOGDIR": str(not_a_dir)},
    )  # fmt: skip
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert line == f"quicflow: {not_a_dir}: cannot create the qlog directory (File exists)"
    r = _client("--host", "name.invalid", "--port", "4433", "--insecure", "-q")
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert line.startswith("quicflow: cannot resolve 'name.invalid': "), line


def test_demo_json() -> None:
    r = subprocess.run(
        [QUICFLOW, "demo", "--size", "5M", "--json"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["bytes_received"] == 5 * MIB
    assert result["verified"] is True
    assert result["goodput_bytes_per_s"] > 0


def test_python_dash_m_help() -> None:
    for module in ("quicflow", "quicflow.cli.main"):
        r = subprocess.run(
            [sys.executable, "-m", module, "perf", "client", "--help"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "--download" in r.stdout and "1024" in r.stdout


def test_main_returns_status_for_no_command() -> None:
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100", 100),
        ("0", 0),
        ("1K", 1024),
        ("1k", 1024),
        ("3M", 3 * MIB),
        ("2G", 2 << 30),
        ("4MiB", 4 * MIB),
        ("4MB", 4 * MIB),
        ("1.5M", 3 * MIB // 2),
        (" 64K ", 64 * 1024),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "5X", "-1", "1.2.3M", "M", "K5", "iB", "5 GiBs"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# ---------------------------------------------------------------------------- the protocol


def test_split_evenly() -> None:
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(0, 2) == [0, 0]
    assert sum(split_evenly(5 * MIB + 7, 8)) == 5 * MIB + 7


def test_pattern_checker() -> None:
    data = PATTERN * 40 + PATTERN[:1000]
    good = PatternChecker()
    for i in range(0, len(data), 777_777):
        assert good.feed(data[i : i + 777_777]) == -1
    bad = PatternChecker()
    corrupted = bytearray(data[: 3 * MIB])
    corrupted[2 * MIB + 5] ^= 1
    assert bad.feed(bytes(corrupted[: MIB])) == -1
    assert bad.feed(bytes(corrupted[MIB:])) >= MIB
    shifted = PatternChecker()
    assert shifted.feed(data[1:1000]) == 0


def test_in_process_uni_streams_and_bad_requests() -> None:
    async def scenario() -> None:
        cert, key = generate_self_signed(["localhost", "127.0.0.1"])
        cfg = quicflow.Configuration(
            alpn_protocols=["perf"], certificate_chain=[cert], private_key=key
        )
        server, handler = await start_server("127.0.0.1", 0, configuration=cfg)
        port = server.address[1]
        ccfg = quicflow.Configuration(alpn_protocols=["perf"], cadata=certificate_pem(cert))
        try:
            async with quicflow.connect("127.0.0.1", port, configuration=ccfg) as conn:
                # upload-only unidirectional stream
                _, uw = await conn.create_stream(bidirectional=False)
                uw.write(b"x" * 100_000)
                uw.write_eof()
                await uw.wait_closed()
                # a request shorter than its 8-byte size header is reset
                br, bw = await conn.create_stream()
                bw.write(b"\x00\x01")
                bw.write_eof()
                with pytest.raises(quicflow.StreamResetError):
                    await br.read()
                # a zero-byte request gets an empty answer and FIN
                zr, zw = await conn.create_stream()
                zw.write(struct.pack("!Q", 0))
                zw.write_eof()
                assert await zr.read() == b""
            result = await run_client(
                "127.0.0.1", port, download=3 * MIB + 1, upload=MIB, streams=3,
                configuration=ccfg, verify=True, timeout=5,
            )  # fmt: skip
            assert result.bytes_received == 3 * MIB + 1
            assert result.bytes_sent == MIB
            assert handler.stats.bad_requests == 1
            assert handler.stats.bytes_received == 100_000 + MIB
        finally:
            server.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))



def test_server_json_has_batching_counters() -> None:
    """``perf server --json`` prints its counters on exit, with packets per engine call
    and segments per GSO call (issue 11) next to the existing keys."""
    proc = subprocess.Popen(
        [QUICFLOW, "perf", "server", "--host", "127.0.0.1", "--port", "0", "--json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port = None
        cafile = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "perf server exited early"
            if line.startswith("self-signed certificate written to "):
                cafile = line.split()[4]
            if line.startswith("listening on "):
                port = int(line.split()[2].rsplit(":", 1)[1])
        assert port is not None and cafile is not None
        r = _client(
            "--host", "127.0.0.1", "--port", str(port), "--cafile", cafile,
            "--download", "4M", "--json",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    assert {"streams", "bytes_sent", "endpoint", "datapath"} <= result.keys()
    assert result["bytes_sent"] == 4 * MIB
    # 4 MiB left in runs of many packets per engine call and per GSO send
    assert result["packets_per_engine_call"] > 4
    # (packets of at most 1452 bytes: the default ceiling of path MTU discovery)
    assert result["endpoint"]["engine_packets_sealed"] * 1452 > 4 * MIB
    assert result["segments_per_gso_call"] > 4


def test_server_on_a_port_in_use_fails() -> None:
    """A listener binds with SO_REUSEPORT (per-connection sockets need it), so a second
    server of the same user on a busy port used to start and silently share the port
    (the kernel splitting clients between the two); it now exits 1 saying so."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    bind_reuseport(taken, ("127.0.0.1", 0))  # a port of its own, not another server's
    port = taken.getsockname()[1]
    try:
        for extra in ([], ["--workers", "2"]):
            r = subprocess.run(
                [QUICFLOW, "perf", "server", "--host", "127.0.0.1", "--port", str(port),
                 *extra],
                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            assert r.returncode == 1, r.stderr
            assert r.stderr.splitlines()[-1] == (
                f"quicflow: network error: 127.0.0.1 port {port} is already in use"
                " (another server listens there)"
            )
    finally:
        taken.close()


def test_handoff_path_errors_say_what_failed(tmp_path: Path) -> None:
    def server(*args: str) -> str:
        r = subprocess.run(
            [QUICFLOW, "perf", "server", "--host", "127.0.0.1", "--port", "0", *args],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert r.returncode == 1, r.stderr
        return r.stderr.splitlines()[-1]

    nothing = tmp_path / "none.sock"
    assert server("--takeover", str(nothing)) == (
        f"quicflow: takeover failed: no server offers a handoff at {nothing}"
        " (No such file or directory)"
    )
    missing_dir = tmp_path / "no" / "h.sock"
    assert server("--handoff", str(missing_dir)) == (
        f"quicflow: {missing_dir}: cannot offer a handoff there (No such file or directory)"
    )


def test_migrate_address_arguments() -> None:
    """`perf migrate --to` without a port used to fail after connecting with "moving
    failed: invalid literal for int()"; it is a bad argument (exit 2)."""
    r = subprocess.run(
        [QUICFLOW, "perf", "migrate", "--handoff", "/nonexistent.sock", "--to", "127.0.0.1",
         "--cert", "c", "--key", "k", "--ca", "a"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2
    assert "argument --to: expected HOST:PORT" in r.stderr
    r = subprocess.run(
        [QUICFLOW, "perf", "migrate", "--handoff", "/nonexistent.sock", "--to",
         "127.0.0.1:7444", "--cert", "c", "--key", "k", "--ca", "a"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 1
    assert _one_error_line(r.stderr) == (
        "quicflow: no server offers a handoff at /nonexistent.sock (No such file or directory)"
    )


@pytest.mark.parametrize(("args", "message"), [
    (["--no-steering"], "--no-steering needs --workers"),
    (["--migrate-cert", "x.pem"],
     "--migrate-cert, --migrate-key and --migrate-ca need --migrate-listen"),
    (["--migrate-listen", "127.0.0.1:0"],
     "--migrate-listen needs --migrate-cert, --migrate-key and --migrate-ca"),
    (["--token-key-file", "/nonexistent/key"], "--token-key-file /nonexistent/key: no such file"),
])  # fmt: skip
def test_server_options_that_would_do_nothing_are_refused(
    args: list[str], message: str
) -> None:
    """These were ignored (server started anyway) or failed only after the server
    started, i.e. after a --takeover had already taken the connections over."""
    r = subprocess.run(
        [QUICFLOW, "perf", "server", "--host", "127.0.0.1", "--port", "0", *args],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert _one_error_line(r.stderr) == f"quicflow: {message}"


def test_a_waiting_download_holds_none_of_its_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a perf client's stream waits for its next read it holds none of its earlier
    reads (up to 1 MiB each): with 256 connections those were most of the client's heap
    (issue 11). Counted by references to the last read when the next one starts."""
    from quicflow.aio.streams import QuicStreamReader

    held: list[int] = []
    last: dict[int, bytes] = {}
    orig = QuicStreamReader.read

    async def read(self: QuicStreamReader, n: int = -1) -> bytes:
        before = last.pop(id(self), None)
        # references other than ``before`` and getrefcount's own (a read of a few bytes
        # can be a shared constant: not counted)
        if before is not None and len(before) >= 1024:
            held.append(sys.getrefcount(before) - 2)
        data = await orig(self, n)
        last[id(self)] = data
        return data

    monkeypatch.setattr(QuicStreamReader, "read", read)

    async def scenario() -> None:
        cert, key = generate_self_signed(["localhost", "127.0.0.1"])
        cfg = quicflow.Configuration(
            alpn_protocols=["perf"], certificate_chain=[cert], private_key=key
        )
        server, _ = await start_server("127.0.0.1", 0, configuration=cfg)
        ccfg = quicflow.Configuration(alpn_protocols=["perf"], cadata=certificate_pem(cert))
        try:
            result = await run_client("127.0.0.1", server.address[1], download=8 * MIB,
                                      connections=2, configuration=ccfg, timeout=10)
            assert result.bytes_received == 8 * MIB
        finally:
            server.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert len(held) >= 2  # reads that waited for more
    assert max(held) == 0, held


def _client_with_file_limit(soft: int, hard: int, *args: str) -> subprocess.CompletedProcess[str]:
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run(
        [QUICFLOW, "perf", "client", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        preexec_fn=limit,
    )  # fmt: skip


def test_open_file_limit_is_raised_to_the_hard_limit(perf_server: ServerProcess) -> None:
    """400 connections need 400 sockets: a soft limit of 256 under a hard one of 4096 is
    raised by the command itself (as Go's runtime does), and the run succeeds."""
    r = _client_with_file_limit(
        256, 4096, "--host", "127.0.0.1", "--port", str(perf_server.port), "--cafile",
        perf_server.cafile, "--server-name", "localhost", "--download", "400K",
        "--connections", "400", "--json", "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_received"] == 400 * 1024


def test_too_few_files_says_why_and_what_to_do(perf_server: ServerProcess) -> None:
    """With a hard limit of 256 the run fails with one line that names the limit and the
    shared socket; --shared-socket then succeeds under the same limit."""
    common = ("--host", "127.0.0.1", "--port", str(perf_server.port), "--cafile",
              perf_server.cafile, "--server-name", "localhost", "--download", "400K",
              "--connections", "400", "-q")
    r = _client_with_file_limit(256, 256, *common)
    assert r.returncode == 1
    line = _one_error_line(r.stderr)
    assert "Too many open files" in line and "open-file limit 256" in line
    assert "--shared-socket" in line and "client_endpoint" in line
    r = _client_with_file_limit(256, 256, *common, "--shared-socket", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes_received"] == 400 * 1024


def test_closed_stdout_ends_quietly(perf_server: ServerProcess) -> None:
    """``quicflow perf client --json | head -c 10``: the reader goes away; no traceback."""
    proc = subprocess.Popen(
        [QUICFLOW, "perf", "client", "--host", "127.0.0.1", "--port", str(perf_server.port),
         "--cafile", perf_server.cafile, "--server-name", "localhost", "--download", "64K",
         "--json", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the result is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
