"""Many client connections on one shared socket (``quicflow.client_endpoint``), real
loopback sockets: the socket's receive buffer grows with its connections, and the perf
client's ``--shared-socket`` moves its bytes intact through one socket, counted once.

Issue 11: 256 downloads through one shared socket ran at half the goodput of a socket
each. The kernel dropped about 1 k datagrams per GiB (UdpRcvbufErrors): every server
sent into one receive buffer sized for one connection.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

import quicflow
from quicflow.apps import perf
from quicflow.datapath import socket as dsocket
from quicflow.datapath.socket import SOCKET_BUFFER, UdpTransport
from quicflow.tls.certs import certificate_pem, generate_self_signed
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config
from tests.support.relay import LossyUdpRelay

MIB = 1 << 20


def _granted(nbytes: int) -> int:
    """What the kernel gives a fresh UDP socket asking for ``nbytes`` the same way."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        dsocket._set_buffer(s, dsocket.SO_RCVBUFFORCE, socket.SO_RCVBUF, nbytes)
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_shared_socket_receive_buffer_grows_with_its_connections(
    require: Callable[[bool, str], None],
) -> None:
    """Five connections: the buffer of eight sockets (doubling steps); the downloads
    arrive intact (hash-checked by echo_proto). Without the growth it stays at one
    socket's."""
    one, eight = _granted(SOCKET_BUFFER), _granted(8 * SOCKET_BUFFER)
    require(eight > one, "a receive buffer past net.core.rmem_max needs CAP_NET_ADMIN")

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            port = server.address[1]
            async with quicflow.client_endpoint(
                "127.0.0.1", configuration=client_config()
            ) as ep:
                transport = ep.runner.transport
                assert transport.receive_buffer == one
                opened = asyncio.Event()
                count = 0

                async def one_download(seed: int) -> dict[str, object]:
                    nonlocal count
                    async with ep.connect("127.0.0.1", port) as conn:
                        count += 1
                        if count == 5:
                            opened.set()
                        await opened.wait()
                        reader, writer = await conn.create_stream()
                        return await echo_proto.client_exchange(
                            reader, writer, upload=b"", download=300_000, seed=seed
                        )

                results = await asyncio.gather(*(one_download(s) for s in range(5)))
                assert all(r["ok"] for r in results), results
                assert transport.receive_buffer == eight
                # a smaller need never shrinks it (the buffer is a limit, not memory)
                transport.grow_receive_buffer(SOCKET_BUFFER)
                assert transport.receive_buffer == eight
        finally:
            server.close()

    run(main(), 60)


def test_perf_client_shared_socket_one_socket_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``run_client(shared_socket=True)``: four connections open one socket between
    them, the bytes are verified against the server's pattern, and the socket's
    counters are that socket's (added once, not once per connection)."""
    cert, key = generate_self_signed(["localhost", "127.0.0.1"])
    opened: list[UdpTransport] = []
    real_open = UdpTransport.open

    def counting_open(*args: Any, **kw: Any) -> UdpTransport:
        transport = real_open(*args, **kw)
        opened.append(transport)
        return transport

    async def scenario() -> None:
        cfg = quicflow.Configuration(
            alpn_protocols=["perf"], certificate_chain=[cert], private_key=key
        )
        server, _ = await perf.start_server("127.0.0.1", 0, configuration=cfg)
        ccfg = quicflow.Configuration(alpn_protocols=["perf"], cadata=certificate_pem(cert))
        monkeypatch.setattr(UdpTransport, "open", counting_open)
        try:
            result = await perf.run_client(
                "127.0.0.1", server.address[1], download=4 * MIB, streams=2,
                connections=4, configuration=ccfg, verify=True, timeout=10,
                shared_socket=True,
            )  # fmt: skip
        finally:
            monkeypatch.undo()
            server.close()
        assert len(opened) == 1  # one socket for the four connections
        assert result.bytes_received == 4 * MIB and result.verified
        c = result.counters
        assert c["packets_received"] > 4 * MIB // 1500
        # every datagram carries at least one packet (a few may come after a
        # connection's counters were taken: its closing); counted once per connection,
        # the shared socket's datagrams came to 2-3x the packets
        assert c["datagrams_received"] <= c["packets_received"] + 8 * 4, c
        assert c["syscalls_recv"] <= c["datagrams_received"]

    asyncio.run(asyncio.wait_for(scenario(), 60))



def test_receive_drops_counts_what_a_full_buffer_lost() -> None:
    """``UdpTransport.receive_drops``: a socket with a small buffer that nobody reads
    loses datagrams, and the counter says how many (sent minus what was read)."""
    with UdpTransport.open("127.0.0.1", 0, buffer_bytes=4096) as transport:
        assert transport.receive_drops == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):
                sender.sendto(b"x" * 1000, transport.local_address)
        read = 0
        while batch := transport.recv_batch(8):
            read += sum(-(-len(data) // size) for data, size, _, _ in batch)
        assert 0 < read < 200
        assert transport.receive_drops == 200 - read


def _downloads_on_one_socket(join: bool) -> dict[str, Any]:
    """Eight concurrent downloads of 1 MB on one client_endpoint (hash-checked); the
    client socket's counters."""

    async def main() -> dict[str, Any]:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            port = server.address[1]
            config = client_config()
            # (no path MTU probes: a probe leads its build and leaves in one send with
            # the datagram after it, joined or not; the ACKs' joining is what is counted)
            config.pmtud = False
            async with quicflow.client_endpoint("127.0.0.1", configuration=config) as ep:
                ep.runner.join_singles = join

                async def one(seed: int) -> dict[str, object]:
                    async with ep.connect("127.0.0.1", port) as conn:
                        reader, writer = await conn.create_stream()
                        return await echo_proto.client_exchange(
                            reader, writer, upload=b"", download=1_000_000, seed=seed
                        )

                results = await asyncio.gather(*(one(s) for s in range(8)))
                assert all(r["ok"] for r in results), results
                stats: dict[str, Any] = ep.stats()["datapath"]
                return stats
        finally:
            server.close()

    return run(main(), 60)


def test_a_rounds_acks_leave_together_on_a_shared_socket() -> None:
    """On a shared client socket the ACKs that one receive round's connections answer
    with leave in GSO runs (one ``sendmsg`` for several): fewer send calls than
    datagrams, the downloads intact. Without (``join_singles`` off) every ACK is a
    ``sendmsg`` of its own."""
    joined = _downloads_on_one_socket(True)
    alone = _downloads_on_one_socket(False)
    # measured: 68 sends for 127 datagrams joined, 142 for 142 alone
    assert alone["syscalls_send"] >= alone["datagrams_sent"] * 0.95, alone
    assert joined["syscalls_send"] < joined["datagrams_sent"] * 0.8, joined


def test_joined_acks_under_loss_and_reordering() -> None:
    """Six downloads on one client socket through a relay that loses 10 % and reorders
    5 % each way (it reads without GRO: a joined GSO run reaches it as datagrams): all
    intact, and the client did join some of its datagrams."""

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        relay = await LossyUdpRelay(server.address, loss=0.10, reorder=0.05, seed=11).start()
        try:
            async with quicflow.client_endpoint(
                "127.0.0.1", configuration=client_config()
            ) as ep:

                async def one(seed: int) -> dict[str, object]:
                    async with ep.connect("127.0.0.1", relay.address[1]) as conn:
                        reader, writer = await conn.create_stream()
                        return await echo_proto.client_exchange(
                            reader, writer, upload=b"", download=400_000, seed=seed
                        )

                results = await asyncio.gather(*(one(s) for s in range(6)))
                assert all(r["ok"] for r in results), results
                stats = ep.stats()["datapath"]
            assert stats["syscalls_send"] < stats["datagrams_sent"], stats
            assert relay.stats()["s2c"]["dropped"] > 0 and relay.stats()["c2s"]["dropped"] > 0
        finally:
            await relay.close()
            server.close()

    run(main(), 90)
