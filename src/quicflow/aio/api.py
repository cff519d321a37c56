"""``connect()`` and ``serve()``: the asyncio entry points."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from ..crypto.native import best_engine
from ..crypto.offload import OffloadEngine
from ..datapath.connected import DEFAULT_CONNECTION_SOCKETS, SocketPolicy
from ..datapath.socket import UdpTransport
from ..endpoint.endpoint import Endpoint
from ..migration.handoff import take_over
from ..transport.config import Configuration
from ..transport.connection import Connection
from .connection import QuicConnection, StreamHandler
from .errors import ConnectionClosedError
from .handover import CaptureHook, Handover, RestoreHook, restore_server
from .runner import EndpointRunner


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@asynccontextmanager
async def connect(
    host: str,
    port: int,
    *,
    configuration: Configuration | None = None,
    backend: str = "auto",
    stream_handler: StreamHandler | None = None,
    engine: OffloadEngine | None = None,
    wait_connected: bool = True,
) -> AsyncIterator[QuicConnection]:
    """Connect to a QUIC server; yields a :class:`QuicConnection`.

    ``async with quicflow.connect("localhost", 4433, configuration=cfg) as conn: ...``
    On leaving the block the connection is closed (code 0) and the socket released.
    Raises :class:`ConnectionClosedError` when the handshake fails (certificate refused,
    timed out, closed by the peer), with a message that says why.
    """
    config = replace(configuration) if configuration is not None else Configuration()
    config.validate()
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    peer = (sockaddr[0], sockaddr[1])
    local = "0.0.0.0" if family == socket.AF_INET else "::"
    transport = UdpTransport.open(local, 0, backend=backend, connect_to=peer)
    endpoint = Endpoint(config, is_server=False, engine=engine or best_engine())
    runner = EndpointRunner(transport, endpoint, connected_peer=peer)
    server_name = None if _is_ip(host) else host
    if config.server_name is None and server_name is None and config.verify_peer:
        server_name = host  # verify against the IP address literal
    conn = endpoint.connect(peer, loop.time(), server_name=server_name)
    face = QuicConnection(runner, conn, stream_handler=stream_handler)
    runner.faces[id(conn)] = face
    runner.schedule_flush(conn)
    try:
        if wait_connected:
            await face.wait_connected()
        yield face
    finally:
        if not conn.terminated:
            face.close()
            try:
                await asyncio.wait_for(face.wait_closed(), timeout=3 * conn.pto() + 0.5)
            except (TimeoutError, ConnectionClosedError):
                pass
        runner.close()


class QuicServer:
    """A running server: ``close()`` stops it; ``connections`` lists the live ones."""

    def __init__(self, runner: EndpointRunner, handover: Handover | None = None) -> None:
        self.runner = runner
        self.handover = handover or Handover(runner, None)

    def handoff(self, path: str) -> asyncio.Future[int]:
        """Offer this server's connections to a successor (``serve(..., takeover=path)``)
        on a unix socket at ``path``; the future resolves with how many were handed over
        (the server is stopped then: its socket and connections belong to the successor)."""
        self.handover.offer(path)
        return self.handover.handed_off

    @property
    def address(self) -> tuple[Any, ...]:
        return self.runner.transport.local_address

    @property
    def endpoint(self) -> Endpoint:
        return self.runner.endpoint

    @property
    def connections(self) -> list[QuicConnection]:
        return list(self.runner.faces.values())

    def stats(self) -> dict[str, Any]:
        """Counters of the server's endpoint and socket, and of each live connection."""
        from .stats import connection_stats, datapath_stats, endpoint_stats, socket_stats

        return {
            "endpoint": endpoint_stats(self.runner),
            "datapath": datapath_stats(self.runner),
            "sockets": socket_stats(self.runner),
            "connections": [connection_stats(f.conn) for f in self.runner.faces.values()],
        }

    async def move_to(self, host: str, port: int, context: ssl.SSLContext, *,
                      server_name: str | None = None, count: int | None = None) -> int:
        """Move up to ``count`` (default all) connections to the server accepting moves at
        ``host:port`` (mutually authenticated TLS, ``migration.transfer.client_context``);
        the service address must follow them. Returns how many were restored there."""
        from .moving import move_connections

        return await move_connections(self.handover, host, port, context,
                                      server_name=server_name, count=count)

    async def accept_moves(self, host: str, port: int, context: ssl.SSLContext) -> Any:
        """Accept connections moved from another host (TLS requiring a client certificate
        from the CA of ``context``, see ``migration.transfer.server_context``); returns
        the ``Receiver`` (``address``, ``refused``, ``close()``)."""
        from .moving import accept_moves

        return await accept_moves(self.handover, host, port, context)

    def close(self) -> None:
        self.handover.close()
        if self.handover.handed_off.done():
            return  # the connections and the socket belong to the successor
        for face in list(self.runner.faces.values()):
            face.close()
        self.runner.close()

    async def wait_closed(self) -> None:
        await asyncio.sleep(0)

    async def __aenter__(self) -> QuicServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def serve(
    handler: StreamHandler | None,
    host: str,
    port: int,
    *,
    configuration: Configuration,
    backend: str = "auto",
    connection_handler: Any = None,
    engine: OffloadEngine | None = None,
    capture: CaptureHook | None = None,
    restore: RestoreHook | None = None,
    takeover: str | None = None,
    connection_sockets: int = DEFAULT_CONNECTION_SOCKETS,
    socket_policy: SocketPolicy | None = None,
) -> QuicServer:
    """Start a QUIC server on ``host:port``.

    ``handler(reader, writer)`` runs (as a task if it is a coroutine function) for each
    stream a client opens. ``connection_handler(connection)`` is called for each new
    connection. The configuration needs a certificate and key.

    ``connection_sockets``: the most connections given a UDP socket of their own (bound
    to ``host:port`` with SO_REUSEPORT and connected to the client), 0 for none; which
    ones get one is ``socket_policy``'s choice (default: heavy or long-lived connections
    with a validated address, see ``quicflow.datapath.connected``).

    Handoff (see ``QuicServer.handoff``): ``capture(connection)`` returns the application's
    JSON-able state of a connection being handed over, after its face stopped;
    ``restore(connection, state, streams)`` gets it in the new process, with each open
    stream's (reader, writer) in ``streams``. ``takeover=path`` starts by taking over the
    socket and connections of the server offering a handoff at ``path`` (``host`` and
    ``port`` are then unused).
    """
    config = replace(configuration)
    config.validate()
    if not config.certificate_chain or config.private_key is None:
        raise ValueError("a server needs Configuration.certificate_chain and private_key")
    if connection_sockets < 0:
        raise ValueError("connection_sockets must be >= 0")
    received = None
    if takeover is not None:
        loop = asyncio.get_running_loop()
        received = await loop.run_in_executor(None, take_over, takeover)
        transport = UdpTransport(received.sockets[0], backend=backend)
    else:
        transport = UdpTransport.open(host, port, backend=backend,
                                      reuse_port=connection_sockets > 0)
    endpoint = Endpoint(config, is_server=True, engine=engine or best_engine())
    runner_box: list[EndpointRunner] = []

    def on_accept(conn: Connection) -> QuicConnection:
        face = QuicConnection(runner_box[0], conn, stream_handler=handler)
        if connection_handler is not None:
            result = connection_handler(face)
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)
        return face

    runner = EndpointRunner(transport, endpoint, on_accept=on_accept)
    if connection_sockets:
        runner.enable_connection_sockets(connection_sockets, socket_policy)
    runner_box.append(runner)
    guard = None
    if received is not None:
        try:
            guard, count = restore_server(runner, received, handler=handler, restore=restore)
        finally:
            received.acknowledge({"restored": count if guard is not None else 0})
    return QuicServer(
        runner, Handover(runner, capture, guard, handler=handler, restore=restore)
    )
