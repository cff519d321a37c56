"""``connect()`` and ``serve()``: the asyncio entry points."""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any, overload

from ..crypto.native import best_engine
from ..crypto.offload import OffloadEngine
from ..datapath.connected import DEFAULT_CONNECTION_SOCKETS, SocketPolicy
from ..datapath.socket import SOCKET_BUFFER, UdpTransport, ensure_port_free, wildcard_host
from ..endpoint.cids import ConnectionIdSource
from ..endpoint.endpoint import Endpoint
from ..migration.handoff import take_over
from ..transport.config import Configuration
from ..transport.connection import Connection
from ..transport.state import CLOSING
from .connection import QuicConnection, StreamHandler
from .handover import CaptureHook, Handover, RestoreHook, restore_server
from .qlogfile import qlog_from_environment
from .runner import EndpointRunner
from .workers import CidPlan, WorkerGroupServer, serve_workers

#: environment variable naming a TLS key log file, as other TLS and QUIC stacks honour it
KEYLOG_ENV = "SSLKEYLOGFILE"
#: the most receive buffer a shared client socket asks for (see _grow_shared_buffer)
SHARED_RECEIVE_BUFFER_CAP = 512 << 20


def _keylog_from_environment(config: Configuration) -> None:
    """Without an explicit ``keylog_file``, log keys to ``$SSLKEYLOGFILE`` when it is set."""
    if config.keylog_file is None:
        config.keylog_file = os.environ.get(KEYLOG_ENV) or None


@functools.lru_cache(maxsize=1024)
def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address literal (remembered: a client opening many
    connections names the same few hosts)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
    """(family, (address, port)) of ``host``; an IP literal needs no resolver call."""
    if _is_ip(host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return family, (host, port)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise socket.gaierror(e.errno, f"cannot resolve {host!r}: {e.strerror}") from None
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return int(family), (str(sockaddr[0]), int(sockaddr[1]))


def _server_name(host: str, config: Configuration) -> str | None:
    server_name = None if _is_ip(host) else host
    if config.server_name is None and server_name is None and config.verify_peer:
        server_name = host  # verify against the IP address literal
    return server_name


def _grow_shared_buffer(runner: EndpointRunner) -> None:
    """A shared client socket's kernel receive buffer grows with the connections on it,
    to what they would have with a socket each (``SOCKET_BUFFER`` per connection, up to
    ``SHARED_RECEIVE_BUFFER_CAP``), in doubling steps. Every connection's server sends
    into this one buffer: while the loop is busy elsewhere (the application, other
    connections' turns) a buffer sized for one connection overflows, the kernel drops
    datagrams, and every connection hit takes a loss (a congestion window halved, a
    retransmission, an immediate ACK). Issue 11: 256 downloads through one socket lost
    about 1 k datagrams per GiB to UdpRcvbufErrors and ran at half the goodput of a
    socket each, with 2.4x the ACKs. The buffer is a limit, not an allocation: it is
    only filled when the loop falls behind, and the peers' flow control windows bound
    what can be in flight. Asked only when the step changes (no syscall per connect)."""
    n = len(runner.faces)
    if n > 2 and (n - 1) & (n - 2):  # the step (a power of two >= n) is n - 1's
        return
    steps = 1 << (n - 1).bit_length() if n > 1 else 1
    runner.transport.grow_receive_buffer(min(steps * SOCKET_BUFFER, SHARED_RECEIVE_BUFFER_CAP))


class _Open:
    """``async with``: one client connection on ``runner``'s endpoint: handshake,
    yield, close.

    Leaving the block sends the CONNECTION_CLOSE at once and returns then: the
    connection stays in its closing state (RFC 9000 §10.2) on its endpoint, whose runner
    answers late packets with the close, repeats it on its backoff timer and frees the
    connection IDs when the 3 PTO are over; ``wait_closed()`` waits for that end. On a
    shared client endpoint (``peer`` None: ``host`` is resolved on entry) closing the
    endpoint ends them early, as §10.2 allows when the socket goes. A connection of its
    own (``connect()``) finishes its closing period in the background and then closes
    its socket (``_finish_closing``): the caller does not wait 3 PTO, which after a burst
    of handshakes inflated the RTT estimate reached seconds (issue 11: 7.6 s at 1,000
    connections), and a sequence of requests on a 100 ms path would wait ~1 s each.

    A plain class rather than an ``asynccontextmanager`` generator: one object per
    connection, no generator and no wrapper between the caller and the loop."""

    __slots__ = ("runner", "peer", "host", "port", "stream_handler", "wait_connected",
                 "face_class", "face")

    def __init__(
        self,
        runner: EndpointRunner,
        peer: tuple[str, int] | None,
        host: str,
        port: int,
        stream_handler: StreamHandler | None,
        wait_connected: bool,
        face_class: type[QuicConnection] = QuicConnection,
    ) -> None:
        self.runner = runner
        self.peer = peer
        self.host = host
        self.port = port
        self.stream_handler = stream_handler
        self.wait_connected = wait_connected
        self.face_class = face_class
        self.face: QuicConnection | None = None

    async def __aenter__(self) -> QuicConnection:
        runner = self.runner
        peer = self.peer
        if peer is None:  # on a shared client endpoint
            if runner._closed:
                raise RuntimeError("the client endpoint is closed")
            family, peer = await _resolve(self.host, self.port)
            if family == socket.AF_INET6 and runner.transport.family == socket.AF_INET:
                raise ValueError(f"an IPv4 client endpoint cannot reach {self.host!r}")
        endpoint = runner.endpoint
        conn = endpoint.connect(
            peer, runner.loop.time(), server_name=_server_name(self.host, endpoint.configuration)
        )
        face = self.face = self.face_class(runner, conn, stream_handler=self.stream_handler)
        runner.add_face(conn, face)
        if self.peer is None:
            _grow_shared_buffer(runner)
        if self.wait_connected:
            runner.flush_now(conn)  # nothing else can join the first flight
        else:
            runner.schedule_flush(conn)  # 0-RTT data written next goes with it
        if self.wait_connected:
            try:
                await face.wait_connected()
            except BaseException:
                await self._close(face)
                raise
        return face

    async def __aexit__(self, *exc_info: object) -> None:
        face = self.face
        if face is not None:
            await self._close(face)

    async def _close(self, face: QuicConnection) -> None:
        conn = face.conn
        if not conn.terminated:
            face.close()
            runner = face.runner
            runner.flush_now(conn)  # the CONNECTION_CLOSE now, not a loop round later
            if conn.state >= CLOSING:
                # its runner's timer ends the closing period (3 PTO); connect() closes
                # a socket of its own after that, in the background
                return
            await face.wait_closed_for(3 * conn.pto() + 0.5)


def _close_faces(runner: EndpointRunner) -> None:
    """Close every connection (code 0) and send each CONNECTION_CLOSE now, while the
    socket is still open (a scheduled flush would find the runner closed: the peers
    would learn of the close only at their idle timeout)."""
    for face in list(runner.faces.values()):
        face.close()
        runner.flush_now(face.conn)


def _close_runner(runner: EndpointRunner) -> None:
    """Close a client runner and release whoever waits for its connections' end: with
    the socket gone their closing periods never finish (they count as ended now)."""
    runner.close()
    faces = list(runner.faces.values())
    runner.faces.clear()  # (each refers back to the runner: a cycle kept otherwise)
    for face in faces:
        face.on_terminated()


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
    cid_generator: ConnectionIdSource | None = None,
    face_class: type[QuicConnection] = QuicConnection,
) -> AsyncIterator[QuicConnection]:
    """Connect to a QUIC server; yields a :class:`QuicConnection`.

    ``cid_generator`` issues the client's connection IDs (default: random ones of the
    configuration's ``connection_id_length``, which may be 0).

    ``async with quicflow.connect("localhost", 4433, configuration=cfg) as conn: ...``
    On leaving the block the connection is closed (code 0) and the socket released.
    Raises :class:`ConnectionClosedError` when the handshake fails (certificate refused,
    timed out, closed by the peer), with a message that says why. An IP address literal
    is used as is (no resolver call). Each call has a socket of its own; to share one
    socket among many connections use :func:`client_endpoint`.
    ``face_class``: the :class:`QuicConnection` subclass to build (HTTP/3 uses its own).
    """
    config = replace(configuration) if configuration is not None else Configuration()
    config.validate()
    _keylog_from_environment(config)
    qlog_from_environment(config)
    family, peer = await _resolve(host, port)
    try:
        transport = UdpTransport.open(wildcard_host(family), 0, backend=backend,
                                      connect_to=peer)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise OSError(exc.errno, _no_more_files(exc)) from exc
        raise
    endpoint = Endpoint(
        config, is_server=False, engine=engine or best_engine(), cid_generator=cid_generator
    )
    runner = EndpointRunner(transport, endpoint, connected_peer=peer)
    runner.peer_name = f"{host} port {port}"
    try:
        async with _Open(
            runner, peer, host, port, stream_handler, wait_connected, face_class
        ) as face:
            yield face
    finally:
        faces = list(runner.faces.values())
        if runner._closed or not faces or not all(
            f.conn.state >= CLOSING and not f.conn.terminated for f in faces
        ):
            _close_runner(runner)
        else:  # (a task: the loop's end cancels it, which closes the socket)
            task = asyncio.get_running_loop().create_task(_finish_closing(runner))
            _FINISHING.add(task)
            task.add_done_callback(_FINISHING.discard)


def _no_more_files(exc: OSError) -> str:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (f"{exc.strerror}: each quicflow.connect() opens a socket of its own (open-file"
            f" limit {soft}: raise it, ulimit -n, or share one socket among connections"
            " with quicflow.client_endpoint(); the perf client's --shared-socket)")


#: connect()'s runners finishing a closing period (tasks are only weakly referenced)
_FINISHING: set[asyncio.Task[None]] = set()


async def _finish_closing(runner: EndpointRunner) -> None:
    """Wait for the closing periods of ``runner``'s connections, then close its socket.
    Cancelled (the event loop ends first: ``asyncio.run`` cancels what is left), the
    socket is closed now, which RFC 9000 §10.2 allows an endpoint that can close its
    UDP socket: late packets then draw no answer."""
    try:
        for face in list(runner.faces.values()):
            await face.wait_closed()
    finally:
        _close_runner(runner)


class ClientEndpoint:
    """One client socket and endpoint shared by many connections.

    Made by :func:`client_endpoint`; ``async with ep.connect(host, port) as conn`` opens a
    connection on it exactly like :func:`quicflow.connect` does, without a socket, an
    endpoint and an offload engine of its own.
    """

    def __init__(self, runner: EndpointRunner) -> None:
        self.runner = runner

    @property
    def address(self) -> tuple[Any, ...]:
        """The local address and port of the shared socket."""
        return self.runner.transport.local_address

    @property
    def endpoint(self) -> Endpoint:
        return self.runner.endpoint

    @property
    def connections(self) -> list[QuicConnection]:
        """The connections not closed yet (those left, still in their closing period
        on the endpoint, are not listed)."""
        return [f for f in self.runner.faces.values() if not f.closed]

    def connect(
        self,
        host: str,
        port: int,
        *,
        stream_handler: StreamHandler | None = None,
        wait_connected: bool = True,
        face_class: type[QuicConnection] = QuicConnection,
    ) -> AbstractAsyncContextManager[QuicConnection]:
        """Open a connection on the shared socket; closed on leaving the block
        (``face_class`` as for :func:`connect`)."""
        return _Open(self.runner, None, host, port, stream_handler, wait_connected,
                     face_class)

    def stats(self) -> dict[str, Any]:
        """Counters of the endpoint and socket, and of each live connection."""
        from .stats import connection_stats, datapath_stats, endpoint_stats

        return {
            "endpoint": endpoint_stats(self.runner),
            "datapath": datapath_stats(self.runner),
            "connections": [connection_stats(f.conn) for f in self.runner.faces.values()],
        }

    def close(self) -> None:
        """Close every connection (code 0) and the socket."""
        _close_faces(self.runner)
        _close_runner(self.runner)


@asynccontextmanager
async def client_endpoint(
    host: str = "::",
    port: int = 0,
    *,
    configuration: Configuration | None = None,
    backend: str = "auto",
    engine: OffloadEngine | None = None,
) -> AsyncIterator[ClientEndpoint]:
    """A client socket on ``host:port`` that many connections share.

    ``async with quicflow.client_endpoint(configuration=cfg) as ep:`` then
    ``async with ep.connect("127.0.0.1", 4433) as conn: ...`` as often as wanted,
    concurrently. The default "::" is dual-stack (IPv4 and IPv6 servers); "0.0.0.0"
    makes an IPv4-only socket. On leaving the block the remaining connections are closed
    and the socket released.
    """
    config = replace(configuration) if configuration is not None else Configuration()
    config.validate()
    _keylog_from_environment(config)
    qlog_from_environment(config)
    transport = UdpTransport.open(host, port, backend=backend)
    endpoint = Endpoint(config, is_server=False, engine=engine or best_engine())
    runner = EndpointRunner(transport, endpoint)
    runner.join_singles = True
    ep = ClientEndpoint(runner)
    try:
        yield ep
    finally:
        faces = list(ep.runner.faces.values())
        for face in faces:
            face.close()
        if faces:
            waits = [asyncio.ensure_future(f.wait_closed()) for f in faces]
            _, pending = await asyncio.wait(waits, timeout=1.0)
            for w in pending:  # closing periods cut short: the socket goes now
                w.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        _close_runner(ep.runner)


class QuicServer:
    """A running server: ``close()`` stops it; ``connections`` lists the live ones."""

    def __init__(self, runner: EndpointRunner, handover: Handover | None = None,
                 face_class: type[QuicConnection] = QuicConnection) -> None:
        self.runner = runner
        self.handover = handover or Handover(runner, None)
        self.face_class = face_class

    def _check_capturable(self) -> None:
        reason = self.face_class.capture_refusal
        if reason is not None:
            raise ValueError(f"connections served through {self.face_class.__name__} "
                             f"cannot be handed over or moved: {reason}")

    def handoff(self, path: str) -> asyncio.Future[int]:
        """Offer this server's connections to a successor (``serve(..., takeover=path)``)
        on a unix socket at ``path``; the future resolves with how many were handed over
        (the server is stopped then: its socket and connections belong to the successor).
        Raises ValueError for a server whose ``face_class`` cannot be captured (its
        ``capture_refusal``, e.g. HTTP/3 not served with ``migratable=True``)."""
        self._check_capturable()
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
                      server_name: str | None = None, count: int | None = None,
                      via_cids: bool = False, forward_seconds: float | None = None) -> int:
        """Move up to ``count`` (default all) connections to the server accepting moves at
        ``host:port`` (mutually authenticated TLS, ``migration.transfer.client_context``).
        Without ``via_cids`` the service address must follow them; with it the address
        stays and a CID-routing balancer (QUIC-LB server IDs) takes each client to the
        other server once it switches to that server's CIDs; what still reaches this
        server for them is forwarded for ``forward_seconds`` (default 10). Returns how
        many were restored there."""
        from .moving import FORWARD_SECONDS, move_connections

        self._check_capturable()

        return await move_connections(
            self.handover, host, port, context, server_name=server_name, count=count,
            via_cids=via_cids,
            forward_seconds=FORWARD_SECONDS if forward_seconds is None else forward_seconds,
        )

    async def accept_moves(self, host: str, port: int, context: ssl.SSLContext) -> Any:
        """Accept connections moved from another host (TLS requiring a client certificate
        from the CA of ``context``, see ``migration.transfer.server_context``); returns
        the ``Receiver`` (``address``, ``refused``, ``close()``). ValueError, like
        ``move_to``, when this server's ``face_class`` cannot restore connections."""
        from .moving import accept_moves

        self._check_capturable()
        return await accept_moves(self.handover, host, port, context)

    def close(self) -> None:
        self.handover.close()
        if self.handover.handed_off.done():
            return  # the connections and the socket belong to the successor
        _close_faces(self.runner)
        self.runner.close()

    async def wait_closed(self) -> None:
        await asyncio.sleep(0)

    async def __aenter__(self) -> QuicServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@overload
async def serve(
    handler: StreamHandler | None, host: str, port: int, *, configuration: Configuration,
    backend: str = ..., connection_handler: Any = ..., engine: OffloadEngine | None = ...,
    cid_generator: ConnectionIdSource | None = ..., workers: None = ...,
    steering: bool = ..., cid_plan: CidPlan | None = ..., app_stats: Any = ...,
    capture: CaptureHook | None = ..., restore: RestoreHook | None = ...,
    takeover: str | None = ...,
    connection_sockets: int = ..., socket_policy: SocketPolicy | None = ...,
    face_class: type[QuicConnection] = ...,
    on_handover: Callable[[Handover], None] | None = ...,
) -> QuicServer: ...


@overload
async def serve(
    handler: StreamHandler | None, host: str, port: int, *, configuration: Configuration,
    backend: str = ..., connection_handler: Any = ..., engine: OffloadEngine | None = ...,
    cid_generator: None = ..., workers: int, steering: bool = ...,
    cid_plan: CidPlan | None = ..., app_stats: Any = ...,
    capture: CaptureHook | None = ..., restore: RestoreHook | None = ...,
    takeover: str | None = ...,
    connection_sockets: int = ..., socket_policy: SocketPolicy | None = ...,
    face_class: type[QuicConnection] = ...,
    on_handover: Callable[[Handover], None] | None = ...,
) -> WorkerGroupServer: ...


async def serve(
    handler: StreamHandler | None,
    host: str,
    port: int,
    *,
    configuration: Configuration,
    backend: str = "auto",
    connection_handler: Any = None,
    engine: OffloadEngine | None = None,
    cid_generator: ConnectionIdSource | None = None,
    workers: int | None = None,
    steering: bool = True,
    cid_plan: CidPlan | None = None,
    app_stats: Any = None,
    capture: CaptureHook | None = None,
    restore: RestoreHook | None = None,
    takeover: str | None = None,
    connection_sockets: int = DEFAULT_CONNECTION_SOCKETS,
    socket_policy: SocketPolicy | None = None,
    face_class: type[QuicConnection] = QuicConnection,
    on_handover: Callable[[Handover], None] | None = None,
) -> QuicServer | WorkerGroupServer:
    """Start a QUIC server on ``host:port``.

    ``handler(reader, writer)`` runs (as a task if it is a coroutine function) for each
    stream a client opens. ``connection_handler(connection)`` is called for each new
    connection. The configuration needs a certificate and key. ``cid_generator`` issues
    the server's connection IDs (default: plaintext QUIC-LB CIDs of the configuration's
    ``connection_id_length`` with server ID 0, see ``quicflow.endpoint.cids``).

    ``workers=N`` serves from N worker processes forked from this one (see
    ``aio/workers.py``) and returns a :class:`WorkerGroupServer`; ``steering=False``
    leaves the choice of worker to the kernel's 4-tuple hash (datagrams that reach the
    wrong worker are handed over). ``cid_plan`` sets the QUIC-LB configuration and host
    ID of the CIDs (default: plaintext, host 0). ``app_stats()`` (workers only) returns a
    dict of the application's counters, reported with each worker's. ``cid_plan`` and
    ``cid_generator`` exclude each other; workers take a plan (one generator each).

    ``connection_sockets``: the most connections given a UDP socket of their own (bound
    to ``host:port`` with SO_REUSEPORT and connected to the client), 0 for none; which
    ones get one is ``socket_policy``'s choice (default: heavy or long-lived connections
    with a validated address, see ``quicflow.datapath.connected``). With ``workers=N``
    the cap is each worker's. ``face_class`` (a :class:`QuicConnection` subclass, e.g.
    HTTP/3's) is built for each accepted connection.

    Handoff (see ``QuicServer.handoff``): ``capture(connection)`` returns the application's
    JSON-able state of a connection being handed over, after its face stopped;
    ``restore(connection, state, streams)`` gets it in the new process, with each open
    stream's (reader, writer) in ``streams``. ``takeover=path`` starts by taking over the
    socket and connections of the server offering a handoff at ``path`` (``host`` and
    ``port`` are then unused). The successor must issue CIDs the same way (the same
    ``cid_generator``/``cid_plan``: restored connections keep their CIDs). Handoff is
    not available with a ``face_class`` whose ``capture_refusal`` is set (ValueError);
    restored connections get ``face_class`` faces (its own state travels through
    ``capture``/``restore``). With ``workers=N``, every worker hands over to its
    successor: ``WorkerGroupServer.handoff(path)`` offers the group at ``path`` (worker
    i at ``path.i``), and ``serve(workers=N, takeover=path)`` takes it over with as many
    workers (another count is refused with a HandoffError saying which to use; see
    ``migration.group``). ``on_handover(handover)`` is called with the server's
    :class:`Handover` once it exists (with workers: each worker's, in that worker), e.g.
    to set its ``before_stop``.
    """
    config = replace(configuration)
    config.validate()
    _keylog_from_environment(config)
    qlog_from_environment(config)
    if not config.certificate_chain or config.private_key is None:
        raise ValueError("a server needs Configuration.certificate_chain and private_key")
    if connection_sockets < 0:
        raise ValueError("connection_sockets must be >= 0")
    if cid_plan is not None and cid_generator is not None:
        raise ValueError("give serve() a cid_plan or a cid_generator, not both")
    if takeover is not None and face_class.capture_refusal is not None:
        # a subclass's own state (e.g. HTTP/3's QPACK tables) could not be restored
        raise ValueError(f"takeover is not available with {face_class.__name__}: "
                         f"{face_class.capture_refusal}")
    if workers is not None:
        if config.preferred_address is not None or config.preferred_address_v6 is not None:
            raise ValueError("a preferred address is not supported with workers yet")
        if cid_generator is not None:
            raise ValueError("workers issue CIDs by a cid_plan (one generator per worker)")
        return await serve_workers(
            handler, host, port, configuration=config, workers=workers, backend=backend,
            connection_handler=connection_handler, steering=steering, plan=cid_plan,
            app_stats=app_stats, connection_sockets=connection_sockets,
            socket_policy=socket_policy, face_class=face_class, capture=capture,
            restore=restore, takeover=takeover, on_handover=on_handover,
        )  # fmt: skip
    generator = cid_generator
    if cid_plan is not None:
        config = cid_plan.configuration(config)
        generator = cid_plan.generator(0)
    received = None
    if takeover is not None:
        loop = asyncio.get_running_loop()
        received = await loop.run_in_executor(None, take_over, takeover)
        transport = UdpTransport(received.sockets[0], backend=backend)
    else:
        ensure_port_free(host, port)
        for preferred in (config.preferred_address, config.preferred_address_v6):
            if preferred is not None:
                ensure_port_free(preferred[0], int(preferred[1]))
        transport = UdpTransport.open(host, port, backend=backend,
                                      reuse_port=connection_sockets > 0)
    endpoint = Endpoint(
        config, is_server=True, engine=engine or best_engine(), cid_generator=generator
    )
    runner_box: list[EndpointRunner] = []

    def on_accept(conn: Connection) -> QuicConnection:
        face = face_class(runner_box[0], conn, stream_handler=handler)
        if connection_handler is not None:
            result = connection_handler(face)
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)
        return face

    runner = EndpointRunner(transport, endpoint, on_accept=on_accept, read=received is None)
    if connection_sockets:
        runner.enable_connection_sockets(connection_sockets, socket_policy)
    for preferred in (config.preferred_address, config.preferred_address_v6):
        if preferred is not None:  # clients may move there (RFC 9000 §9.6)
            # SO_REUSEPORT: a successor taking over (a handoff does not carry this
            # socket) can bind it while this process still holds it
            runner.add_listener(UdpTransport.open(preferred[0], int(preferred[1]),
                                                  backend=backend, reuse_port=True))
    runner_box.append(runner)
    guard = None
    if received is not None:
        try:
            guard, count = await restore_server(runner, received, handler=handler,
                                                restore=restore, face_class=face_class)
        finally:
            received.acknowledge({"restored": count if guard is not None else 0})
    handover = Handover(runner, capture, guard, handler=handler, restore=restore,
                        face_class=face_class)
    if on_handover is not None:
        on_handover(handover)
    return QuicServer(runner, handover, face_class)
