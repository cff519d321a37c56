"""Drives an :class:`Endpoint` on one UDP socket inside an asyncio event loop.

No per-datagram protocol callbacks: the socket is read in bounded batches until EAGAIN
(``loop.add_reader``), each batch goes to the endpoint, then every touched connection is
flushed once. Sends go out in GSO-shaped batches; when the kernel's buffer is full the
runner waits for writability (``loop.add_writer``) and stops producing until it drains.

Path MTU: the socket never fragments (DF) and reports refusals and ICMP errors
(``UdpTransport.enable_pmtu_discovery``); after sends and reads the runner takes the path
MTUs the transport learned and lowers the affected connections' datagram size, so the
frames of refused datagrams (lost, to QUIC) go out again in smaller packets.

Per-connection sockets (server, :meth:`EndpointRunner.enable_connection_sockets`): the
set and its policy live in ``datapath.connected``; the runner reads each connected socket
like the listener, checks the source of every datagram (strays go to the endpoint's
demultiplexing like any other datagram, and are counted), and sends a connection's
datagrams through the socket :meth:`ConnectedSockets.route` picks.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any

from ..datapath.backends import RecvEntry
from ..datapath.connected import ConnectedSockets, SocketPolicy
from ..datapath.socket import UdpTransport, normalize_address
from ..endpoint.endpoint import Endpoint
from ..transport import qlog
from ..transport.bulk import bulk_applies
from ..transport.connection import Connection
from ..transport.state import CLOSING
from . import loopwheel
from .gcpolicy import POLICY as GC_POLICY
from .gso import TURN_DATAGRAMS, gso_run, join_singles, send_buffer
from .mallocpolicy import POLICY as MALLOC_POLICY
from .paths import (
    PATH_EVENTS,
    apply_mtu_events,
    apply_unreachable,
    on_path_events,
    send_probes,
    sort_strays,
)
from .qlogfile import file_factory
from .readturns import RECV_BATCH, RECV_ROUNDS, RECV_TAIL, ReadTurns
from .sendbuffer import SendBudget

if TYPE_CHECKING:
    from .connection import QuicConnection

#: how a runner reads one of its sockets: (the socket, the callback registered for it on
#: the loop's selector, its arguments)
Registration = tuple[UdpTransport, Callable[..., None], tuple[Any, ...]]

#: source addresses remembered in their normalized form (``normalize_address``): a
#: server reads many datagrams from each client; the map is emptied when it is full
PEER_CACHE = 4096


class EndpointRunner:
    """Socket + endpoint + timers; owns the connections' asyncio faces."""

    def __init__(
        self,
        transport: UdpTransport,
        endpoint: Endpoint,
        *,
        on_accept: Callable[[Connection], QuicConnection] | None = None,
        connected_peer: tuple[Any, ...] | None = None,
        read: bool = True,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        #: the loop's clock, called directly when it is asyncio's own (time.monotonic):
        #: one call instead of two per send
        self._clock: Callable[[], float] = (
            time.monotonic if type(self.loop).time is asyncio.BaseEventLoop.time
            else self.loop.time
        )
        self.transport = transport
        self.endpoint = endpoint
        self.faces: dict[int, QuicConnection] = {}  # id(Connection) -> face
        self._counted = 0  # faces reported to the process's GC policy (gcpolicy.py)
        GC_POLICY.runner_started()
        MALLOC_POLICY.runner_started()
        self.on_accept = on_accept
        self.connected_peer = connected_peer
        #: how to name the peer in errors ("HOST port PORT" of connect()); set by connect
        self.peer_name: str | None = None
        #: the connections' deadlines: id(conn) -> (deadline, conn, self); one asyncio
        #: timer for the connections of all runners on this loop (see _arm_timer,
        #: loopwheel.py)
        self._timers: loopwheel.Timers = {}
        self._wheel = loopwheel.join(self)
        self._ensembles = self._wheel.ensembles
        #: the loop's read budget per turn, shared with its other runners (readturns.py)
        self._reads: ReadTurns = self._wheel.reads
        #: id(socket) -> how it is read (``watch``)
        self._registrations: dict[int, Registration] = {}
        self._dirty: dict[Connection, None] = {}  # by identity, in order
        self._peers: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # see PEER_CACHE
        self._flush_scheduled = False
        #: the connection whose round's events are being dispatched (``defer_send``),
        #: and those whose round's send is queued after the application's step
        self._deferrable: Connection | None = None
        self._deferred: dict[Connection, None] = {}
        # fd -> (socket, connections waiting for it to drain) while its buffer is full
        self._waiting: dict[int, tuple[UdpTransport, dict[Connection, None]]] = {}
        self._closed = False
        #: unacknowledged written bytes of all connections (send_buffer_per_endpoint)
        self.send_budget = SendBudget(self.loop, endpoint.configuration.send_buffer_per_endpoint)
        #: per-connection sockets (None: every datagram goes through ``transport``)
        self.sockets: ConnectedSockets | None = None
        #: (client) the socket of a new path being probed; sockets left after a
        #: migration, read a moment longer (see aio/paths.py)
        self.probe_transport: UdpTransport | None = None
        self.retired_transports: dict[int, UdpTransport] = {}
        #: (server) more listeners (a preferred address) and, while there are any, the
        #: listener each connection's newest non-probing packet came in on (its home)
        self.listeners: list[UdpTransport] = []
        self._home: dict[Connection, tuple[UdpTransport, int]] = {}
        transport.enable_pmtu_discovery()
        endpoint.wall_offset = time.time() - self.loop.time()
        #: gets the datagrams the endpoint set aside for the successor during a handoff
        #: (``Endpoint.forwarding``), after each round of reading
        self.forward: Callable[[list[tuple[bytes, Any, int]]], None] | None = None
        self._reading = False
        #: (a shared client socket, set by ``client_endpoint``) a receive round's
        #: one-datagram builds leave together at the round's end (see _send_singles)
        self.join_singles = False
        self._singles: list[tuple[bytearray, tuple[Any, ...], int, Connection]] | None = None
        qlog_dir = endpoint.configuration.qlog_dir
        if qlog_dir and endpoint.qlog_factory is None:
            endpoint.qlog_factory = file_factory(qlog_dir, transport.local_address)
        if read:
            self.start_reading()

    def start_reading(self) -> None:
        """Read the listening socket from now on (at once unless ``read=False`` was given:
        a successor taking over starts reading it when its predecessor has stopped)."""
        if not self._reading and not self._closed:
            self._reading = True
            self.watch(self.transport, self._on_readable)

    @property
    def closed(self) -> bool:
        """Paused or closed: nothing is read, sent or timed any more."""
        return self._closed

    def watch(self, transport: UdpTransport, callback: Callable[..., None], *args: Any) -> None:
        """Read ``transport`` from now on: ``callback(*args)`` when it is readable (it
        calls ``_read``). The registration is kept so that a socket parked by the loop's
        read budget can be put back as it was (``readturns.py``)."""
        self.loop.add_reader(transport.fileno(), callback, *args)
        self._registrations[id(transport)] = (transport, callback, args)

    def unwatch(self, transport: UdpTransport) -> None:
        """Stop reading ``transport`` (it stays open)."""
        self._registrations.pop(id(transport), None)
        self._reads.forget(transport)
        if not transport.closed:
            self.loop.remove_reader(transport.fileno())

    def registration(self, transport: UdpTransport) -> Registration | None:
        """How ``transport`` is read, if it was registered through ``watch``."""
        registration = self._registrations.get(id(transport))
        return registration if registration is not None and registration[0] is transport else None

    def enable_connection_sockets(self, cap: int, policy: SocketPolicy | None = None) -> None:
        """Give up to ``cap`` connections a socket of their own (see datapath.connected).
        The listener must have been bound with SO_REUSEPORT."""
        self.sockets = ConnectedSockets(
            self.transport, cap, policy=policy, backend=self.transport.backend,
            on_open=self._socket_opened, on_close=self._socket_closing,
            on_leftovers=self._socket_leftovers,
        )  # fmt: skip

    def add_listener(self, transport: UdpTransport) -> None:
        """Serve on ``transport`` too (a server's preferred address): read like the
        main listener; connections that move there send through it."""
        transport.enable_pmtu_discovery()
        self.listeners.append(transport)
        self.watch(transport, self._read, transport, None)

    def home_listener(self, conn: Connection) -> UdpTransport:
        home = self._home.get(conn) if self.listeners else None
        return home[0] if home is not None else self.transport

    def connection_socket(self, conn: Connection) -> socket.socket | None:
        """The connected socket serving ``conn``, if any (its fd can be handed over)."""
        return self.sockets.socket_of(conn) if self.sockets is not None else None

    def attach_connection_socket(self, conn: Connection, sock: socket.socket) -> None:
        """Serve ``conn`` (already known to the endpoint, e.g. through ``Endpoint.adopt``)
        through ``sock``, a per-connection socket connected to its client and bound to the
        listener's port, received from another process; it is read from now on."""
        if self.sockets is None:
            raise ValueError("per-connection sockets are off on this server")
        self.sockets.attach(conn, sock)

    def detach_connection_socket(self, conn: Connection) -> socket.socket | None:
        """Stop reading ``conn``'s connected socket and hand it over open (None if none)."""
        return self.sockets.detach(conn) if self.sockets is not None else None

    def _socket_opened(self, transport: UdpTransport, conn: Connection) -> None:
        self.watch(transport, self._on_conn_readable, transport)
        # datagrams queued between bind and connect (other clients' included) wait there

    def _socket_closing(self, transport: UdpTransport) -> None:
        fd = transport.fileno()
        self.unwatch(transport)
        waiting = self._waiting.pop(fd, None)
        if waiting is not None:
            self.loop.remove_writer(fd)
            for conn in waiting[1]:
                self.schedule_flush(conn)  # on the listener, or a new socket

    def _socket_leftovers(self, batch: list[RecvEntry], peer: tuple[Any, ...]) -> None:
        # what a closed connected socket still held: read as its reads are, in a callback
        # of its own (the close may come in the middle of a connection's send turn)
        self.loop.call_soon(self._process_leftovers, batch, peer)

    def _process_leftovers(self, batch: list[RecvEntry], peer: tuple[Any, ...]) -> None:
        if not self._closed:
            self._note_strays(self._process_read(batch, peer, self.transport))

    # ------------------------------------------------------------------ receive

    def read_now(self) -> None:
        """Read and process what waits now; for other sources of datagrams that share
        this runner (a worker's handoff inbox, see ``datapath/handoff.py``)."""
        self._on_readable()

    def _on_readable(self) -> None:
        self._read(self.transport, None)

    def _on_conn_readable(self, transport: UdpTransport) -> None:
        sockets = self.sockets
        if sockets is None or transport.closed:
            return
        peer = sockets.peer_of(transport)
        if peer is None:  # released meanwhile
            return
        self._read(transport, peer)

    def _read(self, transport: UdpTransport, socket_peer: tuple[Any, ...] | None) -> None:
        """``transport`` is readable: read it now, or park it until the loop's read
        budget serves it (``readturns.py``): when this turn's is spent, or while other
        sockets wait for theirs (they go first)."""
        reads = self._reads
        if reads.parked or reads.used >= reads.budget:
            if not self._closed:
                reads.park(self, transport, socket_peer)
            return
        self.read_turn(transport, socket_peer)

    def read_turn(self, transport: UdpTransport, socket_peer: tuple[Any, ...] | None) -> bool:
        """Read ``transport`` in rounds and feed the endpoint. ``socket_peer``: the peer a
        per-connection socket is connected to; datagrams from anyone else are strays.
        The read stops after the round that spends the loop turn's read budget. Returns
        whether it stopped before the socket's queue was empty."""
        if self._closed:
            return False
        reads = self._reads
        counters = transport.counters
        start = counters.bytes_received
        left = reads.budget - reads.used
        strays = 0
        # A round is RECV_BATCH buffers, and the socket's last few with them: up to
        # RECV_TAIL more are read ahead, and when the socket has no more than those the
        # round takes them all (one ACK decision and one turn per connection for the
        # whole remainder); otherwise they open the next round.
        ahead: list[RecvEntry] = []
        drained = False
        for _ in range(RECV_ROUNDS):
            batch = transport.recv_batch(RECV_BATCH + RECV_TAIL - len(ahead))
            if ahead:
                batch = ahead + batch
                ahead = []
            if not batch:
                drained = True
                break
            received = len(batch)
            drained = received < RECV_BATCH + RECV_TAIL
            if not drained:
                ahead = batch[RECV_BATCH:]
                del batch[RECV_BATCH:]
            strays += self._process_read(batch, socket_peer, transport)
            if drained or transport.closed or counters.bytes_received - start >= left:
                break
        if ahead and not transport.closed and not self._closed:  # (the bound was reached)
            strays += self._process_read(ahead, socket_peer, transport)
        reads.charge(transport, counters.bytes_received - start)
        self._note_strays(strays)
        if transport.mtu_events:
            apply_mtu_events(self, transport)
        if transport.unreachable_events:
            apply_unreachable(self, transport)
        return not drained and not transport.closed and not self._closed

    def _process_read(self, batch: list[RecvEntry], socket_peer: tuple[Any, ...] | None,
                      transport: UdpTransport) -> int:
        """Process a batch read from ``transport``; one of a connected socket (connected
        to ``socket_peer``) has its strays sorted out first (a worker's ``claim``).
        Returns how many strays there were."""
        found = 0
        if socket_peer is not None:
            batch, found = sort_strays(self.transport, batch, socket_peer)
        self._process(batch, socket_peer, transport)
        return found

    def _note_strays(self, count: int) -> None:
        if count and self.sockets is not None:
            self.sockets.note_stray(count)

    def deliver(self, batch: list[RecvEntry]) -> None:
        """Process datagrams read elsewhere as if read from the listening socket (those
        a predecessor forwards during a handoff)."""
        if not self._closed and batch:
            self._process(batch, None, self.transport)

    def _process(self, batch: list[RecvEntry], socket_peer: tuple[Any, ...] | None,
                 transport: UdpTransport) -> None:
        """Feed one round of datagrams read from ``transport`` to the endpoint, then
        answer and send."""
        endpoint = self.endpoint
        now = self._clock()
        touched: list[Connection] = []
        runs = 0  # endpoint calls whose connections ``touched`` holds
        plain: list[tuple[bytes, tuple[Any, ...], int]] = []
        # GRO buffers read back to back from one peer with the same ECN bits: one
        # endpoint call, so a run goes on from one buffer into the next
        gro: list[tuple[bytes | memoryview, int]] = []
        gro_from: tuple[Any, ...] = ()
        gro_ecn = 0
        peers = self._peers
        # a round's buffers mostly come from one peer: its address is looked up once
        last_addr: tuple[Any, ...] | None = None
        addr_peer: tuple[Any, ...] = ()
        for data, segment_size, addr, ecn in batch:
            if addr:
                if addr != last_addr:
                    found = peers.get(addr)
                    if found is None:
                        if len(peers) >= PEER_CACHE:
                            peers.clear()
                        found = peers[addr] = normalize_address(addr)
                    addr_peer = found
                    last_addr = addr
                peer = addr_peer
            else:
                peer = socket_peer or self.connected_peer
                assert peer is not None
            if segment_size < len(data):
                if plain:  # keep arrival order
                    touched += endpoint.receive_datagrams(plain, now)
                    plain = []
                    runs += 1
                if gro and (peer != gro_from or ecn != gro_ecn):
                    touched += endpoint.receive_batches(gro, gro_from, now, gro_ecn)
                    gro = []
                    runs += 1
                gro.append((data, segment_size))
                gro_from, gro_ecn = peer, ecn
            else:
                if gro:
                    touched += endpoint.receive_batches(gro, gro_from, now, gro_ecn)
                    gro = []
                    runs += 1
                plain.append((data if type(data) is bytes else bytes(data), peer, ecn))
        if gro:
            touched += endpoint.receive_batches(gro, gro_from, now, gro_ecn)
            runs += 1
        if plain:
            if runs:
                touched += endpoint.receive_datagrams(plain, now)
                runs += 1
            else:
                touched = endpoint.receive_datagrams(plain, now)
                runs = 1
        if runs > 1:
            touched = list(dict.fromkeys(touched))  # each once (by identity), in order
        if endpoint.accepted:
            accepted, endpoint.accepted = endpoint.accepted, {}  # (taken whole: see there)
            on_accept = self.on_accept
            if on_accept is not None:
                for conn in accepted:
                    self.add_face(conn, on_accept(conn))
        if endpoint.stateless:
            if self.listeners and transport in self.listeners:
                for data, addr in endpoint.pop_stateless():  # from the address they hit
                    transport.send_batch(data, len(data), addr)
            for data, addr in endpoint.pop_stateless():
                self.transport.send_batch(data, len(data), addr)
        if self.listeners:
            self._note_homes(transport, touched)
        if endpoint.forwarded:  # moved connections' datagrams: to their new host
            for data, addr, target in endpoint.pop_forwarded():
                if not target(data, addr):  # the channel is gone or too far behind
                    endpoint.counters.forwarded_moved -= 1
                    endpoint.counters.dropped_moved += 1
        forwarding = endpoint.forwarding
        if forwarding:  # a same-host takeover: to the successor
            endpoint.forwarding = []
            if self.forward is not None:
                self.forward(forwarding)
        # acknowledge (and send) after every round, so ACKs keep the peer's clock
        if self.join_singles and len(touched) > 1:
            self._singles = []
        try:
            for conn in touched:
                deferred = False
                if conn.events:
                    self._deferrable = conn
                    self._dispatch(conn)
                    deferred = self._deferrable is None  # (defer_send)
                    self._deferrable = None
                if not deferred:
                    self._send(conn)
                if conn.off_path_challenges or (  # answered through the socket they
                        conn.previous_path is not None  # came in; a challenge of the path
                        and conn.previous_path.challenge_pending):  # the peer left
                    send_probes(self, conn, transport if socket_peer is None
                                and transport is not self.probe_transport else None)
        finally:
            singles, self._singles = self._singles, None
            if singles:
                self._send_singles(singles)

    def _send_singles(
        self, singles: list[tuple[bytearray, tuple[Any, ...], int, Connection]]
    ) -> None:
        """Send a round's one-datagram builds (``join_singles``): on a client socket
        that many connections share, a round of received data touches several of them
        and each answers with an ACK; to one server they leave in GSO runs, one call
        into the socket, instead of a ``sendmsg`` each (issue 11: 256 downloads on one
        socket sent 14-16 k ACK datagrams per GiB, ~25 us each). They wait only until
        the round's last connection has had its turn."""
        transport = self.transport
        for addr, ecn, buf, bounds, conns in join_singles(singles):
            if transport.closed:
                return
            if len(bounds) == 1:
                sent = transport.send_batch(buf, bounds[0], addr, ecn)
            else:
                sent = send_buffer(transport, buf, bounds, addr, ecn)
            if transport.mtu_events:
                apply_mtu_events(self, transport)
            if not sent:
                for conn in conns:
                    self._wait_writable(transport, conn)

    def _note_homes(self, transport: UdpTransport, touched: list[Connection]) -> None:
        """A batch read from ``transport``: the connections whose newest non-probing
        packet came in it live on its listener from now on."""
        if transport is not self.transport and transport not in self.listeners:
            transport = self.transport  # a per-connection socket of the main listener
        homes = self._home
        for conn in touched:
            pn = conn.last_non_probing_pn
            prev = homes.get(conn)
            if prev is None or prev[1] != pn:
                homes[conn] = (transport, pn)
    def receive_forwarded(self, data: bytes, address: tuple[Any, ...],
                          allowed: Container[bytes] | None = None) -> None:
        """A datagram another host forwarded to us for a connection moved here (only
        for the CIDs in ``allowed``, when given)."""
        if self._closed:
            return
        conn = self.endpoint.receive_forwarded(data, address, self.loop.time(), allowed)
        if conn is not None:
            self._dispatch(conn)
            self._send(conn)

    def _dispatch(self, conn: Connection) -> None:
        face = self.faces.get(id(conn))
        events = conn.pop_events()
        if events and conn.is_client:
            for event in events:
                if type(event) in PATH_EVENTS:
                    on_path_events(self, conn, events)
                    break
        if face is not None and events:
            face.handle_events(events)

    # ------------------------------------------------------------------ send

    def schedule_flush(self, conn: Connection) -> None:
        """Send what ``conn`` has, soon (coalesces many writes into one flush)."""
        self._dirty[conn] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_dirty)

    def defer_send(self, conn: Connection) -> None:
        """While a round's events of ``conn`` are dispatched and made application code
        runnable that likely sends at once (a new stream's handler, a reader given its
        stream's end, or data whose read gives the peer window credit), the round's send
        waits one loop callback, after that code's step: a request's ACK goes with the
        response; a response's ACK, when the client then closes, not at all (README,
        "Short connections"); a download's ACK with the MAX_STREAM_DATA or MAX_DATA its
        read makes owed, in one datagram instead of two. No-op outside a round. (A
        handler that starts a key update at once no longer puts HANDSHAKE_DONE in the
        new phase: a server's updates wait for its acknowledgment, ``key_phase_acked``.)"""
        if self._deferrable is conn:
            self._deferrable = None
            self._deferred[conn] = None
            self.loop.call_soon(self._send, conn)

    def flush_now(self, conn: Connection) -> None:
        """Send what ``conn`` has at once (the turn takes a flush already scheduled)."""
        self._send(conn)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for conn in dirty:
            self._send(conn)

    def _route(self, conn: Connection, now: float | None = None
               ) -> tuple[UdpTransport, tuple[Any, ...] | None]:
        """The socket ``conn`` sends through and the destination to give it (None on a
        connected socket)."""
        if self.listeners:
            home = self._home.get(conn)
            if home is not None and home[0] is not self.transport:
                if self.sockets is not None:
                    self.sockets.release(conn)
                return home[0], conn.peer_address
        sockets = self.sockets
        if sockets is not None and (conn.handshake_confirmed or sockets.unconfirmed_may_hold):
            own = sockets.route(conn, self.loop.time() if now is None else now)
            if own is not None:
                return own, None
        return self.transport, None if self.connected_peer is not None else conn.peer_address

    def _send(self, conn: Connection) -> None:
        if self._closed:
            return
        if self._dirty:  # this turn sends what a flush scheduled for it would (a read's
            self._dirty.pop(conn, None)  # window update, most often: a round came first)
        if self._deferred:
            self._deferred.pop(conn, None)
        if conn.terminated:  # nothing to build: its events, then the teardown (which
            if conn.events:  # drops its CIDs, whatever changes were still pending)
                self._dispatch(conn)
            self._forget(conn)
            return
        if conn.state < CLOSING or conn.close_pending or conn.cid_changes:
            now = self._clock()  # (one clock read for the turn)
            if conn.pacer_deadline is not None and self._held_by_pacer(conn, now):
                pass  # a build now would send nothing: the timer sends at the deadline
            elif not self._build_and_send(conn, now):
                return  # its socket's buffer is full: it waits for writability
        elif self.sockets is not None:
            # closing or draining with no close datagram due: nothing to build (the
            # endpoint would return none), only the timer and the teardown below; its
            # connected socket goes now (a draining connection never sends, so route()
            # would not release it), not when the connection is forgotten: see
            # datapath/connected.py on 4-tuples reused by another client
            self.sockets.release(conn)
        if conn.probe is not None:
            send_probes(self, conn, None)
        if conn.events:
            self._dispatch(conn)
        self._arm_timer(conn)
        if conn.terminated:
            self._forget(conn)

    def _held_by_pacer(self, conn: Connection, now: float) -> bool:
        """Nothing but new data of its first queued stream waits (``bulk_applies``) and
        the pacer holds that back until ``conn.pacer_deadline``, still ahead: the bulk
        sender would return -1 and the build send nothing, so the turn (an ACK's, a
        write's) skips it and the connection's timer sends the burst at the deadline
        (issue 11, 256 x 4 MiB: about 0.8 k of 17 k turns per GiB). The ACK may have
        raised the pacing rate meanwhile; the burst then goes at the deadline the pacer
        gave, not before it."""
        if (conn.state >= CLOSING or conn.close_pending or conn.cid_changes
                or conn.qlog is not None):
            return False
        deadline = conn.pacer_deadline
        return (deadline is not None and deadline > now and conn.pmtud.next_at > now
                and bulk_applies(conn))

    def _build_and_send(self, conn: Connection, now: float) -> bool:
        """Build and send what ``conn`` has; False when it joined the connections that
        wait for its socket to become writable (nothing else is done for it then)."""
        sockets = self.sockets
        if self.listeners or (sockets is not None and (
                conn.handshake_confirmed or sockets.unconfirmed_may_hold)):
            transport, addr = self._route(conn, now)
        else:  # the listener (what _route gives then), without the call
            transport = self.transport
            addr = None if self.connected_peer is not None else conn.peer_address
        if self._waiting:
            waiting = self._waiting.get(transport.fileno())
            if waiting is not None:
                waiting[1][conn] = None
                return False
        batch = gso_run(conn.max_datagram_size)
        for i in range(TURN_DATAGRAMS // batch):
            if i:
                now = self._clock()
            buf, bounds = self.endpoint.build_datagrams(conn, now, batch)
            built = len(bounds)
            if not built:
                break
            if built == 1:  # one datagram (a handshake flight, an ACK): no runs
                singles = self._singles
                if (singles is not None and addr is not None and transport is self.transport
                        and len(buf) == bounds[0]):
                    singles.append((buf, addr, conn.ecn_codepoint(), conn))
                    break  # sent at the round's end with the others (_send_singles)
                sent = transport.send_batch(buf, bounds[0], addr, conn.ecn_codepoint())
            else:
                sent = send_buffer(transport, buf, bounds, addr, conn.ecn_codepoint())
            if transport.mtu_events:
                apply_mtu_events(self, transport)  # before building more: smaller now
            if not sent:
                self._wait_writable(transport, conn)
                break
            if built < batch:
                break
            paced = conn.pacer_deadline
            if paced is not None and paced > now:
                break  # the pacer holds the rest back: the timer sends it at ``paced``
        else:
            self.schedule_flush(conn)  # more to send: yield to the loop first
        if conn.configuration.shared_slow_start:  # (its rate against the others' to its
            self._ensembles.note(conn)  # host: transport/ensemble.py)
        return True

    def _wait_writable(self, transport: UdpTransport, conn: Connection) -> None:
        fd = transport.fileno()
        waiting = self._waiting.get(fd)
        if waiting is None:
            waiting = self._waiting[fd] = (transport, {})
            self.loop.add_writer(fd, self._on_writable, transport)
        waiting[1][conn] = None

    def _on_writable(self, transport: UdpTransport) -> None:
        done = transport.flush_pending()
        if transport.mtu_events:
            apply_mtu_events(self, transport)
        if done:
            fd = transport.fileno()
            self.loop.remove_writer(fd)
            waiting = self._waiting.pop(fd, None)
            if waiting is not None:
                self._resume(fd, list(waiting[1]))

    def _resume(self, fd: int, order: list[Connection]) -> None:
        """Let the connections that waited for ``fd`` send, in turn. When one fills the
        buffer again, the ones after it wait ahead of it: it had its turn (served first
        each time, the earliest blocked would take the whole buffer every round)."""
        for i, conn in enumerate(order):
            self._send(conn)
            again = self._waiting.get(fd)
            if again is not None:
                queue = again[1]
                queue.pop(conn, None)
                for later in order[i + 1 :]:
                    queue[later] = None
                queue[conn] = None
                return

    # ------------------------------------------------------------------ timers

    def _arm_timer(self, conn: Connection) -> None:
        """Keep ``conn``'s deadline in the loop's timer heap (loopwheel.py). Every
        connection of every runner on the loop shares one loop timer (armed for the
        earliest deadline): its callback serves, in one pass, every connection due by
        then, instead of one asyncio timer per connection or per runner (a TimerHandle
        and a heap of Python-compared handles per re-arm)."""
        key = id(conn)
        deadline = conn.timer()
        current = self._timers.get(key)
        if deadline is None:
            if current is not None:
                del self._timers[key]  # its heap entry is skipped when it comes up
            return
        if current is not None and current[0] == deadline:
            return
        self._timers[key] = (deadline, conn, self)
        self._wheel.push(deadline, self._timers, key)

    def on_timer(self, conn: Connection, now: float) -> None:
        """``conn``'s deadline came (the loop's wheel took it out of ``_timers``)."""
        conn.handle_timer(now)
        if conn.events:
            self._dispatch(conn)
        if not conn.terminated:
            self._send(conn)
        elif not self._closed:  # (a drained connection's end, most often: nothing to
            self._forget(conn)  # build, only the teardown _send would come to)

    # ------------------------------------------------------------------ lifecycle

    def add_face(self, conn: Connection, face: QuicConnection) -> None:
        """Serve ``conn`` through ``face`` (counted for the process's GC policy, and its
        receive window for the malloc policy: see ``QuicConnection.held_window``)."""
        self.faces[id(conn)] = face
        self._counted += 1
        GC_POLICY.added()
        face.held_window = window = conn.flow.window
        MALLOC_POLICY.windows_changed(window)

    def remove_face(self, conn: Connection) -> QuicConnection | None:
        face = self.faces.pop(id(conn), None)
        if face is not None:
            if self._counted > 0:
                self._counted -= 1
                GC_POLICY.removed()
            _release_window(face)
        return face

    def _forget(self, conn: Connection) -> None:
        key = id(conn)
        self._timers.pop(key, None)  # its heap entry is skipped when it comes up
        self._ensembles.forget(key)
        self.endpoint.forget(conn)
        if self.sockets is not None:
            self.sockets.forget(conn)
        if self._home:
            self._home.pop(conn, None)
        face = self.faces.pop(key, None)  # (remove_face, inline)
        if face is not None:
            if self._counted > 0:
                self._counted -= 1
                GC_POLICY.removed()
            _release_window(face)
            face.on_terminated()
        if self.connected_peer is not None and not self.faces:
            self.close()

    def forget_connection(self, conn: Connection) -> None:
        """Drop every trace of ``conn`` here (it was handed off: captured and released)."""
        self._dirty.pop(conn, None)
        self._forget(conn)

    def pause(self) -> None:
        """Stop reading, sending and timers, but keep the socket open (a handoff passes
        it on; datagrams wait in its kernel queue meanwhile)."""
        if self._closed:
            return
        self._closed = True
        self._reading = False
        self._timers.clear()  # its entries in the wheel are skipped from now on
        for conn in self.endpoint.registry:  # (the loop's other runners go on)
            self._ensembles.forget(id(conn))
        self._wheel.leave(self)
        transports = [self.transport, *self.listeners]
        if self.probe_transport is not None:
            transports.append(self.probe_transport)
        transports += list(self.retired_transports.values())
        if self.sockets is not None:  # connection sockets stay open too (a handoff)
            transports += [t for _, t in self.sockets.items()]
        self._registrations.clear()
        for transport in transports:
            self._reads.forget(transport)
            try:
                self.loop.remove_reader(transport.fileno())
                if self._waiting.pop(transport.fileno(), None) is not None:
                    self.loop.remove_writer(transport.fileno())
            except (ValueError, OSError):
                pass

    def close(self) -> None:
        self.pause()
        for conn in self.endpoint.registry:
            # connections still open, closing or draining: their qlog records so far
            # are written (a trace is otherwise flushed when its connection is forgotten)
            qlog.stop(conn)
        while self._counted > 0:  # faces left behind no longer count as held
            self._counted -= 1
            GC_POLICY.removed()
        for face in self.faces.values():
            _release_window(face)
        if self.sockets is not None:
            self.sockets.close_all()
        for other in [*self.listeners, *self.retired_transports.values()]:
            other.close()
        if self.probe_transport is not None:
            self.probe_transport.close()
            self.probe_transport = None
        self.transport.close()


def _release_window(face: QuicConnection) -> None:
    """``face``'s connection no longer counts for the malloc policy."""
    if face.held_window:
        MALLOC_POLICY.windows_changed(-face.held_window)
        face.held_window = 0
