"""A worker's per-connection socket and the datagrams of its own peer's 4-tuple.

A connected socket takes every datagram of its 4-tuple. If its client vanishes silently
and a NAT then maps another client onto the same address, whose connection lives in
another worker, that client's short headers reach this worker through the socket. They
must be handed to their worker (``SteeringTransport.claim``). Before, this worker's
endpoint dropped them as CIDs it did not issue (``dropped_not_ours``; its generator
knows its own worker byte, so no stateless reset went out) for as long as the socket
lived: up to the vanished connection's idle timeout, and the other connection's packets
were lost meanwhile.

Two workers run here in this process, on one event loop, as ``serve(workers=2)`` makes
them (a reuseport group steered by the program, one ``SteeringTransport`` and endpoint
each, the handoff inboxes), so their counters can be read directly.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import pytest

import quicflow
from quicflow.aio.connection import QuicConnection
from quicflow.aio.runner import EndpointRunner
from quicflow.aio.workers import CidPlan
from quicflow.crypto.native import best_engine
from quicflow.datapath.connected import SocketPolicy
from quicflow.datapath.handoff import HandoffInboxes, SteeringTransport
from quicflow.datapath.reuseport import ReuseportGroup
from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.connection import Connection
from tests.support.transfer import (
    client_configuration,
    download,
    serve_stream,
    server_configuration,
)

WORKER_BYTE = 2  # CID offset of the worker byte with the default plan (1 host byte)
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
    loop = asyncio.get_running_loop()
    plan = CidPlan()
    config = replace(plan.configuration(server_configuration()), reset_key=os.urandom(32))
    group = ReuseportGroup.bind("127.0.0.1", 0, 2)
    group.steer(plan.layout(0).worker_cid_offset, config_id=plan.quic_lb.config_id,
                cid_length=plan.quic_lb.cid_len)
    inboxes = HandoffInboxes(2)
    transports: list[SteeringTransport] = []
    runners: list[EndpointRunner] = []
    async with AsyncExitStack() as stack:
        stack.callback(group.close)
        stack.callback(inboxes.close)
        for index in range(2):
            transport = SteeringTransport(group.sockets[index], plan.route(2), index, inboxes)
            endpoint = Endpoint(config, is_server=True, engine=best_engine(),
                                cid_generator=plan.generator(index))
            box: list[EndpointRunner] = []

            def on_accept(conn: Connection, box: list[EndpointRunner] = box) -> QuicConnection:
                return QuicConnection(box[0], conn, stream_handler=serve_stream)

            runner = EndpointRunner(transport, endpoint, on_accept=on_accept)
            box.append(runner)
            runner.enable_connection_sockets(8, SocketPolicy(min_bytes=0, min_age=0.0))
            loop.add_reader(transport.inbox_fileno(), runner.read_now)
            stack.callback(loop.remove_reader, transport.inbox_fileno())
            stack.callback(runner.close)
            transports.append(transport)
            runners.append(runner)
        port = group.address[1]
        # clients until each worker serves one (the program hashes first Initials)
        clients: dict[int, Any] = {}
        for seed in range(40):
            client = await stack.enter_async_context(
                quicflow.connect("127.0.0.1", port, configuration=client_configuration()))
            assert (await download(client, 32 * 1024, seed=seed)).ok
            clients.setdefault(client.conn.peer_cid[WORKER_BYTE], client)
            if len(clients) == 2:
                break
        assert set(clients) == {0, 1}
        # worker a's connection of client A holds a socket connected to A's address
        a = 0
        b = 1
        client_a, client_b = clients[a], clients[b]
        address_a = client_a.runner.transport.local_address
        (server_a,) = [f.conn for f in runners[a].faces.values()
                       if f.conn.peer_address == address_a]
        assert runners[a].connection_socket(server_a) is not None
        # B's short header (its CID names worker b), as a NAT would send it from A's
        # address after A vanished: it reaches worker a through A's connected socket
        header = bytes([0x40 | 0x03]) + client_b.conn.peer_cid + os.urandom(60)
        misrouted = transports[a].misrouted_datagrams
        handed_over = transports[b].handed_over_datagrams
        counters_a = runners[a].endpoint.counters
        not_ours = counters_a.dropped_not_ours
        resets = runners[a].endpoint.admission.counters.stateless_resets_sent
        client_a.runner.transport.socket.sendto(header, ("127.0.0.1", port))
        assert await _until(lambda: transports[b].handed_over_datagrams > handed_over), (
            "the datagram naming worker b was not handed over; worker a dropped "
            f"{counters_a.dropped_not_ours - not_ours} as not its own"
        )
        assert transports[a].misrouted_datagrams == misrouted + 1
        assert transports[b].handed_over_datagrams == handed_over + 1
        assert counters_a.dropped_not_ours == not_ours
        assert runners[a].endpoint.admission.counters.stateless_resets_sent == resets
        # both connections live on, and transfers through the sockets arrive intact
        for seed, client in enumerate((client_a, client_b)):
            assert (await download(client, 256 * 1024, seed=100 + seed)).ok
        assert runners[a].connection_socket(server_a) is not None


def test_another_workers_datagram_from_a_socket_peer_is_handed_over_not_dropped() -> None:
    asyncio.run(_other_workers_datagram_from_a_socket_peer())
