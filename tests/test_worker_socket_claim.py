"""A worker's per-connection socket and the datagrams of its own peer's 4-tuple.

A connected socket takes every datagram of its 4-tuple. If its client vanishes silently
and a NAT then maps another client onto the same address, whose connection lives in
another worker, that client's short headers reach this worker through the socket. They
must be handed to their worker (``SteeringTransport.claim``). Before, this worker's
endpoint dropped them as CIDs it did not issue (``dropped_not_ours``; its generator
knows its own worker byte, so no stateless reset went out) for as long as the socket
lived: up to the vanished connection's idle timeout, and the other connection's packets
were lost meanwhile.

The two workers run in this process (``tests/support/inprocess_workers.py``), so their
counters can be read directly.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from typing import Any

import pytest

import quicflow
from quicflow.datapath.connected import SocketPolicy
from tests.support.inprocess_workers import WORKER_BYTE, in_process_workers
from tests.support.transfer import client_configuration, download

pytestmark = pytest.mark.timeout(60)


async def _until(check: Any, seconds: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def _other_workers_datagram_from_a_socket_peer() -> None:
    every = SocketPolicy(min_bytes=0, min_age=0.0)
    async with AsyncExitStack() as stack:
        workers = await stack.enter_async_context(in_process_workers(2, 8, every))
        transports, runners = workers.transports, workers.runners
        # clients until each worker serves one (the kernel hashes first Initials)
        clients: dict[int, Any] = {}
        for seed in range(40):
            client = await stack.enter_async_context(
                quicflow.connect("127.0.0.1", workers.port, configuration=client_configuration())
            )
            assert (await download(client, 32 * 1024, seed=seed)).ok
            clients.setdefault(client.conn.peer_cid[WORKER_BYTE], client)
            if len(clients) == 2:
                break
        assert set(clients) == {0, 1}
        a, b = 0, 1
        client_a, client_b = clients[a], clients[b]
        # worker a's connection of client A holds a socket connected to A's address
        address_a = client_a.runner.transport.local_address
        (server_a,) = [
            f.conn for f in runners[a].faces.values() if f.conn.peer_address == address_a
        ]
        assert runners[a].connection_socket(server_a) is not None
        # B's short header (its CID names worker b), as a NAT would send it from A's
        # address after A vanished: it reaches worker a through A's connected socket
        header = bytes([0x40 | 0x03]) + client_b.conn.peer_cid + os.urandom(60)
        misrouted = transports[a].misrouted_datagrams
        handed_over = transports[b].handed_over_datagrams
        counters_a = runners[a].endpoint.counters
        not_ours = counters_a.dropped_not_ours
        resets = runners[a].endpoint.admission.counters.stateless_resets_sent
        client_a.runner.transport.socket.sendto(header, ("127.0.0.1", workers.port))
        assert await _until(lambda: transports[b].handed_over_datagrams > handed_over), (
            "the datagram naming worker b was not handed over; worker a dropped "
            f"{counters_a.dropped_not_ours - not_ours} as not its own"
        )
        assert transports[a].misrouted_datagrams == misrouted + 1
        assert transports[b].handed_over_datagrams == handed_over + 1
        assert counters_a.dropped_not_ours == not_ours
        assert runners[a].endpoint.admission.counters.stateless_resets_sent == resets
        # both connections live on; transfers both ways through the sockets arrive intact
        for seed, client in enumerate((client_a, client_b)):
            result = await download(client, 256 * 1024, seed=100 + seed, upload=256 * 1024)
            assert result.ok
        assert runners[a].connection_socket(server_a) is not None


def test_another_workers_datagram_from_a_socket_peer_is_handed_over_not_dropped() -> None:
    asyncio.run(_other_workers_datagram_from_a_socket_peer())
