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
import select
import socket
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


async def _held_socket_of_worker_a(stack: AsyncExitStack) -> tuple[Any, Any, Any, Any]:
    """Two in-process workers, a client served by each (A by worker a, B by worker b),
    and worker a's connection of A, which holds a socket connected to A's address:
    ``(workers, client_a, client_b, server_a)``."""
    every = SocketPolicy(min_bytes=0, min_age=0.0)
    workers = await stack.enter_async_context(in_process_workers(2, 8, every))
    # clients until each worker serves one (the kernel hashes first Initials)
    clients = await _one_client_per_worker(stack, ("127.0.0.1", workers.port))
    client_a, client_b = clients[0], clients[1]
    address_a = client_a.runner.transport.local_address
    (server_a,) = [
        f.conn for f in workers.runners[0].faces.values() if f.conn.peer_address == address_a
    ]
    assert workers.runners[0].connection_socket(server_a) is not None
    return workers, client_a, client_b, server_a


async def _other_workers_datagram_from_a_socket_peer() -> None:
    async with AsyncExitStack() as stack:
        workers, client_a, client_b, server_a = await _held_socket_of_worker_a(stack)
        transports, runners = workers.transports, workers.runners
        a, b = 0, 1
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



async def _one_client_per_worker(stack: AsyncExitStack, address: tuple[str, int],
                                 ) -> dict[int, Any]:
    """Clients connected to ``address`` until each of the two workers serves one (the
    kernel hashes first Initials), each having downloaded 32 KiB intact; by worker."""
    clients: dict[int, Any] = {}
    for seed in range(40):
        client = await stack.enter_async_context(
            quicflow.connect(*address, configuration=client_configuration())
        )
        assert (await download(client, 32 * 1024, seed=seed)).ok
        clients.setdefault(client.conn.peer_cid[WORKER_BYTE], client)
        if len(clients) == 2:
            break
    assert set(clients) == {0, 1}
    return clients

def test_another_workers_datagram_from_a_socket_peer_is_handed_over_not_dropped() -> None:
    asyncio.run(_other_workers_datagram_from_a_socket_peer())


class _ReusingNat:
    """A NAT in front of the server whose mappings can be given away: ``reassign(a, b)``
    drops client ``a`` (it vanished silently) and sends client ``b``'s datagrams out from
    the upstream port ``a`` had, the server's answers to that port going to ``b``."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.front = self._socket(self._from_client)
        self.upstream: dict[Any, socket.socket] = {}  # client -> its upstream socket
        self.owner: dict[socket.socket, Any] = {}  # upstream socket -> client
        self.gone: set[Any] = set()

    def _socket(self, reader: Any, *args: Any) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        self.loop.add_reader(s.fileno(), reader, s, *args)
        return s

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.front.getsockname()
        return host, port

    def port_of(self, client: Any) -> int:
        port: int = self.upstream[client].getsockname()[1]
        return port

    def _from_client(self, front: socket.socket) -> None:
        while True:
            try:
                data, client = front.recvfrom(65535)
            except OSError:
                return
            if client in self.gone:
                continue
            up = self.upstream.get(client)
            if up is None:
                up = self.upstream[client] = self._socket(self._from_server)
                self.owner[up] = client
            up.sendto(data, self.server)

    def _from_server(self, up: socket.socket) -> None:
        while True:
            try:
                data = up.recv(65535)
            except OSError:
                return
            self.front.sendto(data, self.owner[up])

    def reassign(self, a: Any, b: Any) -> None:
        self.gone.add(a)
        old = self.upstream.pop(b)
        self.loop.remove_reader(old.fileno())
        old.close()
        del self.owner[old]
        up = self.upstream[b] = self.upstream.pop(a)
        self.owner[up] = b

    def close(self) -> None:
        for s in (self.front, *self.upstream.values()):
            self.loop.remove_reader(s.fileno())
            s.close()


async def _nat_gives_a_vanished_clients_port_to_another_workers_client() -> None:
    every = SocketPolicy(min_bytes=0, min_age=0.0)
    async with AsyncExitStack() as stack:
        workers = await stack.enter_async_context(in_process_workers(2, 8, every))
        nat = _ReusingNat(("127.0.0.1", workers.port))
        stack.callback(nat.close)
        clients = await _one_client_per_worker(stack, nat.address)
        a, b = 0, 1
        client_a, client_b = clients[a], clients[b]
        address_a = client_a.runner.transport.local_address
        address_b = client_b.runner.transport.local_address
        port_a = nat.port_of(address_a)
        (server_a,) = [
            f.conn for f in workers.runners[a].faces.values() if f.conn.peer_address[1] == port_a
        ]
        assert workers.runners[a].connection_socket(server_a) is not None
        not_ours = workers.runners[a].endpoint.counters.dropped_not_ours
        # A vanishes without a word; the NAT maps B onto A's old port: B's datagrams
        # reach worker a's socket connected to that port
        nat.reassign(address_a, address_b)
        result = await asyncio.wait_for(
            download(client_b, 512 * 1024, seed=7, upload=512 * 1024), 10
        )
        assert result.ok
        assert workers.transports[a].misrouted_datagrams > 0
        assert workers.transports[b].handed_over_datagrams > 0
        assert workers.runners[a].endpoint.counters.dropped_not_ours == not_ours
        client_a.close()


def test_a_nat_mapping_given_to_another_workers_client_keeps_its_transfer_going() -> None:
    asyncio.run(_nat_gives_a_vanished_clients_port_to_another_workers_client())


async def _other_workers_datagram_left_in_a_closed_socket() -> None:
    async with AsyncExitStack() as stack:
        workers, client_a, client_b, server_a = await _held_socket_of_worker_a(stack)
        transports, runners = workers.transports, workers.runners
        a, b = 0, 1
        sockets = runners[a].sockets
        held = runners[a].connection_socket(server_a)
        assert sockets is not None and held is not None
        # worker a does not read A's socket for a moment; B's short header from A's
        # address (a NAT's reuse) waits in it when the socket is closed
        runners[a].loop.remove_reader(held.fileno())
        header = bytes([0x40 | 0x03]) + client_b.conn.peer_cid + os.urandom(60)
        misrouted = transports[a].misrouted_datagrams
        handed_over = transports[b].handed_over_datagrams
        not_ours = runners[a].endpoint.counters.dropped_not_ours
        client_a.runner.transport.socket.sendto(header, ("127.0.0.1", workers.port))
        assert await _until(lambda: bool(select.select([held], [], [], 0)[0]))
        sockets.release(server_a)
        assert await _until(lambda: transports[b].handed_over_datagrams > handed_over), (
            "the datagram left in the closed socket was not handed to its worker"
        )
        assert transports[a].misrouted_datagrams == misrouted + 1
        assert runners[a].endpoint.counters.dropped_not_ours == not_ours
        assert sockets.counters.leftovers_redelivered == 1
        for seed, client in enumerate((client_a, client_b)):
            assert (await download(client, 64 * 1024, seed=200 + seed)).ok


def test_another_workers_datagram_left_in_a_closed_socket_is_handed_over() -> None:
    asyncio.run(_other_workers_datagram_left_in_a_closed_socket())
