"""Per-connection UDP sockets: the set a server holds, and the policy that fills it.

A connection given a socket of its own gets a UDP socket bound to the listener's address
and port with SO_REUSEPORT, then ``connect()``ed to its client: the kernel's 4-tuple
lookup then delivers the client's datagrams to that socket (its own receive buffer, GRO)
and the connection's datagrams leave through it (GSO) without a destination address.

Why a cap and a policy: on this kernel a datagram that matches a connected socket costs
about 3 µs whatever their number, but one that matches none of them (every Initial,
every NAT rebinding, every datagram of a connection left on the listener) is checked
against all the sockets bound to the port: 3.0 µs with 0, 4.1 µs with 256, 7.4 µs with
1,000, 30 µs with 5,000 (bench/RESULTS.md, "Per-connection sockets"). Each one also holds
~8 KB of kernel memory (slab objects and UDP memory accounting) and a file descriptor.
So at most ``cap`` connections hold one, chosen by :class:`SocketPolicy`; the others are
demultiplexed by connection ID on the listener.

Pitfalls handled here (DESIGN.md, "Scalable sockets"):

* the listener is bound first (the set is built from a bound listener); a per-connection
  socket is bound and connected in one go, never "disconnected" (closed instead);
* between ``bind`` and ``connect`` the new socket may receive other clients' datagrams:
  the caller reads every datagram of a connected socket with its source address and
  hands those whose source is not the socket's peer back to the endpoint's normal
  demultiplexing (:meth:`ConnectedSockets.note_stray` counts them); none is dropped;
* a client whose address changed is no longer reached through its socket: the socket is
  closed as soon as the connection's peer address differs from the socket's, and a new
  one is given once the new path is validated (counted in ``connected_socket_moves``);
* a connection that is closing or draining gives its socket up at once
  (:meth:`ConnectedSockets.route`, and the runner for a draining connection, which sends
  nothing): a connected socket takes every datagram of its 4-tuple, so one kept until the
  connection is forgotten would take those of a new client (or a rebound NAT mapping)
  that reuses the port, whatever connection or worker they name. The late packets of
  the closing connection reach the listener and are demultiplexed by CID as usual
  (RFC 9000 §10.2: absorbed while draining);
* what the kernel still holds in a socket that is closed is read first and handed to
  ``on_leftovers`` (the endpoint's demultiplexing), not dropped with the socket: the
  4-tuple's datagrams are not only its connection's when a client runs several
  connections on one socket (one connected socket serves them all, see :meth:`route`),
  and a busy server may hold hundreds of their ACKs and window updates there (issue 11:
  256 downloads on a shared client socket lost 340 of ~7,800 client datagrams per GiB
  this way, each connection's share of them then waiting for its PTO).

Protocol-agnostic: the policy reads a few facts a connection exposes
(:class:`ConnectionFacts`); the set never parses a packet. The asyncio side registers
readers through the ``on_open``/``on_close`` callbacks.
"""

from __future__ import annotations

import errno
import resource
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

from quicflow.datapath.backends import Address, DatapathCounters, RecvEntry
from quicflow.datapath.constants import IPPROTO_IPV6, IPV6_V6ONLY, SO_REUSEPORT
from quicflow.datapath.socket import UdpTransport, normalize_address, to_socket_address
from quicflow.datapath.socket import _set_buffers as set_buffers
from quicflow.transport.state import CLOSING

__all__ = [
    "DEFAULT_CONNECTION_SOCKETS",
    "ConnectedSocketCounters",
    "ConnectedSockets",
    "ConnectionFacts",
    "SocketPolicy",
    "add_counters",
    "bind_connection_socket",
    "connect_socket",
    "read_leftovers",
]

#: Default cap of connected sockets per listener (per worker process). Chosen from the
#: measured curve (bench/RESULTS.md, "Per-connection sockets"): with 256 sockets on the
#: port a datagram that matches none of them costs ~1.4x what it costs with none, 1,000
#: would make it 2.5x; 256 sockets hold ~2 MB of kernel memory and stay far below the
#: usual 1,024 file-descriptor limit.
DEFAULT_CONNECTION_SOCKETS = 256
#: File descriptors left for everything else when the cap is clipped to RLIMIT_NOFILE.
FD_RESERVE = 64
#: Receive/send buffer limit of a per-connection socket, as the listener's (the kernel
#: charges only what is queued; without privileges net.core.[rw]mem_max clips it).
CONNECTION_SOCKET_BUFFER = 8 << 20


class _Counters(Protocol):
    bytes_sent: int
    bytes_received: int


class ConnectionFacts(Protocol):
    """What the policy reads of a connection (``transport.Connection`` has all of it)."""

    is_client: bool
    terminated: bool
    #: connection state (``transport.state``): CLOSING and above hold no socket
    state: int
    handshake_confirmed: bool
    address_validated: bool
    path_challenge: bytes
    now_created: float
    peer_address: Address

    @property
    def counters(self) -> _Counters: ...


@dataclass(slots=True)
class SocketPolicy:
    """Which connections get a socket of their own.

    A server connection qualifies once its handshake is confirmed, its client's address
    is validated (no path challenge outstanding), and it is *heavy* (moved at least
    ``min_bytes`` bytes, both directions) or *long-lived* (older than ``min_age``
    seconds, and still active: the check runs when the connection sends). Connections
    that qualify take free places first come, first served, up to the cap; the others
    stay on the listener and take a place when one frees. A connection that had a socket
    and moved to a new address qualifies again as soon as the new path is validated.
    Short exchanges (a handshake and a small request) therefore never cost a socket.
    ``SocketPolicy(min_bytes=0, min_age=0)`` gives one to every connection (up to the cap).
    """

    min_bytes: int = 256 * 1024
    min_age: float = 2.0

    def qualifies(self, conn: ConnectionFacts, now: float, moved: bool) -> bool:
        if (
            conn.is_client
            or conn.terminated
            or not conn.handshake_confirmed
            or not conn.address_validated
            or conn.path_challenge
        ):
            return False
        if moved:
            return True
        c = conn.counters
        return (
            c.bytes_sent + c.bytes_received >= self.min_bytes
            or now - conn.now_created >= self.min_age
        )


@dataclass(slots=True)
class ConnectedSocketCounters:
    #: the most connected sockets held at once (the ``connected_sockets`` of issue 6)
    connected_sockets: int = 0
    #: connected sockets held now
    connected_sockets_now: int = 0
    connected_sockets_opened: int = 0
    connected_sockets_closed: int = 0
    #: sockets attached from elsewhere (another process, :meth:`ConnectedSockets.attach`)
    connected_sockets_attached: int = 0
    #: connections moved to a new socket after their client's address changed
    connected_socket_moves: int = 0
    #: sockets that could not be made (EMFILE, EADDRINUSE...): the connection stayed on
    #: the listener
    connected_socket_errors: int = 0
    #: datagrams read from a connected socket whose source was not its peer, handed back
    #: to the endpoint's demultiplexing (never dropped)
    strays_redelivered: int = 0
    #: times a qualifying connection stayed on the listener because the cap was reached
    connected_sockets_cap_reached: int = 0
    #: datagrams still queued in a connected socket when it was closed, read and handed
    #: to the endpoint's demultiplexing (``on_leftovers``) instead of dropped with it
    leftovers_redelivered: int = 0


def bind_connection_socket(
    listener: socket.socket, *, buffer_bytes: int = CONNECTION_SOCKET_BUFFER
) -> socket.socket:
    """A new UDP socket bound with SO_REUSEPORT to the listener's own address and port
    (the listener must have SO_REUSEPORT too). Not yet connected: see
    :func:`connect_socket`."""
    family = listener.family
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
        # SO_REUSEADDR too: :func:`connect_socket` turns SO_REUSEPORT off once the
        # socket is connected, and two per-connection sockets then share the port
        # through SO_REUSEADDR (a listener has no SO_REUSEADDR: a socket of anyone
        # else that asks for it still conflicts with the listeners)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            v6only = listener.getsockopt(IPPROTO_IPV6, IPV6_V6ONLY)
            sock.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, v6only)
        set_buffers(sock, buffer_bytes)  # SO_*BUFFORCE when privileged, like the listener
        sock.bind(listener.getsockname())
    except BaseException:
        sock.close()
        raise
    return sock


def connect_socket(sock: socket.socket, peer: Address) -> None:
    """``connect()`` a bound per-connection socket to its client, then turn its
    SO_REUSEPORT off. Until this returns, the socket may have queued other clients'
    datagrams (they are read later and redelivered as strays).

    Why SO_REUSEPORT goes (measured on Linux 6.18, tests/test_connection_socket_strays.py):
    a socket bound to the port joins the reuseport group of the first socket with
    SO_REUSEPORT that the kernel finds on the port, and the newest comes first. If that
    is a connected per-connection socket, the new socket, until it is connected, takes
    every datagram on the port that no connected socket's 4-tuple matches: the steering
    program's pick of a listener is not used, so another worker's datagrams become its
    strays (handed over, ``misrouted_datagrams``). With connected sockets out of that
    search (SO_REUSEPORT off: the connected socket still gets its own 4-tuple), a new
    socket joins the listeners' group and the program steers during its bind-connect
    window as before."""
    sock.connect(to_socket_address(peer, sock.family))
    sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 0)


def _nofile_limit() -> int:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 1 << 20
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class ConnectedSockets:
    """The per-connection sockets of one listener, keyed by connection identity.

    ``on_open(transport, conn)`` is called for every socket that starts serving a
    connection (made here or attached); ``on_close(transport)`` before one is closed or
    detached; ``on_leftovers(entries, peer)`` with what was still queued in a socket
    being closed and the peer it was connected to (read just before; without the
    callback it is dropped with the socket). Every operation is O(1) in the number of
    connections (a closing socket's queue is read up to :data:`LEFTOVER_BUFFERS`).
    """

    def __init__(
        self,
        listener: UdpTransport,
        cap: int,
        *,
        policy: SocketPolicy | None = None,
        backend: str = "auto",
        on_open: Callable[[UdpTransport, Any], None] | None = None,
        on_close: Callable[[UdpTransport], None] | None = None,
        on_leftovers: Callable[[list[RecvEntry], Address], None] | None = None,
    ) -> None:
        if cap < 0:
            raise ValueError("the connected-socket cap must be >= 0")
        self.listener = listener
        self.cap = min(cap, max(0, _nofile_limit() - FD_RESERVE))
        self.policy = policy if policy is not None else SocketPolicy()
        #: whether a connection whose handshake is not confirmed may hold a socket: not
        #: with the stock policy (its ``qualifies`` asks for confirmation), so a sender
        #: may skip :meth:`route` for such a connection; a policy of another class, or a
        #: socket attached from outside (:meth:`attach`), turns it on
        self.unconfirmed_may_hold = type(self.policy) is not SocketPolicy
        self.backend = backend
        self.on_open = on_open
        self.on_close = on_close
        self.on_leftovers = on_leftovers
        self.counters = ConnectedSocketCounters()
        self._held: dict[int, tuple[Any, UdpTransport, Address]] = {}  # id(conn) -> ...
        self._by_fd: dict[int, Any] = {}  # fd -> conn
        self._by_peer: dict[Address, int] = {}  # client address -> id(conn) holding it
        self._moved: set[int] = set()  # id(conn) of connections waiting for a new socket
        self._closed_totals = DatapathCounters()

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._held)

    def transport_of(self, conn: Any) -> UdpTransport | None:
        """The socket serving ``conn``, if it holds one."""
        entry = self._held.get(id(conn))
        return entry[1] if entry is not None else None

    def socket_of(self, conn: Any) -> socket.socket | None:
        """The connected socket of ``conn`` (for handing its fd to another process)."""
        entry = self._held.get(id(conn))
        return entry[1].socket if entry is not None else None

    def connection_of(self, fd: int) -> Any:
        return self._by_fd.get(fd)

    def items(self) -> Iterator[tuple[Any, UdpTransport]]:
        """``(connection, transport)`` for every socket held."""
        for conn, transport, _ in list(self._held.values()):
            yield conn, transport

    def peer_of(self, transport: UdpTransport) -> Address | None:
        conn = self._by_fd.get(transport.fileno())
        if conn is None:
            return None
        entry = self._held.get(id(conn))
        return entry[2] if entry is not None else None

    # ------------------------------------------------------------------ policy

    def route(self, conn: ConnectionFacts, now: float) -> UdpTransport | None:
        """The socket ``conn``'s datagrams go out through now, or None for the listener.

        Closes a socket whose connection is closing, draining or ended, or whose client's
        address changed (the connection then waits on the listener until the new path is
        validated), and gives one to a connection that qualifies while there is room.
        """
        key = id(conn)
        entry = self._held.get(key)
        if entry is not None:
            if conn.state >= CLOSING or conn.terminated:
                self.release(conn)
                return None
            if entry[2] == conn.peer_address:
                return entry[1]
            self.release(conn)
            self._moved.add(key)
        if self.cap == 0 or conn.is_client or conn.terminated or conn.state >= CLOSING:
            return None
        moved = key in self._moved
        if not self.policy.qualifies(conn, now, moved):
            return None
        if len(self._held) >= self.cap:
            self.counters.connected_sockets_cap_reached += 1
            return None
        if conn.peer_address in self._by_peer:
            # another connection from the same client socket holds one: the kernel
            # delivers the 4-tuple's datagrams there (demultiplexed by CID all the same);
            # a second socket on the same 4-tuple would only cost memory
            return None
        transport = self._open(conn, conn.peer_address)
        if transport is not None and moved:
            self._moved.discard(key)
            self.counters.connected_socket_moves += 1
        return transport

    def _open(self, conn: Any, peer: Address) -> UdpTransport | None:
        try:
            sock = bind_connection_socket(self.listener.socket)
        except OSError as exc:
            self.counters.connected_socket_errors += 1
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.cap = len(self._held)  # do not try again at every send
            return None
        try:
            connect_socket(sock, peer)
            # a listener that fell back to per-datagram sends (GSO refused) says what
            # this machine does: new sockets start there too
            backend = "basic" if self.listener.backend == "basic" else self.backend
            transport = UdpTransport(sock, backend=backend)
            transport.enable_pmtu_discovery()
        except OSError:
            sock.close()
            self.counters.connected_socket_errors += 1
            return None
        self._add(conn, transport, peer)
        self.counters.connected_sockets_opened += 1
        return transport

    def _add(self, conn: Any, transport: UdpTransport, peer: Address) -> None:
        self._held[id(conn)] = (conn, transport, peer)
        self._by_fd[transport.fileno()] = conn
        self._by_peer[peer] = id(conn)
        c = self.counters
        c.connected_sockets_now = len(self._held)
        if c.connected_sockets_now > c.connected_sockets:
            c.connected_sockets = c.connected_sockets_now
        if self.on_open is not None:
            self.on_open(transport, conn)

    def _remove(self, conn: Any) -> UdpTransport | None:
        entry = self._held.pop(id(conn), None)
        if entry is None:
            return None
        transport = entry[1]
        self._by_fd.pop(transport.fileno(), None)
        if self._by_peer.get(entry[2]) == id(conn):
            del self._by_peer[entry[2]]
        self.counters.connected_sockets_now = len(self._held)
        if self.on_close is not None:
            self.on_close(transport)
        self._accumulate(transport.counters)
        return transport

    def _accumulate(self, counters: DatapathCounters) -> None:
        add_counters(self._closed_totals, counters)

    def release(self, conn: Any, *, leftovers: bool = True) -> None:
        """Close ``conn``'s socket, if it holds one (what waits unsent is tried once;
        whatever the kernel still refuses is lost to QUIC, which resends frames). What
        waits unread goes to ``on_leftovers`` (unless ``leftovers`` is false: a runner
        that is closing has no use for it)."""
        entry = self._held.get(id(conn))
        if entry is None:
            return
        transport = entry[1]
        left: list[RecvEntry] = []
        if leftovers and self.on_leftovers is not None and not transport.closed:
            # (before _remove: the socket's counters count what is read, GRO segments too)
            read_before = transport.counters.datagrams_received
            left = read_leftovers(transport)
            self.counters.leftovers_redelivered += (
                transport.counters.datagrams_received - read_before)
        self._remove(conn)
        if transport.has_pending():
            transport.flush_pending()
        transport.close()
        self.counters.connected_sockets_closed += 1
        if left and self.on_leftovers is not None:
            self.on_leftovers(left, entry[2])

    def forget(self, conn: Any) -> None:
        """``conn`` ended: close its socket and drop every trace of it."""
        key = id(conn)
        if key in self._held:  # (most connections never had one)
            self.release(conn)
        self._moved.discard(key)

    def note_stray(self, count: int = 1) -> None:
        """``count`` datagrams read from a connected socket came from another address
        (they were handed to the endpoint's demultiplexing)."""
        self.counters.strays_redelivered += count

    # ------------------------------------------------------------------ handover

    def attach(self, conn: ConnectionFacts, sock: socket.socket) -> UdpTransport:
        """Serve ``conn`` through ``sock``, an already connected per-connection socket
        (received from another process with SCM_RIGHTS, say). The socket must be bound to
        the listener's port and connected to ``conn.peer_address``; it may exceed the cap
        (it exists already). Datagrams that were queued in it are read as usual."""
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError("a connection socket must be a UDP socket")
        try:
            peer = normalize_address(sock.getpeername())
        except OSError:
            raise ValueError("the socket is not connected") from None
        if peer != normalize_address(conn.peer_address):
            raise ValueError(f"the socket is connected to {peer}, not to {conn.peer_address}")
        if sock.getsockname()[1] != self.listener.socket.getsockname()[1]:
            raise ValueError("the socket is not bound to the listener's port")
        self.release(conn)
        transport = UdpTransport(sock, backend=self.backend)
        transport.enable_pmtu_discovery()
        self.unconfirmed_may_hold = True
        self._add(conn, transport, peer)
        self.counters.connected_sockets_attached += 1
        return transport

    def detach(self, conn: Any) -> socket.socket | None:
        """Stop serving ``conn`` through its socket and hand the socket over, open (to
        pass to another process); None if it holds none."""
        transport = self._remove(conn)
        return transport.socket if transport is not None else None

    def close_all(self) -> None:
        for conn, _ in list(self.items()):
            self.release(conn, leftovers=False)
        self._moved.clear()

    # ------------------------------------------------------------------ counters

    def datapath_totals(self) -> DatapathCounters:
        """The datapath counters of every per-connection socket, live and closed."""
        totals = DatapathCounters()
        add_counters(totals, self._closed_totals)
        for _, transport, _ in self._held.values():
            add_counters(totals, transport.counters)
        return totals


#: the most receive buffers read from a socket being closed (its queue is bounded by its
#: receive buffer; this bounds the read when a peer keeps it filling meanwhile)
LEFTOVER_BUFFERS = 1024


def read_leftovers(transport: UdpTransport) -> list[RecvEntry]:
    """Whatever ``transport`` holds unread, up to :data:`LEFTOVER_BUFFERS` buffers."""
    out: list[RecvEntry] = []
    while len(out) < LEFTOVER_BUFFERS:
        batch = transport.recv_batch(min(64, LEFTOVER_BUFFERS - len(out)))
        if not batch:
            break
        out += batch
    return out


def add_counters(into: DatapathCounters, more: DatapathCounters) -> None:
    """Add every counter of ``more`` to ``into``."""
    for f in fields(DatapathCounters):
        setattr(into, f.name, getattr(into, f.name) + getattr(more, f.name))
