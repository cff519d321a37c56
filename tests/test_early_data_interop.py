"""Resumption and 0-RTT over real loopback sockets (RFC 9001 §4.6): quicflow with
quicflow (0-RTT accepted, rejected by the server, resumption without 0-RTT), with
aioquic and qh3 in both roles, a ticket of one `perf server` process taken by another
configured with the same key, and `perf client --resume/--0rtt --json`. Every transfer
is checked by SHA-256 (tests/support/echo_proto.py, the perf pattern)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.apps.perf import _run_stream, _Tally
from quicflow.tls.tickets import SessionTicketCache
from tests.support import echo_proto
from tests.support.aioquic_peer import AioquicProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import ca, client_config, issued, run, server_config

CA_NAME = "resumption-interop"
UPLOAD = 200_000  # several 0-RTT packets
DOWNLOAD = 300_000


@dataclass(frozen=True)
class Pki:
    cert: str
    key: str
    cafile: str
    ca_pem: bytes


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    authority = ca(CA_NAME)
    cert, key = issued(CA_NAME, "localhost").write(tmp_path, "server")
    cafile, _ = authority.write(tmp_path, "ca")
    return Pki(cert, key, cafile, authority.cert_pem)


async def exchange(conn: quicflow.QuicConnection, seed: int) -> dict[str, object]:
    reader, writer = await conn.create_stream()
    return await echo_proto.client_exchange(
        reader, writer, upload=echo_proto.payload(5_000 + seed, UPLOAD), download=DOWNLOAD,
        seed=seed)


async def resume_twice(port: int, pki: Pki, **client_kw: Any
                       ) -> tuple[quicflow.QuicConnection, dict[str, object]]:
    """Our client: one connection for a ticket, then one that writes its request and
    upload before the handshake completes (0-RTT when allowed)."""
    cache = SessionTicketCache()
    cfg = client_config(pki.ca_pem, session_ticket_cache=cache, **client_kw)
    async with quicflow.connect("127.0.0.1", port, configuration=cfg) as conn:
        result = await exchange(conn, 1)
        assert result["ok"], result
        assert not conn.session_resumed
        for _ in range(300):
            if len(cache):
                break
            await asyncio.sleep(0.01)
    assert len(cache) == 1, "no session ticket"
    async with quicflow.connect("127.0.0.1", port, configuration=cfg,
                                wait_connected=False) as conn:
        result = await exchange(conn, 2)
        await conn.wait_connected()
    return conn, result


# ---------------------------------------------------------------- quicflow <-> quicflow


@pytest.mark.parametrize("case", ["accepted", "rejected", "no-early-data"])
def test_quicflow_resumption(pki: Pki, case: str) -> None:
    async def main() -> None:
        server_kw: dict[str, Any] = {}
        if case == "rejected":
            server_kw["early_data_hook"] = lambda name, alpn, address: False
        accepted: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(issued(CA_NAME, "localhost"), **server_kw),
            connection_handler=accepted.append)
        try:
            conn, result = await resume_twice(server.address[1], pki,
                                              early_data=case != "no-early-data")
        finally:
            server.close()
        assert result["ok"], result  # every byte intact, also when 0-RTT was rejected
        assert conn.session_resumed and accepted[1].session_resumed
        assert conn.early_data_accepted == (case == "accepted")
        assert accepted[1].early_data_accepted == (case == "accepted")
        sent = conn.conn.counters.zero_rtt_sent
        assert (sent > 0) == (case != "no-early-data")
        assert (accepted[1].conn.counters.zero_rtt_received > 0) == (case == "accepted")

    run(main(), 60)


# ---------------------------------------------------------------- aioquic and qh3


LIBRARIES = ["aioquic", "qh3"]


@pytest.mark.interop
@pytest.mark.parametrize("library", LIBRARIES)
def test_our_client_resumes_with_foreign_server(
    pki: Pki, library: str, require: Callable[[bool, str], None]
) -> None:
    require(have_module(library), f"Python package {library!r} not installed (make venv)")

    async def main() -> None:
        async with AioquicProcess("server", "--cert", pki.cert, "--key", pki.key,
                                  library=library,
                                  module="tests.support.aioquic_resume") as peer:
            assert peer.port is not None
            conn, result = await resume_twice(peer.port, pki)
            assert result["ok"], result
            assert conn.session_resumed and conn.early_data_accepted
            assert conn.conn.counters.zero_rtt_sent > 0
            for _ in range(200):
                if sum(e["event"] == "resumption" for e in peer.events) >= 2:
                    break
                await asyncio.sleep(0.01)
            shakes = [e for e in peer.events if e["event"] == "resumption"]
            assert [e["session_resumed"] for e in shakes] == [False, True]
            assert shakes[1]["early_data_accepted"] is True

    run(main(), 60)


@pytest.mark.interop
@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("early", [True, False], ids=["accepted", "rejected"])
def test_foreign_client_resumes_with_our_server(
    pki: Pki, library: str, early: bool, require: Callable[[bool, str], None]
) -> None:
    """The foreign client writes before its handshake completes (0-RTT); our server
    accepts it, or its application refuses it (then the client sends it in 1-RTT)."""
    require(have_module(library), f"Python package {library!r} not installed (make venv)")

    async def main() -> None:
        accepted: list[quicflow.QuicConnection] = []
        kw: dict[str, Any] = {} if early else {"early_data_hook": lambda *a: False}
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(issued(CA_NAME, "localhost"), **kw),
            connection_handler=accepted.append)
        try:
            async with AioquicProcess(
                "client", "--port", str(server.address[1]), "--cafile", pki.cafile,
                "--upload", str(UPLOAD), "--download", str(DOWNLOAD),
                library=library, module="tests.support.aioquic_resume",
            ) as peer:
                await peer.wait_exit(60)
                errors = [e for e in peer.events if e["event"] == "error"]
                assert not errors, peer.events
                result = await peer.next_event("result", timeout=1)
                shake = await peer.next_event("resumption", timeout=1)
                ticket = await peer.next_event("ticket", timeout=1)
        finally:
            server.close()
        assert result["ok"], result
        assert ticket["max_early_data"] == 0xFFFFFFFF
        assert shake["session_resumed"] is True
        assert shake["early_data_accepted"] is early
        assert len(accepted) == 2 and accepted[1].session_resumed
        assert accepted[1].early_data_accepted is early
        received = accepted[1].conn.counters.zero_rtt_received
        if library == "aioquic" or not early:
            assert (received > 0) == early  # the request and upload came in 0-RTT
        # (qh3 2.1 negotiates 0-RTT with us but writes its stream data after the
        # handshake: nothing to count)

    run(main(), 90)


@pytest.mark.interop
def test_aioquic_http3_request_in_zero_rtt(pki: Pki, require: Callable[[bool, str], None]
                                           ) -> None:
    """aioquic's HTTP/3 client resumes and sends its GET in 0-RTT to our HTTP/3 server
    (tickets are on by default there): the answer arrives intact."""
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")
    from quicflow.h3 import aio as h3
    from tests.test_h3_loopback import app, body_of, sha

    async def main() -> None:
        cfg = replace(server_config(issued(CA_NAME, "localhost")), alpn_protocols=["h3"])
        server = await h3.serve(app, "127.0.0.1", 0, configuration=cfg)
        try:
            async with AioquicProcess(
                "h3client", "--port", str(server.address[1]), "--cafile", pki.cafile,
                "--download", "100000", module="tests.support.aioquic_resume",
            ) as peer:
                await peer.wait_exit(60)
                assert not [e for e in peer.events if e["event"] == "error"], peer.events
                result = await peer.next_event("result", timeout=1)
                shake = await peer.next_event("resumption", timeout=1)
            resumed = server.connections[-1] if server.connections else None
        finally:
            server.close()
        assert result["status"] == 200, result
        assert result["sha256"] == result["header_sha256"] == sha(body_of(100000))
        assert shake == {"event": "resumption", "session_resumed": True,
                         "early_data_accepted": True}
        if resumed is not None:
            assert resumed.conn.counters.zero_rtt_received > 0

    run(main(), 60)


# ---------------------------------------------------------------- processes and CLI


def _start_perf_server(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "quicflow", "perf", "server", "--host", "127.0.0.1",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("listening on"):
            return proc, int(line.split()[2].rsplit(":", 1)[1])
    raise AssertionError(f"perf server did not start: {proc.wait()}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_ticket_from_one_process_resumes_on_another(tmp_path: Path) -> None:
    """The takeover and workers case: a ticket sealed by one `perf server` process is
    taken by another started with the same --ticket-key-file, 0-RTT included."""
    key_file = tmp_path / "ticket.key"
    key_file.write_bytes(os.urandom(32))
    cache = SessionTicketCache()
    cfg = quicflow.Configuration(alpn_protocols=["perf"], verify_peer=False,
                                 session_ticket_cache=cache)

    async def one(port: int, early: bool) -> quicflow.QuicConnection:
        async with quicflow.connect("127.0.0.1", port, configuration=cfg,
                                    wait_connected=not early) as conn:
            await _run_stream(conn, 500_000, 100_000, _Tally(), True)  # pattern-checked
            await conn.wait_connected()
            for _ in range(300):
                if len(cache):
                    break
                await asyncio.sleep(0.01)
        return conn

    first, port = _start_perf_server("--port", "0", "--ticket-key-file", str(key_file))
    try:
        conn = run(one(port, False), 30)
        assert not conn.session_resumed and len(cache) == 1
    finally:
        _stop(first)
    second, _ = _start_perf_server("--port", str(port), "--ticket-key-file", str(key_file))
    try:
        conn = run(one(port, True), 30)
    finally:
        _stop(second)
    assert conn.session_resumed and conn.early_data_accepted
    assert conn.conn.counters.zero_rtt_sent > 0


@pytest.mark.parametrize("mode", ["--resume", "--0rtt", "--0rtt-rejected"])
def test_perf_client_resume_json(mode: str) -> None:
    server_args = ["--port", "0"]
    if mode == "--0rtt-rejected":
        server_args += ["--early-data", "reject"]
    server, port = _start_perf_server(*server_args)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "quicflow", "perf", "client", "--host", "127.0.0.1",
             "--port", str(port), "--insecure", "--download", "1M", "--upload", "200K",
             "--verify", "--json", "-q", "--0rtt" if mode != "--resume" else "--resume"],
            capture_output=True, text=True, timeout=60)
    finally:
        _stop(server)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["resumed"] is True
    assert result["early_data_accepted"] is (mode == "--0rtt")
    assert result["bytes_received"] == 1024 * 1024 and result["bytes_sent"] == 200 * 1024
    assert result["verified"] is True
    # a server with --early-data reject issues tickets without 0-RTT: none is sent
    assert (result["zero_rtt_packets_sent"] > 0) == (mode == "--0rtt")
    # the measured connection's datagram counters, as a plain run reports them
    assert result["backend"] in ("gso", "basic")
    assert result["datagrams_received"] > 0 and result["packets_received"] > 0
    assert result["packets_per_engine_call"] > 0


def test_workers_share_one_ticket_key() -> None:
    """`perf server --workers 2` without --ticket-key-file: the workers share one key, so
    a ticket from either worker resumes (with 0-RTT) at whichever one gets the next
    connection (each `perf client --0rtt` run makes two connections from new ports)."""
    server, port = _start_perf_server("--port", "0", "--workers", "2")
    try:
        for _ in range(4):
            out = subprocess.run(
                [sys.executable, "-m", "quicflow", "perf", "client", "--host", "127.0.0.1",
                 "--port", str(port), "--insecure", "--download", "100K", "--verify",
                 "--json", "-q", "--0rtt"], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            result = json.loads(out.stdout)
            assert result["resumed"] is True and result["early_data_accepted"] is True
    finally:
        _stop(server)
