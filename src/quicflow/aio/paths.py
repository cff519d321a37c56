"""New paths in the asyncio face: client migration, preferred addresses, probes; and what
the kernel reports about a path (a lower path MTU, an unreachable server).

The sans-I/O side is ``transport/pathprobe.py``; here the sockets move.

Client (a runner made by :func:`quicflow.connect`, its socket connected to the server):
a probe gets a socket of its own (``EndpointRunner.probe_transport``: bound to the new
local address or port, connected to the server's address or preferred address), read
like the main one. When the transport reports :class:`PathMigrated` the runner sends
through that socket from then on; the old socket is still read for a moment (packets
the server sent before it followed) and then closed. On :class:`PathProbeFailed` the
probe's socket is closed and nothing else changes. A client whose socket is shared by
several connections (``client_endpoint``) sends its probes from that socket.

Server: ``serve()`` with a preferred address opens a listener there too
(``EndpointRunner.listeners``). A connection's datagrams leave through the listener its
newest non-probing packet arrived on (its *home*); answers to probes go back through the
socket the probe came in on.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from ..datapath.backends import RecvEntry
from ..datapath.handoff import SteeringTransport
from ..datapath.socket import UdpTransport, normalize_address, wildcard_host
from ..transport.connection import Connection
from ..transport.events import PathMigrated, PathProbeFailed, PreferredAddressAvailable
from ..transport.path import PROBE_PREFERRED
from ..transport.pathprobe import MigrationError, probe_datagrams, start_probe

if TYPE_CHECKING:
    from .runner import EndpointRunner

PATH_EVENTS = frozenset({PathMigrated, PathProbeFailed, PreferredAddressAvailable})
#: IP + UDP header bytes that a path MTU includes and a UDP payload does not.
IPV4_UDP_OVERHEAD = 28
IPV6_UDP_OVERHEAD = 48
#: Seconds the old socket of a client that migrated is still read before it is closed.
OLD_SOCKET_GRACE = 1.0


def open_probe_socket(
    runner: EndpointRunner, local_host: str | None, local_port: int, peer: tuple[Any, ...]
) -> UdpTransport:
    """(client) A socket for a new path to ``peer``, read by ``runner`` from now on."""
    if runner.probe_transport is not None:
        raise MigrationError("a migration is already in progress")
    family = runner.transport.family
    if local_host is None:
        local_host = wildcard_host(family)
    transport = UdpTransport.open(local_host, local_port, backend=runner.transport.backend,
                                  connect_to=peer)
    transport.enable_pmtu_discovery()
    runner.probe_transport = transport
    runner.watch(transport, runner._read, transport, None)
    return transport


def close_probe_socket(runner: EndpointRunner) -> None:
    transport = runner.probe_transport
    runner.probe_transport = None
    if transport is not None:
        _retire(runner, transport, 0.0)


def _retire(runner: EndpointRunner, transport: UdpTransport, after: float) -> None:
    def close() -> None:
        if not transport.closed:
            try:
                runner.unwatch(transport)
            except (ValueError, OSError):
                pass
            transport.close()
        runner.retired_transports.pop(id(transport), None)

    if after <= 0:
        close()
        return
    runner.retired_transports[id(transport)] = transport
    runner.loop.call_later(after, close)


def on_path_events(runner: EndpointRunner, conn: Connection, events: list[Any]) -> None:
    """React to the path events of ``conn`` before its face sees them."""
    for event in events:
        cls = type(event)
        if cls is PathMigrated:
            probe = runner.probe_transport
            if probe is not None and runner.connected_peer is not None:
                old = runner.transport
                runner.unwatch(old)
                runner.transport = probe
                runner.probe_transport = None
                runner.connected_peer = normalize_address(event.peer_address)
                # still read the old socket a moment: what the server sent before it
                # followed us arrives there
                runner.watch(old, runner._read, old, None)
                _retire(runner, old, OLD_SOCKET_GRACE)
        elif cls is PathProbeFailed:
            close_probe_socket(runner)
        elif cls is PreferredAddressAvailable:
            _probe_preferred(runner, conn, event.address)


def _probe_preferred(runner: EndpointRunner, conn: Connection, addr: tuple[Any, ...]) -> None:
    try:
        if runner.connected_peer is not None:
            if runner.probe_transport is not None:
                return  # a migration of the application's own is running
            host = str(addr[0])
            if host.startswith("::ffff:"):
                host = host[7:]
            open_probe_socket(runner, None, 0, (host, int(addr[1])))
        start_probe(conn, runner.loop.time(), PROBE_PREFERRED, tuple(addr))
    except (MigrationError, OSError):
        close_probe_socket(runner)  # stays on the original address


def send_probes(runner: EndpointRunner, conn: Connection, via: UdpTransport | None) -> None:
    """Send ``conn``'s datagrams for other paths: a client's probe through its probe
    socket (or its shared socket), a server's answers through ``via`` (the listener the
    probe came in on) or its home listener."""
    now = runner.loop.time()
    for data, addr in probe_datagrams(conn, now):
        if conn.is_client:
            transport = runner.probe_transport or runner.transport
            dest = None if transport.peer_address is not None else addr
        else:
            transport = via if via is not None else runner.home_listener(conn)
            dest = addr
        transport.send_batch(data, len(data), dest)


def sort_strays(
    transport: UdpTransport, batch: list[RecvEntry], socket_peer: tuple[Any, ...]
) -> tuple[list[RecvEntry], int]:
    """``batch`` read from a per-connection socket, with the datagrams of other peers
    (strays) passed through the listener's (``transport``'s) ``claim`` (a worker hands
    another worker's over); how many strays there were. Never drops one.

    In a worker (the listener is a ``SteeringTransport``) the whole batch goes through
    ``claim``, the socket's own peer's datagrams too: a connected socket takes every
    datagram of its 4-tuple, also those of another client that a NAT mapped onto its
    peer's address after that peer vanished, whose CIDs name another worker. This
    worker's endpoint would drop them (``dropped_not_ours``) for as long as the
    socket lives (up to its connection's idle timeout); ``claim`` hands them over
    (``misrouted_datagrams``). Its common case, short headers naming this worker, is
    a few C-level checks per buffer."""
    # (a datagram from the peer as given: no normalize_address call; an address
    # equal to the normalized peer normalizes to it)
    strays = [e for e in batch
              if e[2] and e[2] != socket_peer and normalize_address(e[2]) != socket_peer]
    if isinstance(transport, SteeringTransport):
        return transport.claim(batch), len(strays)
    if not strays:
        return batch, 0
    own = [e for e in batch
           if not e[2] or e[2] == socket_peer or normalize_address(e[2]) == socket_peer]
    return own + transport.claim(strays), len(strays)


def apply_mtu_events(runner: EndpointRunner, transport: UdpTransport) -> None:
    """Lower the datagram size of the connections whose path MTU ``transport`` saw
    drop, and flush them (their refused datagrams' frames are resent, smaller)."""
    events = transport.mtu_events[:]
    transport.mtu_events.clear()
    connections = runner.endpoint.all_connections
    own = None
    if transport is not runner.transport and runner.sockets is not None:
        own = runner.sockets.connection_of(transport.fileno())
    for addr, mtu in events:
        if own is not None:  # a per-connection socket: its connection only
            affected = [own]
        elif runner.connected_peer is not None or addr is None:
            affected = list(connections)
        else:
            # a path MTU belongs to the destination host (the port may be 0)
            peer = normalize_address(addr)
            affected = [
                c for c in connections if normalize_address(c.peer_address)[0] == peer[0]
            ]
        # An AF_INET6 socket counts IPv6 headers even for IPv4-mapped peers when it
        # checks GSO segments against the path MTU (seen: 1252-byte segments refused
        # with EMSGSIZE on a 1280 path while single datagrams of 1252 went through),
        # so size by the socket's family, not the peer's.
        ipv6 = transport.family == socket.AF_INET6
        size = mtu - (IPV6_UDP_OVERHEAD if ipv6 else IPV4_UDP_OVERHEAD)
        for conn in affected:
            before = conn.max_datagram_size
            conn.lower_max_datagram_size(size)
            if conn.max_datagram_size != before and not conn.terminated:
                runner.schedule_flush(conn)


def apply_unreachable(runner: EndpointRunner, transport: UdpTransport | None = None) -> None:
    """An ICMP error said nothing listens where a client connects: a connection
    that has heard nothing from its server yet fails at once (one that has is kept:
    ICMP is not authenticated, RFC 9000 §14.2.1). A server's per-connection sockets
    see these too (a client gone away); they are dropped, like the listener's."""
    if transport is None:
        transport = runner.transport
    transport.unreachable_events.clear()
    if runner.connected_peer is None or transport is not runner.transport:
        return
    host, port = runner.connected_peer[0], runner.connected_peer[1]
    name = runner.peer_name or f"{host} port {port}"
    for conn in list(runner.endpoint.all_connections):
        if conn.is_client and not conn.terminated and not conn.counters.packets_received:
            conn.abort(f"connection refused: nothing listens on {name}")
            runner._dispatch(conn)
            runner._forget(conn)
