"""Connections move to another host and the service address follows (issue 7, item 4a),
with real hosts: network namespaces C (clients), A and B (servers) behind a router R.

A and B both hold the service address 10.77.19.1 on their loopback; R routes it to A,
then, once A moved its connections to B (``quicflow perf migrate``, TCP inside mutual
TLS from A's link address to B's), to B. What was in flight during the switch is
recovered by QUIC's own loss recovery. Needs root (``ip netns``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.netns import NetnsPair, exec_argv, ip, run_in
from tests.support.prereq import have_binary, is_root, require
from tests.support.takeover import ROOT, ServerProc, write_certificate
from tests.test_migrate_hosts import _migrate, _pki

VIP = "10.77.19.1"
CONNECTIONS = 10


class _Hosts:
    def __init__(self) -> None:
        tag = NetnsPair().tag
        self.c, self.r, self.a, self.b = (f"qf{x}{tag}" for x in "crab")
        self.links = {  # namespace -> (its address, R's address, devices)
            self.c: ("10.77.11.1", "10.77.11.254", f"qmc{tag}"[:15], f"qmrc{tag}"[:15]),
            self.a: ("10.77.12.1", "10.77.12.254", f"qma{tag}"[:15], f"qmra{tag}"[:15]),
            self.b: ("10.77.13.1", "10.77.13.254", f"qmb{tag}"[:15], f"qmrb{tag}"[:15]),
        }
        self.created: list[str] = []

    def __enter__(self) -> _Hosts:
        try:
            for ns in (self.c, self.r, self.a, self.b):
                ip("netns", "add", ns)
                self.created.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            for ns, (host, router, dev, rdev) in self.links.items():
                ip("link", "add", dev, "netns", ns, "type", "veth", "peer", "name", rdev,
                   "netns", self.r)
                ip("-n", ns, "addr", "add", f"{host}/24", "dev", dev)
                ip("-n", self.r, "addr", "add", f"{router}/24", "dev", rdev)
                ip("-n", ns, "link", "set", dev, "up")
                ip("-n", self.r, "link", "set", rdev, "up")
                ip("-n", ns, "route", "add", "default", "via", router)
            for ns in (self.a, self.b):
                ip("-n", ns, "addr", "add", f"{VIP}/32", "dev", "lo")
            run_in(self.r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self.route_to(self.a)
            # ~200 Mbit/s towards the clients, so the downloads are mid-way at the switch
            run_in(self.r, ["tc", "qdisc", "add", "dev", self.links[self.c][3], "root", "tbf",
                            "rate", "200mbit", "burst", "64kb", "limit", "4mb"])
        except BaseException:
            self.__exit__()
            raise
        return self

    def route_to(self, ns: str) -> None:
        ip("-n", self.r, "route", "replace", f"{VIP}/32", "via", self.links[ns][0])

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created.clear()


@pytest.mark.timeout(300)
def test_ten_connections_move_while_the_route_switches(tmp_path: Path) -> None:
    require(is_root(), "needs root for network namespaces (run the tests as root, as CI does)")
    require(have_binary("ip") and have_binary("tc"), "programs ip and tc (iproute2) needed")
    pki = _pki(tmp_path)
    cert, key = write_certificate(tmp_path)
    path = str(tmp_path / "a.sock")
    with _Hosts() as hosts:
        common = ["--host", VIP, "--port", "4433", "--cert", cert, "--key", key, "--json",
                  "--max-datagram", "1452"]
        a = ServerProc([*common, "--handoff", path], prefix=exec_argv(hosts.a, [])[:4])
        b = ServerProc([*common, "--migrate-listen", f"{hosts.links[hosts.b][0]}:7444",
                        "--migrate-cert", pki["b_cert"], "--migrate-key", pki["b_key"],
                        "--migrate-ca", pki["ca"]], prefix=exec_argv(hosts.b, [])[:4])
        client = None
        try:
            a.port()
            b.port()
            b.wait_line("accepting migrations on ")
            client = subprocess.Popen(
                exec_argv(hosts.c, [sys.executable, "-m", "quicflow.cli.main", "perf",
                                    "client", "--host", VIP, "--port", "4433",
                                    "--connections", str(CONNECTIONS), "--download", "300M",
                                    "--cafile", cert, "--server-name", "localhost",
                                    "--max-datagram", "1452", "--verify", "--json", "-q",
                                    "--timeout", "30"]),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            )
            time.sleep(1.5)
            assert client.poll() is None, "downloads ended before the move"
            moved = _migrate(path, f"{hosts.links[hosts.b][0]}:7444", pki)
            hosts.route_to(hosts.b)
            assert moved.returncode == 0, moved.stderr
            assert json.loads(moved.stdout) == {"moved_connections": CONNECTIONS}, moved.stderr
            out, err = client.communicate(timeout=240)
            assert client.returncode == 0, err
            result = json.loads(out)
            assert result["verified"] is True and result["connections"] == CONNECTIONS
            assert result["bytes_received"] == 300 * 1024 * 1024
            status_b, summary_b = b.stop()
            status_a, summary_a = a.stop()
            assert status_a == status_b == 0 and summary_a is not None and summary_b is not None
            endpoint_a, endpoint_b = summary_a["endpoint"], summary_b["endpoint"]
            assert isinstance(endpoint_a, dict) and isinstance(endpoint_b, dict)
            assert endpoint_a["connections_accepted"] == CONNECTIONS
            assert endpoint_b["connections_accepted"] == 0, "no new handshake on B"
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait()
            a.kill()
            b.kill()
