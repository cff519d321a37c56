"""Same-host takeover with workers (issue 7, item 3): every worker hands over to its
successor.

A ``quicflow perf server --workers 2 --handoff PATH`` serves downloads on connections
spread over both workers; a successor ``--workers 2 --takeover PATH`` takes the group
over mid-transfer (worker i from old worker i at PATH.i, the reuseport group's sockets
and their CBPF steering program with it). Every download completes with its SHA-256,
no client makes a second handshake, and the old group exits 0 saying how many
connections it handed over. A successor with another worker count is refused with a
message that says what to start.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import quicflow
from quicflow.aio.workers import CidPlan
from quicflow.transport.config import Configuration
from tests.support.takeover import ROOT, ServerProc, perf_sha256, write_certificate

MB = 1 << 20
SIZE = 16 * MB
CONNECTIONS = 10  # all on one worker by the hash: 2 ** -9, not 2 ** -5 as with 6


def _worker_of(conn: quicflow.QuicConnection) -> int:
    """The worker named by the server CID the client sends to (the QUIC-LB worker
    byte, where the group's CBPF program reads it)."""
    return conn.conn.peer_cid[CidPlan().layout(0).worker_cid_offset]


@pytest.mark.timeout(300)
def test_worker_group_takes_over_mid_downloads(tmp_path: Path) -> None:
    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "handoff.sock")
    common = ["--cert", cert, "--key", key, "--json", "--workers", "2"]
    old = ServerProc(["--host", "127.0.0.1", "--port", "0", "--handoff", path, *common])
    new = ServerProc(["--takeover", path, *common], wait_for_go=True)

    def switch() -> tuple[int, dict[str, object] | None]:
        new.go()
        status, doc = old.finish(timeout=120)
        new.wait_line("listening on ", timeout=120)
        return status, doc

    async def run() -> tuple[list[str], list[int], tuple[int, dict[str, object] | None]]:
        port = old.port()
        loop = asyncio.get_running_loop()
        config = Configuration(alpn_protocols=["perf"], cafile=cert, server_name="localhost")
        switched = asyncio.Event()
        halfway = [asyncio.Event() for _ in range(CONNECTIONS)]

        async def download(i: int) -> tuple[str, int]:
            async with quicflow.connect("127.0.0.1", port, configuration=config) as conn:
                first = conn.conn
                worker = _worker_of(conn)
                reader, writer = await conn.create_stream()
                writer.write(struct.pack("!Q", SIZE))
                writer.write_eof()
                digest = hashlib.sha256()
                got = 0
                while True:
                    if not switched.is_set():
                        await asyncio.sleep(0.02)  # slowly until the switch is over
                    data = await reader.read(16 * 1024 if not switched.is_set() else MB)
                    if not data:
                        break
                    digest.update(data)
                    got += len(data)
                    if got >= MB:
                        halfway[i].set()
                assert conn.conn is first and not conn.closed, "no second handshake"
                return digest.hexdigest(), worker

        tasks = [loop.create_task(download(i)) for i in range(CONNECTIONS)]
        for event in halfway:
            await asyncio.wait_for(event.wait(), 120)
        result = await loop.run_in_executor(None, switch)
        switched.set()
        assert not any(t.done() for t in tasks), "a download ended before the switch"
        done = await asyncio.gather(*tasks)
        return [d for d, _ in done], [w for _, w in done], result

    try:
        digests, workers, (status, doc) = asyncio.run(run())
        assert sorted(set(workers)) == [0, 1], f"connections not spread: {workers}"
        assert digests == [perf_sha256(SIZE)] * CONNECTIONS
        assert status == 0 and doc == {"handed_off_connections": CONNECTIONS}
        assert any(line.startswith(f"handed off {CONNECTIONS} connection")
                   for line in old.seen)
        assert any(line.startswith(f"took over {CONNECTIONS} connection") for line in new.seen)
        new_status, summary = new.stop()
        assert new_status == 0 and summary is not None
        endpoint = summary["endpoint"]
        assert isinstance(endpoint, dict)
        assert endpoint["connections_accepted"] == 0, "no new handshake after the switch"
        # each successor worker served the connections of its predecessor: the worker
        # byte kept routing to the right process (nothing handed between workers)
        per_worker = summary["workers"]
        assert isinstance(per_worker, list) and len(per_worker) == 2
        assert all(w["misrouted_datagrams"] == 0 for w in per_worker)
        assert all(w["datagrams_received"] > 0 for w in per_worker)
    finally:
        old.kill()
        new.kill()


def _perf_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "quicflow", "perf", "server", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


@pytest.mark.timeout(120)
def test_mismatched_worker_counts_are_refused(tmp_path: Path) -> None:
    """A successor with another worker count, or none, is refused with a message that
    says which count to start; the old group serves on."""
    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "handoff.sock")
    common = ["--cert", cert, "--key", key]
    old = ServerProc(["--host", "127.0.0.1", "--port", "0", "--workers", "2", "--handoff",
                      path, "--json", *common])
    try:
        old.port()
        three = _perf_server("--workers", "3", "--takeover", path, *common)
        assert three.returncode == 1
        assert "runs 2 worker(s), the successor 3: start it with --workers 2" in three.stderr
        single = _perf_server("--takeover", path, *common)
        assert single.returncode == 1
        assert "runs 2 worker(s): start the successor with --workers 2" in single.stderr
        assert old.proc.poll() is None, "the old group serves on"
        status, doc = old.stop()
        assert status == 0 and doc is not None and "handed_off_connections" not in doc
    finally:
        old.kill()

    # and a worker group cannot take over a single process
    single_path = str(tmp_path / "single.sock")
    lone = ServerProc(["--host", "127.0.0.1", "--port", "0", "--handoff", single_path,
                       *common])
    try:
        lone.port()
        group = _perf_server("--workers", "2", "--takeover", single_path, *common)
        assert group.returncode == 1
        assert "runs without workers" in group.stderr
        assert lone.proc.poll() is None
    finally:
        lone.kill()
