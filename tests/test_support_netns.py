"""Tests of the network-namespace helpers (root only)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.support import prereq
from tests.support.netns import NetnsPair, ip, netns_pair

ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 4433))
print("ready", flush=True)
s.settimeout(10)
data, addr = s.recvfrom(65535)
s.sendto(data, addr)
"""

ECHO_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
payload = b"q" * int(sys.argv[2])
s.sendto(payload, (sys.argv[1], 4433))
data, addr = s.recvfrom(65535)
assert data == payload, "echo altered"
print(addr[0])
"""


def _namespaces() -> set[str]:
    out = ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _udp_echo(pair: NetnsPair, size: int) -> str:
    server = pair.popen(
        pair.b, [sys.executable, "-c", ECHO_SERVER, pair.b_ip], stdout=subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        result = pair.run(
            pair.a, [sys.executable, "-c", ECHO_CLIENT, pair.b_ip, str(size)], timeout=10
        )
        return result.stdout.strip()
    finally:
        server.kill()
        server.wait()


@pytest.mark.netns
def test_pair_links_two_namespaces(require: Callable[[bool, str], None]) -> None:
    require(prereq.is_root(), "needs root to create network namespaces")
    require(prereq.have_binary("ip"), "program 'ip' not found (Debian package iproute2)")
    before = _namespaces()
    with netns_pair(mtu=1280) as pair:
        assert {pair.a, pair.b} <= _namespaces()
        # The veth ends are inside the namespaces, with the MTU asked for.
        link = json.loads(pair.run(pair.a, ["ip", "-j", "link", "show", pair.veth_a]).stdout)
        assert link[0]["mtu"] == 1280
        assert pair.veth_a not in ip("link", "show", check=False).stdout
        if shutil.which("ping"):
            pair.run(pair.a, ["ping", "-c1", "-W1", pair.b_ip], timeout=10)
        # UDP across the link: the reply comes from B's address.
        assert _udp_echo(pair, 100) == pair.b_ip
        # The largest IPv4 UDP payload that fits the 1280-byte MTU unfragmented.
        assert _udp_echo(pair, 1280 - 28) == pair.b_ip
    assert _namespaces() == before


@pytest.mark.netns
def test_cleanup_after_error(require: Callable[[bool, str], None]) -> None:
    require(prereq.is_root(), "needs root to create network namespaces")
    before = _namespaces()
    with pytest.raises(RuntimeError, match="boom"):
        with netns_pair() as pair:
            assert pair.a in _namespaces()
            raise RuntimeError("boom")
    assert _namespaces() == before


def test_rejects_addresses_outside_test_range() -> None:
    with pytest.raises(ValueError):
        NetnsPair(a_cidr="192.168.1.1/24")
