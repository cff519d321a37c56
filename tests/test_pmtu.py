"""Path MTU drops: the datapath learns a lower path MTU (EMSGSIZE, IP_MTU, the IP_RECVERR
error queue) and the runner lowers the connections' datagram size, so a transfer whose
path MTU drops mid-way goes on instead of stalling.

Needs root (network namespaces joined by a veth pair, see tests/support/netns.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from quicflow.transport.config import Configuration
from quicflow.transport.factory import client_connection
from tests.support.netns import NetnsPair, ip, netns_pair, run_in
from tests.support.prereq import have_binary, is_root, require

DOWNLOAD = 30 * 1024 * 1024
PORT = 4433


def _require_netns() -> None:
    require(is_root(), "needs root for network namespaces (run the tests as root, as CI does)")
    require(have_binary("ip"), "program 'ip' not found (Debian package iproute2)")


# ------------------------------------------------------------------- unit: the connection


def test_lower_max_datagram_size_only_lowers() -> None:
    conn = client_connection(
        Configuration(alpn_protocols=["perf"], max_datagram_size=1452), ("10.77.0.2", 4433),
        now=0.0,
    )
    conn.max_datagram_size = 1452
    conn.cc.max_datagram_size = conn.pacer.max_datagram_size = 1452
    conn.lower_max_datagram_size(1500)
    assert conn.max_datagram_size == 1452
    conn.lower_max_datagram_size(1252)
    assert (conn.max_datagram_size, conn.cc.max_datagram_size) == (1252, 1252)
    assert conn.pacer.max_datagram_size == 1252
    conn.lower_max_datagram_size(1000)  # QUIC never goes below 1200
    assert conn.max_datagram_size == 1200
    conn.lower_max_datagram_size(1400)
    assert conn.max_datagram_size == 1200


# --------------------------------------------------------------- unit: real sockets

_PROBE = textwrap.dedent(
    """
    import json, sys
    from quicflow.datapath import UdpTransport

    host, dest, port, connected, backend, fits = sys.argv[1:7]
    port, connected, fits = int(port), connected == "1", int(fits)
    tx = UdpTransport.open(host, 0, backend=backend, pmtu_discovery=True,
                           connect_to=(dest, port) if connected else None)
    addr = None if connected else (dest, port)
    first = tx.send_batch(b"x" * 1452 * 3, 1452, addr)  # 3 datagrams, too big for 1280
    events = list(tx.mtu_events)
    tx.mtu_events.clear()
    again = tx.send_batch(b"y" * 1452, 1452, addr)  # same MTU: no new event
    small = tx.send_batch(b"z" * fits * 2, fits, addr)  # fits: 1280 - IP/UDP headers
    c = tx.counters
    print(json.dumps(dict(
        first=first, again=again, small=small, events=events, later=tx.mtu_events,
        send_errors=c.send_errors, send_emsgsize=c.send_emsgsize, pmtu_drops=c.pmtu_drops,
        gso_fallbacks=c.gso_fallbacks, datagrams_sent=c.datagrams_sent,
        backend=tx.backend, path_mtu=tx.path_mtu(addr),
    )))
    """
)


SINK_PORT = 9999
_SINK = textwrap.dedent(
    f"""
    import socket, time
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", {SINK_PORT}))
    print("ready", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
@pytest.mark.parametrize("backend", ["auto", "basic"])
@pytest.mark.parametrize("family", ["ipv4", "dual-stack", "ipv6"])
def test_udp_transport_learns_path_mtu(connected: bool, backend: str, family: str) -> None:
    """A 1452-byte datagram over a 1280-byte MTU link is refused (EMSGSIZE, never
    fragmented) and yields one MTU event of 1280; GSO stays on (the path, not GSO, is at
    fault); datagrams that fit go through."""
    _require_netns()
    with netns_pair(mtu=1280) as pair:
        if family == "ipv6":
            # a link-local-free IPv6 pair: ULA addresses exist only inside the namespaces
            ip("-n", pair.b, "addr", "add", "fd77::2/64", "dev", pair.veth_b, "nodad")
            ip("-n", pair.a, "addr", "add", "fd77::1/64", "dev", pair.veth_a, "nodad")
            host, dest, overhead = "::", "fd77::2", 48
        else:
            overhead = 28
            host, dest = ("::" if family == "dual-stack" else "0.0.0.0"), pair.b_ip
        # a listener, so that no ICMP "port unreachable" mixes in
        sink = pair.popen(pair.b, [sys.executable, "-c", _SINK], stdout=subprocess.PIPE)
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
            argv = [sys.executable, "-c", _PROBE, host, dest, str(SINK_PORT),
                    "1" if connected else "0", backend, str(1280 - overhead)]
            out = json.loads(run_in(pair.a, argv).stdout)
        finally:
            sink.kill()
            sink.communicate()
    assert out["first"] and out["again"] and out["small"]
    assert [mtu for _, mtu in out["events"]] == [1280]
    where = out["events"][0][0]
    if connected:
        assert where is None
    else:
        assert where[0] == dest
    assert out["later"] == []
    assert out["send_errors"] == out["send_emsgsize"] == 4  # refused, counted, not queued
    assert out["pmtu_drops"] == 1
    assert out["datagrams_sent"] == 2
    assert out["gso_fallbacks"] == 0
    assert out["path_mtu"] == 1280


def test_default_transport_still_fragments() -> None:
    """Without enable_pmtu_discovery a plain UdpTransport keeps the kernel default (IPv4
    may fragment): no refusals, no events."""
    _require_netns()
    code = textwrap.dedent(
        """
        import json, sys
        from quicflow.datapath import UdpTransport
        tx = UdpTransport.open("0.0.0.0", 0)
        ok = tx.send_batch(b"x" * 1452, 1452, (sys.argv[1], 9))
        print(json.dumps([ok, tx.counters.send_errors, tx.mtu_events]))
        """
    )
    with netns_pair(mtu=1280) as pair:
        out = json.loads(run_in(pair.a, [sys.executable, "-c", code, pair.b_ip]).stdout)
    assert out == [True, 0, []]


# ------------------------------------------------------- end to end: perf over veth


class _Routed:
    """A (client) — R (router) — B (server): two veth pairs, 1500 bytes; ``set_mtu``
    lowers only the R—A link, so B learns the drop from R's ICMP "fragmentation needed"
    (IP_RECVERR error queue), not from its own interface."""

    def __init__(self) -> None:
        tag = NetnsPair().tag
        self.a, self.r, self.b = f"qfa{tag}", f"qfr{tag}", f"qfb{tag}"
        self.veth_a, self.veth_ra = f"qfva{tag}"[:15], f"qfvra{tag}"[:15]
        self.veth_b, self.veth_rb = f"qfvb{tag}"[:15], f"qfvrb{tag}"[:15]
        self.a_ip, self.b_ip = "10.77.1.1", "10.77.2.1"
        self.created: list[str] = []

    def __enter__(self) -> _Routed:
        try:
            for ns in (self.a, self.r, self.b):
                ip("netns", "add", ns)
                self.created.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            for left, ldev, rdev, net, lhost in (
                (self.a, self.veth_a, self.veth_ra, "10.77.1", self.a_ip),
                (self.b, self.veth_b, self.veth_rb, "10.77.2", self.b_ip),
            ):
                ip("link", "add", ldev, "netns", left, "mtu", "1500", "type", "veth",
                   "peer", "name", rdev, "netns", self.r, "mtu", "1500")
                ip("-n", left, "addr", "add", f"{lhost}/24", "dev", ldev)
                ip("-n", self.r, "addr", "add", f"{net}.254/24", "dev", rdev)
                ip("-n", left, "link", "set", ldev, "up")
                ip("-n", self.r, "link", "set", rdev, "up")
                ip("-n", left, "route", "add", "default", "via", f"{net}.254")
            run_in(self.r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created.clear()

    def popen(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[str]:
        return NetnsPair.popen(self, ns, argv, **kw)  # type: ignore[arg-type]

    def set_mtu(self, mtu: int) -> None:
        ip("-n", self.r, "link", "set", self.veth_ra, "mtu", str(mtu))
        ip("-n", self.a, "link", "set", self.veth_a, "mtu", str(mtu))


def _tx_bytes(pair: NetnsPair | _Routed) -> int:
    res = ip("-n", pair.b, "-s", "-j", "link", "show", "dev", pair.veth_b)
    return int(json.loads(res.stdout)[0]["stats64"]["tx"]["bytes"])


def _perf(pair: NetnsPair | _Routed, shape: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Server in B (sends), client in A (downloads); the veth MTU drops from 1500 to 1280
    on both ends once a few MB went. Returns (client JSON, server JSON, logs)."""
    if shape:
        # ~200 Mbit/s leaves the transfer time to see the drop mid-way
        ip("-n", pair.b, "link", "set", pair.veth_b, "txqueuelen", "1000")
        subprocess.run(
            ["ip", "netns", "exec", pair.b, "tc", "qdisc", "add", "dev", pair.veth_b,
             "root", "tbf", "rate", "200mbit", "burst", "64kb", "limit", "4mb"],
            check=True, capture_output=True,
        )
    py = sys.executable
    server = pair.popen(
        pair.b,
        [py, "-m", "quicflow", "perf", "server", "--port", str(PORT), "--max-datagram",
         "1452", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stderr is not None
        deadline = time.monotonic() + 20
        while "listening on" not in server.stderr.readline():
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
        start_tx = _tx_bytes(pair)
        client = pair.popen(
            pair.a,
            [py, "-m", "quicflow", "perf", "client", "--host", pair.b_ip, "--port", str(PORT),
             "--insecure", "--json", "--quiet", "--verify", "--max-datagram", "1452",
             "--download", str(DOWNLOAD), "--timeout", "15"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while _tx_bytes(pair) - start_tx < 4 * 1024 * 1024:
            assert client.poll() is None, "the transfer ended before the MTU drop"
            assert time.monotonic() < deadline, "the transfer did not start"
            time.sleep(0.01)
        pair.set_mtu(1280)
        c_out, c_err = client.communicate(timeout=90)
        server.send_signal(signal.SIGTERM)
        s_out, s_err = server.communicate(timeout=20)
        logs = f"client rc={client.returncode}: {c_err}\nserver: {s_err}"
        assert client.returncode == 0, logs
        assert server.returncode == 0, logs
        return json.loads(c_out), json.loads(s_out.strip().splitlines()[-1]), logs
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_transfer_survives_path_mtu_drop() -> None:
    """--max-datagram 1452 over a 1500-byte veth; mid-transfer both ends drop to 1280: the
    server's socket refuses the 1452-byte datagrams (EMSGSIZE, DF), learns 1280, lowers
    the connection to 1252 and its loss recovery resends the refused frames; the whole
    download arrives, pattern-checked (--verify)."""
    _require_netns()
    with netns_pair(mtu=1500) as pair:
        client, server, logs = _perf(pair, shape=have_binary("tc"))
    assert client["bytes_received"] == DOWNLOAD, logs
    assert client.get("verified", True), logs
    dp = server["datapath"]
    assert dp["pmtu_drops"] >= 1, (dp, logs)
    assert dp["send_emsgsize"] >= 1, (dp, logs)
    assert dp["send_errors"] >= dp["send_emsgsize"], (dp, logs)
    assert dp["gso_fallbacks"] == 0, (dp, logs)  # the path shrank; GSO itself is fine
    assert "pmtu_drops" in client, client


def test_transfer_survives_path_mtu_drop_behind_a_router() -> None:
    """The MTU drops on a link one hop away: the router's ICMP "fragmentation needed"
    reaches the server through IP_RECVERR (and the kernel's PMTU cache), and the
    transfer goes on in 1252-byte datagrams."""
    _require_netns()
    with _Routed() as net:
        client, server, logs = _perf(net, shape=have_binary("tc"))
    assert client["bytes_received"] == DOWNLOAD, logs
    dp = server["datapath"]
    assert dp["pmtu_drops"] >= 1, (dp, logs)
    assert dp["gso_fallbacks"] == 0, (dp, logs)
