"""IPv6: quicflow's client and server over ::1, and a dual-stack server on "::" serving
an IPv4 and an IPv6 client at the same time (transfers checked with SHA-256)."""

from __future__ import annotations

import asyncio
import socket

import pytest

import quicflow

from .support import prereq
from .support.transfer import (
    client_configuration,
    download,
    run_transfer,
    serve_stream,
    server_configuration,
)

MIB = 1024 * 1024


def _have_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True)
def _ipv6() -> None:
    prereq.require(_have_ipv6_loopback(), "no IPv6 loopback (::1) on this machine")


@pytest.mark.parametrize("backend", ["auto", "basic"])
def test_transfer_over_ipv6_loopback(backend: str) -> None:
    outcome = run_transfer(server_host="::1", size=8 * MIB, upload=1 * MIB, backend=backend)
    (result,) = outcome.results
    assert result.ok and result.received == 8 * MIB
    assert outcome.server_address[0] == "::1"
    (server_side,) = outcome.server_stats["connections"]
    assert server_side["alpn"] == "perf"
    assert outcome.client_stats["datapath"]["datagrams_received"] > 8 * MIB // 1200


def test_dual_stack_server_serves_ipv4_and_ipv6_clients_at_once() -> None:
    async def main() -> None:
        accepted: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            serve_stream, "::", 0, configuration=server_configuration(),
            connection_handler=accepted.append,
        )  # fmt: skip
        port = server.address[1]
        peers: dict[str, object] = {}

        async def client(host: str, seed: int, size: int) -> None:
            async with quicflow.connect(host, port, configuration=client_configuration()) as conn:
                # Both clients are connected before either transfer starts.
                started.append(host)
                if len(started) == 2:
                    both.set()
                await asyncio.wait_for(both.wait(), 10)
                result = await download(conn, size, seed=seed, upload=256 * 1024)
                assert result.ok, (host, result)
                assert result.received == size
                peers[host] = conn.conn.peer_address

        started: list[str] = []
        both = asyncio.Event()
        try:
            await asyncio.wait_for(
                asyncio.gather(client("127.0.0.1", 4, 12 * MIB), client("::1", 6, 12 * MIB)),
                60,
            )
            assert server.endpoint.counters.connections_accepted == 2
            # The server saw one IPv4 and one IPv6 peer (IPv4 ones in their plain form).
            hosts = sorted(str(face.conn.peer_address[0]) for face in accepted)
            assert hosts == ["127.0.0.1", "::1"], hosts
        finally:
            server.close()
        assert peers["127.0.0.1"][0] == "127.0.0.1"  # type: ignore[index]
        assert peers["::1"][0] == "::1"  # type: ignore[index]

    asyncio.run(main())
