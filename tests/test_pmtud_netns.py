"""DPLPMTUD (RFC 8899) over real paths: a connection starts at 1200 bytes and reaches
the path MTU by probing; a black hole (a smaller MTU one hop away whose ICMP is dropped)
sends it back to 1200 and a new search finds the smaller size.

Needs root (network namespaces; see tests/support/netns.py and the ``_Routed`` helper of
tests/test_pmtu.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import NetnsPair, netns_pair, run_in
from tests.support.prereq import have_binary, is_root, require
from tests.test_pmtu import _Routed, _tx_bytes

pytestmark = pytest.mark.netns
PORT = 4433

_SERVER = textwrap.dedent(
    """
    import asyncio, json, sys
    import quicflow
    from quicflow.tls.certs import generate_self_signed
    from quicflow.transport.config import Configuration
    from tests.support import echo_proto

    host, mds = sys.argv[1], int(sys.argv[2])

    async def main():
        cert, key = generate_self_signed(["localhost"])
        cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                            private_key=key, max_datagram_size=mds)
        done = asyncio.Event()
        conns = []

        async def handler(reader, writer):
            await echo_proto.serve_stream(reader, writer)
            await asyncio.sleep(0.3)  # the last ACKs
            done.set()

        server = await quicflow.serve(handler, host, %d, configuration=cfg,
                                      connection_handler=conns.append)
        print("listening", file=sys.stderr, flush=True)
        await asyncio.wait_for(done.wait(), 120)
        print(json.dumps(conns[0].stats()["connection"]), flush=True)
        server.close()

    asyncio.run(main())
    """.replace("%d", str(PORT))
)

_CLIENT = textwrap.dedent(
    """
    import asyncio, json, os, sys
    import quicflow
    from quicflow.transport.config import Configuration
    from tests.support import echo_proto

    host, mds, up, down = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    async def main():
        cfg = Configuration(alpn_protocols=["perf"], verify_peer=False,
                            max_datagram_size=mds, idle_timeout=20)
        async with quicflow.connect(host, %d, configuration=cfg) as conn:
            # the search starts one PTO after confirmation: let it end before the
            # exchange (a short upload on a busy machine can end first)
            pm = conn.conn.pmtud
            for _ in range(500):
                if pm.started and pm.candidate == 0:
                    break
                await asyncio.sleep(0.01)
            reader, writer = await conn.create_stream()
            result = await echo_proto.client_exchange(
                reader, writer, upload=os.urandom(up), download=down, seed=7)
            result["stats"] = conn.stats()["connection"]
        print(json.dumps(result), flush=True)

    asyncio.run(main())
    """.replace("%d", str(PORT))
)


def _require_netns() -> None:
    require(is_root(), "needs root for network namespaces (run the tests as root, as CI does)")
    require(have_binary("ip"), "program 'ip' not found (Debian package iproute2)")


def _exchange(
    net: NetnsPair | _Routed, mds: int, up: int, down: int, during: Any = None
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Server in B, client in A; returns (client result, server stats, logs)."""
    env_path = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    server = net.popen(net.b, [sys.executable, "-c", _SERVER, net.b_ip, str(mds)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(env_path))
    client: subprocess.Popen[str] | None = None
    try:
        assert server.stderr is not None
        deadline = time.monotonic() + 20
        while "listening" not in server.stderr.readline():
            assert server.poll() is None and time.monotonic() < deadline, "no server"
        client = net.popen(
            net.a, [sys.executable, "-c", _CLIENT, net.b_ip, str(mds), str(up), str(down)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(env_path),
        )
        if during is not None:
            during(client)
        c_out, c_err = client.communicate(timeout=120)
        s_out, s_err = server.communicate(timeout=30)
        logs = f"client rc={client.returncode}: {c_err[-3000:]}\nserver: {s_err[-3000:]}"
        assert client.returncode == 0 and server.returncode == 0, logs
        return json.loads(c_out), json.loads(s_out.strip().splitlines()[-1]), logs
    finally:
        for proc in (client, server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.mark.parametrize("veth_mtu", [1500, 9000])
def test_probing_reaches_the_veth_mtu(veth_mtu: int) -> None:
    """Both ends start at 1200 and, with a ceiling of 65527, reach the veth MTU minus the
    IPv4 and UDP headers (1472 / 8972) by probing; 4 MiB each way arrive intact."""
    _require_netns()
    with netns_pair(mtu=veth_mtu) as pair:
        client, server, logs = _exchange(pair, 65527, 4 << 20, 4 << 20)
    assert client["ok"], (client, logs)
    target = veth_mtu - 28
    for stats in (client["stats"], server):
        assert stats["pmtud"] is True, stats
        assert stats["mtu"] == target, (stats, logs)
        assert stats["max_datagram_size"] == target
        assert stats["pmtud_probes_acked"] >= 1, stats
        assert stats["pmtud_black_holes"] == 0, stats


def test_icmp_from_a_router_caps_the_search() -> None:
    """A 1280-byte link one hop away: the router's ICMP "fragmentation needed" stops the
    server's 1472-byte probe, and the search settles at 1252 (1280 - 28)."""
    _require_netns()
    with _Routed() as net:
        net.set_mtu(1280)
        client, server, logs = _exchange(net, 65527, 1 << 20, 4 << 20)
    assert client["ok"], (client, logs)
    assert server["mtu"] == 1252, (server, logs)
    assert client["stats"]["mtu"] == 1252, (client, logs)


def test_black_hole_falls_back_and_searches_again() -> None:
    """The server reached 1472 on a 1500-byte path; mid-download the link one hop away
    drops to 1280 and the router's ICMP is filtered (a black hole): the server falls
    back to 1200 bytes, the download completes intact, and a new search finds 1252."""
    _require_netns()
    require(have_binary("nft"), "program 'nft' not found (Debian package nftables)")
    require(have_binary("tc"), "program 'tc' not found (Debian package iproute2)")
    with _Routed() as net:
        run_in(net.r, ["nft", "add table inet qf; add chain inet qf out "
                       "{ type filter hook output priority 0; }; "
                       "add rule inet qf out icmp type destination-unreachable drop"])
        subprocess.run(
            ["ip", "netns", "exec", net.b, "tc", "qdisc", "add", "dev", net.veth_b,
             "root", "tbf", "rate", "200mbit", "burst", "64kb", "limit", "1mb"],
            check=True, capture_output=True,
        )

        def drop_mtu(client: subprocess.Popen[str]) -> None:
            start = _tx_bytes(net)
            deadline = time.monotonic() + 30
            while _tx_bytes(net) - start < 4 * 1024 * 1024:
                assert client.poll() is None, "the transfer ended before the MTU drop"
                assert time.monotonic() < deadline, "the transfer did not start"
                time.sleep(0.01)
            net.set_mtu(1280)

        client, server, logs = _exchange(net, 1472, 0, 24 << 20, during=drop_mtu)
    assert client["ok"], (client, logs)
    assert server["pmtud_black_holes"] >= 1, (server, logs)
    assert server["mtu"] <= 1252, (server, logs)
