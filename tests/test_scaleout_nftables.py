"""Scale-out behind nftables (issue 6, item 5): a client namespace, a router namespace
with docs/nftables-quic-lb.nft, two backend hosts with 2 workers each.

32 clients download concurrently through a NAT that rebinds their source ports, so the
router routes every short-header packet by the server ID in its CID (the ruleset is
stateless: each packet is decided by its own bytes) and each host by the worker byte.
All downloads must be intact, and each host's counters must show exactly the
connections whose server IDs it owns.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.lbnet import VIP, lb_net
from tests.support.netns import popen_in, run_in

ROOT = Path(__file__).resolve().parents[1]
QUICFLOW = str(Path(sys.executable).parent / "quicflow")
PORT = 4433
pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def start_host(ns: str, host_id: int) -> subprocess.Popen[str]:
    proc = popen_in(ns, [
        QUICFLOW, "perf", "server", "--host", "0.0.0.0", "--port", str(PORT),
        "--workers", "2", "--host-id", str(host_id), "--json",
    ], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        assert line, f"server in {ns} exited: {seen}"
        seen.append(line)
        if line.startswith("listening on "):
            return proc
    raise AssertionError(f"server in {ns} did not start: {seen}")


def stop_host(proc: subprocess.Popen[str]) -> dict:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_two_hosts_behind_nftables_serve_the_connections_they_own():
    with lb_net() as net:
        net.load_ruleset(PORT)
        servers = [start_host(ns, host_id) for host_id, ns in enumerate(net.hosts, start=1)]
        try:
            out = run_in(
                net.client,
                [sys.executable, "-m", "tests.support.lb_clients", VIP, str(PORT), "32",
                 str(256 * 1024), "10"],
                cwd=ROOT, timeout=150,
            )  # fmt: skip
        finally:
            reports = [stop_host(p) if p.poll() is None else {} for p in servers]
        short_rule, handshake_rule, initial_rule = net.rule_packets()
        result = json.loads(out.stdout)
    # Every client's first Initial was hashed; every packet of a rebound flow was a short
    # header, routed by the server ID.
    assert initial_rule >= 32
    assert short_rule >= result["rebinds"] > 0
    clients = result["clients"]
    assert len(clients) == 32
    assert all(c["intact"] for c in clients), (clients, reports)
    assert result["rebinds"] >= 32  # most of the traffic came from rebound ports
    for host_id, report in enumerate(reports, start=1):
        owned = [c for c in clients if c["host"] == host_id]
        assert owned, f"no client was served by host {host_id}"
        rows = report["workers"]
        assert len(rows) == 2
        assert sum(r["connections"] for r in rows) == len(owned)
        for worker, row in enumerate(rows):
            assert row["connections"] == sum(1 for c in owned if c["worker"] == worker)
            assert row["misrouted_datagrams"] == 0
    assert {c["host"] for c in clients} == {1, 2}
