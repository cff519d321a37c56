"""``quicflow perf server --workers N --json``: the per-worker JSON contract (issue 6,
item 6) on SIGTERM and SIGINT, and the new options' argument checks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

QUICFLOW = str(Path(sys.executable).parent / "quicflow")
WORKER_KEYS = {"pid", "connections", "datagrams_received", "misrouted_datagrams",
               "connected_sockets"}  # fmt: skip
pytestmark = pytest.mark.timeout(120)


def start_server(*extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [QUICFLOW, "perf", "server", "--host", "127.0.0.1", "--port", "0", "--json", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, f"perf server exited early: {seen}"
        seen.append(line)
        if line.startswith("listening on "):
            return proc, int(line.split()[2].rsplit(":", 1)[1])
    proc.kill()
    raise AssertionError(f"no 'listening on' line: {seen}")


def run_clients(port: int, connections: int, download: str = "1M") -> dict:
    out = subprocess.run(
        [QUICFLOW, "perf", "client", "--host", "127.0.0.1", "--port", str(port), "--insecure",
         "--connections", str(connections), "--download", download, "--json", "-q"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def stop(proc: subprocess.Popen[str], sig: int) -> dict:
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert len(lines) == 1, stdout  # one JSON object
    return json.loads(lines[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_perf_server_workers_json(sig: int) -> None:
    proc, port = start_server("--workers", "2")
    try:
        client = run_clients(port, 6)
        assert client["bytes_received"] == 1 << 20
        report = stop(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    workers = report["workers"]
    assert len(workers) == 2
    for row in workers:
        assert WORKER_KEYS <= set(row)
        assert row["pid"] > 0 and row["pid"] != proc.pid
        # per-connection sockets are on (default cap), but ~170 KiB per connection is a
        # short exchange for the default policy (256 KiB or 2 s): it costs no socket
        assert row["misrouted_datagrams"] == 0 and row["connected_sockets"] == 0
    assert len({row["pid"] for row in workers}) == 2
    assert sum(row["connections"] for row in workers) == 6
    assert sum(row["datagrams_received"] for row in workers) == (
        report["datapath"]["datagrams_received"]
    )
    # the totals it printed before workers existed
    assert report["streams"] == 6 and report["bytes_sent"] == 1 << 20
    assert {"endpoint", "datapath", "bytes_received"} <= set(report)


def test_perf_server_workers_with_connection_sockets_json() -> None:
    # 2 connections of 4 MiB each qualify for a socket of their own (256 KiB moved)
    proc, port = start_server("--workers", "2", "--connection-sockets", "8")
    try:
        client = run_clients(port, 2, download="8M")
        assert client["bytes_received"] == 8 << 20
        report = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    workers = report["workers"]
    for row in workers:
        assert row["misrouted_datagrams"] == 0
        assert 0 <= row["connected_sockets"] <= row["connections"]
        # a worker with a connection gave it a socket of its own
        assert (row["connected_sockets"] > 0) == (row["connections"] > 0), row
    assert report["connected_sockets"] == max(row["connected_sockets"] for row in workers)
    assert sum(row["datagrams_received"] for row in workers) == (
        report["datapath"]["datagrams_received"]
    )


def test_perf_server_without_workers_has_one_worker_row() -> None:
    proc, port = start_server("--host-id", "7")
    try:
        run_clients(port, 2)
        report = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (row,) = report["workers"]
    assert WORKER_KEYS <= set(row)
    assert row["pid"] == proc.pid and row["connections"] == 2


@pytest.mark.parametrize("args", [
    ["--workers", "0"],
    ["--workers", "2", "--quic-lb-key", "00" * 16],
    ["--quic-lb-key", "zz"],
    ["--host-id", "256"],
    ["--host-id-len", "3", "--quic-lb-nonce-len", "17"],
])  # fmt: skip
def test_bad_worker_options_exit_2(args: list[str]) -> None:
    out = subprocess.run(
        [QUICFLOW, "perf", "server", "--port", "0", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
