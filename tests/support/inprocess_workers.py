"""Worker endpoints as ``serve(workers=N)`` makes them, but in this process, on one event
loop: a reuseport group steered by the program, one ``SteeringTransport``, endpoint and
runner per worker, and the handoff inboxes. Their counters can be read directly."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace

from quicflow.aio.connection import QuicConnection
from quicflow.aio.runner import EndpointRunner
from quicflow.aio.workers import CidPlan
from quicflow.crypto.native import best_engine
from quicflow.datapath.connected import SocketPolicy
from quicflow.datapath.handoff import HandoffInboxes, SteeringTransport
from quicflow.datapath.reuseport import ReuseportGroup
from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.connection import Connection
from tests.support.transfer import serve_stream, server_configuration

#: CID offset of the worker byte with the default plan (first octet, 1 host byte)
WORKER_BYTE = 2


@dataclass
class InProcessWorkers:
    port: int
    transports: list[SteeringTransport]
    runners: list[EndpointRunner]


@asynccontextmanager
async def in_process_workers(
    workers: int = 2, connection_sockets: int = 8, policy: SocketPolicy | None = None
) -> AsyncIterator[InProcessWorkers]:
    """``workers`` steered worker endpoints serving ``serve_stream`` on 127.0.0.1 (a
    random port), each with up to ``connection_sockets`` per-connection sockets."""
    loop = asyncio.get_running_loop()
    plan = CidPlan()
    config = replace(plan.configuration(server_configuration()), reset_key=os.urandom(32))
    group = ReuseportGroup.bind("127.0.0.1", 0, workers)
    async with AsyncExitStack() as stack:
        stack.callback(group.close)
        group.steer(
            plan.layout(0).worker_cid_offset,
            config_id=plan.quic_lb.config_id,
            cid_length=plan.quic_lb.cid_len,
        )
        inboxes = HandoffInboxes(workers)
        stack.callback(inboxes.close)
        made = InProcessWorkers(group.address[1], [], [])
        for index in range(workers):
            transport = SteeringTransport(group.sockets[index], plan.route(workers), index, inboxes)
            endpoint = Endpoint(
                config, is_server=True, engine=best_engine(), cid_generator=plan.generator(index)
            )
            box: list[EndpointRunner] = []

            def on_accept(conn: Connection, box: list[EndpointRunner] = box) -> QuicConnection:
                return QuicConnection(box[0], conn, stream_handler=serve_stream)

            runner = EndpointRunner(transport, endpoint, on_accept=on_accept)
            box.append(runner)
            if connection_sockets:
                runner.enable_connection_sockets(connection_sockets, policy)
            loop.add_reader(transport.inbox_fileno(), runner.read_now)
            stack.callback(loop.remove_reader, transport.inbox_fileno())
            stack.callback(runner.close)
            made.transports.append(transport)
            made.runners.append(runner)
        yield made
