"""Drives an :class:`Endpoint` on one UDP socket inside an asyncio event loop.

No per-datagram protocol callbacks: the socket is read in bounded batches until EAGAIN
(``loop.add_reader``), each batch goes to the endpoint, then every touched connection is
flushed once. Sends go out in GSO-shaped batches; when the kernel's buffer is full the
runner waits for writability (``loop.add_writer``) and stops producing until it drains.

Path MTU: the socket never fragments (DF) and reports refusals and ICMP errors
(``UdpTransport.enable_pmtu_discovery``); after sends and reads the runner takes the path
MTUs the transport learned and lowers the affected connections' datagram size, so the
frames of refused datagrams (lost, to QUIC) go out again in smaller packets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..datapath.socket import UdpTransport, normalize_address
from ..endpoint.endpoint import Endpoint
from ..transport.connection import Connection
from .sendbuffer import SendBudget

if TYPE_CHECKING:
    from .connection import QuicConnection

#: IP + UDP header bytes that a path MTU includes and a UDP payload does not.
IPV4_UDP_OVERHEAD = 28
IPV6_UDP_OVERHEAD = 48
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
RECV_BATCH = 8  # receive buffers (each up to 64 GRO segments) read per round
RECV_ROUNDS = 32  # rounds per readable callback before yielding to the loop


class EndpointRunner:
    """Socket + endpoint + timers; owns the connections' asyncio faces."""

    def __init__(
        self,
        transport: UdpTransport,
        endpoint: Endpoint,
        *,
        on_accept: Callable[[Connection], QuicConnection] | None = None,
        connected_peer: tuple[Any, ...] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = transport
        self.endpoint = endpoint
        self.faces: dict[int, QuicConnection] = {}  # id(Connection) -> face
        self.on_accept = on_accept
        self.connected_peer = connected_peer
        #: how to name the peer in errors ("HOST port PORT" of connect()); set by connect
        self.peer_name: str | None = None
        self._timers: dict[int, tuple[float, asyncio.TimerHandle]] = {}
        self._dirty: dict[Connection, None] = {}  # by identity, in order
        self._flush_scheduled = False
        self._writer_waiting = False
        self._closed = False
        #: unacknowledged written bytes of all connections (send_buffer_per_endpoint)
        self.send_budget = SendBudget(self.loop, endpoint.configuration.send_buffer_per_endpoint)
        transport.enable_pmtu_discovery()
        endpoint.wall_offset = time.time() - self.loop.time()
        self.loop.add_reader(transport.fileno(), self._on_readable)

    # ------------------------------------------------------------------ receive

    def read_now(self) -> None:
        """Read and process what waits now; for other sources of datagrams that share
        this runner (a worker's handoff inbox, see ``datapath/handoff.py``)."""
        self._on_readable()

    def _on_readable(self) -> None:
        if self._closed:
            return
        endpoint = self.endpoint
        transport = self.transport
        for _ in range(RECV_ROUNDS):
            batch = transport.recv_batch(RECV_BATCH)
            if not batch:
                break
            now = self.loop.time()
            touched: list[Connection] = []
            plain: list[tuple[bytes, tuple[Any, ...], int]] = []
            for data, segment_size, addr, ecn in batch:
                peer = normalize_address(addr) if addr else self.connected_peer
                assert peer is not None
                if segment_size < len(data):
                    if plain:  # keep arrival order
                        touched += endpoint.receive_datagrams(plain, now)
                        plain = []
                    touched += endpoint.receive_batch(data, segment_size, peer, now, ecn)
                else:
                    plain.append((bytes(data), peer, ecn))
            if plain:
                touched += endpoint.receive_datagrams(plain, now)
            touched = list(dict.fromkeys(touched))  # each once (by identity), in order
            if endpoint.accepted:
                for conn in endpoint.accepted:
                    if self.on_accept is not None:
                        self.faces[id(conn)] = self.on_accept(conn)
                endpoint.accepted.clear()
            for data, addr in endpoint.pop_stateless():
                transport.send_batch(data, len(data), addr)
            # acknowledge (and send) after every round, so ACKs keep the peer's clock
            for conn in touched:
                self._dispatch(conn)
                self._send(conn)
            if len(batch) < RECV_BATCH:
                break
        if transport.mtu_events:
            self._apply_mtu_events()
        if transport.unreachable_events:
            self._apply_unreachable()

    def _dispatch(self, conn: Connection) -> None:
        face = self.faces.get(id(conn))
        events = conn.pop_events()
        if face is not None and events:
            face.handle_events(events)

    # ------------------------------------------------------------------ send

    def schedule_flush(self, conn: Connection) -> None:
        """Send what ``conn`` has, soon (coalesces many writes into one flush)."""
        self._dirty[conn] = None
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for conn in dirty:
            self._send(conn)

    def _send(self, conn: Connection) -> None:
        if self._closed:
            return
        if self._writer_waiting:
            self._dirty[conn] = None
            return
        transport = self.transport
        addr = None if self.connected_peer is not None else conn.peer_address
        for _ in range(16):
            now = self.loop.time()
            buf, bounds = self.endpoint.build_datagrams(conn, now)
            if not bounds:
                break
            sent = self._send_buffer(transport, buf, bounds, addr, conn.ecn_codepoint())
            if transport.mtu_events:
                self._apply_mtu_events()  # before building more: smaller datagrams now
            if not sent:
                self._wait_writable(conn)
                break
            if len(bounds) < 64:
                break
        else:
            self.schedule_flush(conn)  # more to send: yield to the loop first
        self._dispatch(conn)
        self._arm_timer(conn)
        if conn.terminated:
            self._forget(conn)

    @staticmethod
    def _send_buffer(
        transport: UdpTransport, buf: bytearray, bounds: list[int],
        addr: tuple[Any, ...] | None, ecn: int,
    ) -> bool:
        """Send runs of equal-size datagrams (the last of a run may be shorter) as GSO
        batches straight from the buffer; False when the kernel buffer filled up."""
        ok = True
        view = memoryview(buf)
        n = len(bounds)
        i = 0
        start = 0
        while i < n:
            size = bounds[i] - start
            j = i + 1
            while j < n and j - i < MAX_GSO_SEGMENTS and bounds[j] - start <= MAX_GSO_BYTES:
                seg = bounds[j] - bounds[j - 1]
                if seg > size:
                    break
                j += 1
                if seg < size:
                    break
            if not transport.send_batch(view[start : bounds[j - 1]], size, addr, ecn):
                ok = False
            start = bounds[j - 1]
            i = j
        return ok

    def _wait_writable(self, conn: Connection) -> None:
        self._dirty[conn] = None
        if not self._writer_waiting:
            self._writer_waiting = True
            self.loop.add_writer(self.transport.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        done = self.transport.flush_pending()
        if self.transport.mtu_events:
            self._apply_mtu_events()
        if done:
            self.loop.remove_writer(self.transport.fileno())
            self._writer_waiting = False
            self._flush_dirty()

    # ------------------------------------------------------------------ path MTU

    def _apply_mtu_events(self) -> None:
        """Lower the datagram size of the connections whose path MTU the transport saw
        drop, and flush them (their refused datagrams' frames are resent, smaller)."""
        events = self.transport.mtu_events[:]
        self.transport.mtu_events.clear()
        connections = self.endpoint.all_connections
        for addr, mtu in events:
            if self.connected_peer is not None or addr is None:
                peer = self.connected_peer
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
            ipv6 = self.transport.family == socket.AF_INET6
            size = mtu - (IPV6_UDP_OVERHEAD if ipv6 else IPV4_UDP_OVERHEAD)
            for conn in affected:
                before = conn.max_datagram_size
                conn.lower_max_datagram_size(size)
                if conn.max_datagram_size != before and not conn.terminated:
                    self.schedule_flush(conn)

    # ------------------------------------------------------------------ unreachable

    def _apply_unreachable(self) -> None:
        """An ICMP error said nothing listens where a client connects: a connection
        that has heard nothing from its server yet fails at once (one that has is kept:
        ICMP is not authenticated, RFC 9000 §14.2.1)."""
        self.transport.unreachable_events.clear()
        if self.connected_peer is None:
            return
        host, port = self.connected_peer[0], self.connected_peer[1]
        name = self.peer_name or f"{host} port {port}"
        for conn in list(self.endpoint.all_connections):
            if conn.is_client and not conn.terminated and not conn.counters.packets_received:
                conn.abort(f"connection refused: nothing listens on {name}")
                self._dispatch(conn)
                self._forget(conn)

    # ------------------------------------------------------------------ timers

    def _arm_timer(self, conn: Connection) -> None:
        key = id(conn)
        deadline = conn.timer()
        current = self._timers.get(key)
        if deadline is None:
            if current is not None:
                current[1].cancel()
                del self._timers[key]
            return
        if current is not None:
            if current[0] == deadline:
                return
            current[1].cancel()
        handle = self.loop.call_at(deadline, self._on_timer, conn)
        self._timers[key] = (deadline, handle)

    def _on_timer(self, conn: Connection) -> None:
        self._timers.pop(id(conn), None)
        conn.handle_timer(self.loop.time())
        self._dispatch(conn)
        self._send(conn)

    # ------------------------------------------------------------------ lifecycle

    def _forget(self, conn: Connection) -> None:
        entry = self._timers.pop(id(conn), None)
        if entry is not None:
            entry[1].cancel()
        self.endpoint.forget(conn)
        face = self.faces.pop(id(conn), None)
        if face is not None:
            face.on_terminated()
        if self.connected_peer is not None and not self.faces:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        try:
            self.loop.remove_reader(self.transport.fileno())
            if self._writer_waiting:
                self.loop.remove_writer(self.transport.fileno())
        except (ValueError, OSError):
            pass
        self.transport.close()
