"""One connection moves to another host behind the nftables QUIC-LB balancer, by CID
(issue 7, item 4b); the address stays.

Namespaces from ``tests/support/lbnet.py``: a client, a router loading
docs/nftables-quic-lb.nft (stateless: every packet routed by the server ID in its CID),
host A (``--host-id 1``, every new connection) and host B (``--host-id 2``). Four
downloads run on A; ``quicflow perf migrate --mode cids --count 1`` moves one of them
to B mid-transfer: B issues CIDs with its server ID, A adds them to the connection (with
a Retire Prior To for its own) right before the capture, B restores it and announces
them, the client switches, the balancer delivers to B. What still reached A meanwhile
was forwarded to B, never dropped. Needs root (``ip netns``) and nft.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.aioquic_peer import AioquicProcess
from tests.support.lbnet import VIP, LbNet, lb_net
from tests.support.netns import exec_argv, run_in
from tests.support.prereq import have_binary, is_root, require
from tests.support.takeover import ROOT, ServerProc, perf_sha256, write_certificate
from tests.test_migrate_hosts import _pki

PORT = 4433
CLIENTS = 4
SIZE = 32 << 20


def start_hosts(net: LbNet, tmp_path: Path, pki: dict[str, str],
                command: tuple[str, ...] = ("perf", "server"),
                extra: tuple[str, ...] = (),
                credential: tuple[str, str] | None = None) -> tuple[ServerProc, ...]:
    """Perf servers (or ``command``'s, with ``extra`` options) on A (offering moves at
    tmp_path/a.sock) and B (accepting them); their certificate and key files are
    ``credential`` (default: a self-signed one written to tmp_path/cert.pem)."""
    cert, key = credential or write_certificate(tmp_path)
    common = ["--host", "0.0.0.0", "--port", str(PORT), "--cert", cert, "--key", key,
              "--json", *extra]
    a = ServerProc([*common, "--host-id", "1", "--handoff", str(tmp_path / "a.sock")],
                   prefix=exec_argv(net.hosts[0], [])[:4], command=command)
    b = ServerProc([*common, "--host-id", "2", "--migrate-listen", f"{net.host_ips[1]}:7444",
                    "--migrate-cert", pki["b_cert"], "--migrate-key", pki["b_key"],
                    "--migrate-ca", pki["ca"]], prefix=exec_argv(net.hosts[1], [])[:4],
                   command=command)
    a.port()
    b.port()
    b.wait_line("accepting migrations on ")
    return a, b


def migrate_by_cid(net: LbNet, tmp_path: Path, pki: dict[str, str],
                   count: int) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "quicflow.cli.main", "perf", "migrate",
         "--handoff", str(tmp_path / "a.sock"), "--to", f"{net.host_ips[1]}:7444",
         "--cert", pki["a_cert"], "--key", pki["a_key"], "--ca", pki["ca"],
         "--server-name", "localhost", "--mode", "cids", "--count", str(count), "--json"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def start_clients(net: LbNet, clients: int, size: int,
                  fast: bool = False) -> subprocess.Popen[str]:
    client = subprocess.Popen(
        exec_argv(net.client, [sys.executable, "-m", "tests.support.lb_move_clients", VIP,
                               str(PORT), str(clients), str(size),
                               *(["fast"] if fast else [])]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}"),
    )  # fmt: skip
    assert client.stderr is not None
    line = client.stderr.readline()
    assert line.strip() == "started", line + client.stderr.read()
    return client


@pytest.mark.timeout(300)
def test_one_connection_moves_to_another_host_by_cid_behind_nftables(tmp_path: Path) -> None:
    require(is_root(), "needs root for network namespaces (run the tests as root, as CI does)")
    require(have_binary("ip") and have_binary("nft"), "programs ip and nft needed")
    pki = _pki(tmp_path)
    with lb_net() as net:
        net.load_ruleset(PORT, new_connections_to_host1=True)
        a, b = start_hosts(net, tmp_path, pki)
        client = None
        try:
            client = start_clients(net, CLIENTS, SIZE)
            moved = migrate_by_cid(net, tmp_path, pki, 1)
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
            out, err = client.communicate(timeout=200)
            assert client.returncode == 0, err
            assert moved.returncode == 0, moved.stderr
            assert json.loads(moved.stdout) == {"moved_connections": 1}
            status_b, summary_b = b.stop()
            status_a, summary_a = a.stop()
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait()
            a.kill()
            b.kill()
        short_rule = net.rule_packets()[0]
    clients: list[dict[str, Any]] = json.loads(out)["clients"]
    assert len(clients) == CLIENTS
    assert all(c["intact"] for c in clients), clients
    assert all(c["same_connection"] for c in clients), "a connection ended or was replaced"
    assert all(c["first_host"] == 1 for c in clients)
    # exactly one moved to B (it switched to B's CIDs and finished there), the rest stayed
    assert sorted(c["last_host"] for c in clients) == [1] * (CLIENTS - 1) + [2], clients
    assert status_a == status_b == 0 and summary_a is not None and summary_b is not None
    endpoint_a, endpoint_b = summary_a["endpoint"], summary_b["endpoint"]
    assert isinstance(endpoint_a, dict) and isinstance(endpoint_b, dict)
    assert endpoint_a["connections_accepted"] == CLIENTS
    assert endpoint_b["connections_accepted"] == 0, "no new handshake on B"
    # B served the moved download's rest: it sent data, and received the client's packets
    # through the balancer by its own server ID
    assert isinstance(summary_b["bytes_sent"], int) and summary_b["bytes_sent"] > 0
    assert short_rule > 0
    assert not any("Traceback" in line for line in a.seen + b.seen), b.seen
    # nothing that reached A for the moved connection was dropped: forwarded, and B got it
    assert endpoint_a["dropped_moved"] == 0
    assert endpoint_b["forwarded_received"] == endpoint_a["forwarded_moved"]


@pytest.mark.interop
@pytest.mark.timeout(300)
def test_aioquic_client_follows_its_connection_to_another_host_by_cid(tmp_path: Path) -> None:
    """A client that knows nothing of quicflow (aioquic) honours the Retire Prior To of
    B's NEW_CONNECTION_ID frames: one handshake, every byte, the rest served by B."""
    require(is_root(), "needs root for network namespaces (run the tests as root, as CI does)")
    require(have_binary("ip") and have_binary("nft") and have_binary("tc"),
            "programs ip, nft and tc needed")
    require(importlib.util.find_spec("aioquic") is not None, "aioquic is not installed")
    pki = _pki(tmp_path)
    size = 64 << 20
    with lb_net() as net:
        net.load_ruleset(PORT, new_connections_to_host1=True)
        # ~100 Mbit/s towards the client: the download is mid-way at the move
        run_in(net.router, ["tc", "qdisc", "add", "dev", f"qfl1a{net.tag}"[:15], "root", "tbf",
                            "rate", "100mbit", "burst", "64kb", "latency", "20ms"])
        a, b = start_hosts(net, tmp_path, pki)
        cert = str(tmp_path / "cert.pem")

        async def run() -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
            loop = asyncio.get_running_loop()
            client = AioquicProcess("perfclient")
            await client._spawn(*exec_argv(net.client, [
                sys.executable, "-m", "tests.support.aioquic_peer", "perfclient", "--host",
                VIP, "--port", str(PORT), "--cafile", cert, "--download", str(size)]),
                cwd=str(ROOT))  # fmt: skip
            try:
                await client.next_event("progress", timeout=60)
                moved = await loop.run_in_executor(None, migrate_by_cid, net, tmp_path, pki, 1)
                assert not any(e["event"] == "result" for e in client.events), "moved too late"
                await client.next_event("result", timeout=200)
                assert await client.wait_exit() == 0
                return client.events, moved
            finally:
                await client.stop()

        try:
            events, moved = asyncio.run(run())
            status_b, summary_b = b.stop()
            status_a, summary_a = a.stop()
        finally:
            a.kill()
            b.kill()
    assert moved.returncode == 0 and json.loads(moved.stdout) == {"moved_connections": 1}
    result = next(e for e in events if e["event"] == "result")
    assert result["ok"] and result["bytes"] == size and result["sha256"] == perf_sha256(size)
    assert [e["event"] for e in events].count("handshake") == 1
    assert status_a == status_b == 0 and summary_a is not None and summary_b is not None
    endpoint_a, endpoint_b = summary_a["endpoint"], summary_b["endpoint"]
    assert isinstance(endpoint_a, dict) and isinstance(endpoint_b, dict)
    assert endpoint_b["connections_accepted"] == 0, "no new handshake on B"
    assert isinstance(summary_b["bytes_sent"], int) and summary_b["bytes_sent"] > 0
    assert not any("Traceback" in line for line in a.seen + b.seen), b.seen
    assert endpoint_a["dropped_moved"] == 0
    assert endpoint_b["forwarded_received"] == endpoint_a["forwarded_moved"]
