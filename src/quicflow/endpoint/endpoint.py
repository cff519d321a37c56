"""Sans-I/O endpoint: demultiplexing by connection ID, accepting, stateless replies.

Datagrams come in as batches (a GRO buffer with its segment size, or single datagrams);
runs of segments with the same DCID cost one connection lookup (``counters.lookups``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..crypto.native import best_engine
from ..crypto.offload import OffloadEngine
from ..transport.config import Configuration
from ..transport.connection import Address, Connection, client_connection, server_connection
from ..transport.receive import receive_datagram
from ..transport.receive_bulk import receive_short_run
from ..transport.send import build_datagrams, datagrams_to_send
from ..wire.errors import WireError
from ..wire.packet import INITIAL, QUIC_V1, build_version_negotiation, parse_header

MIN_INITIAL_SIZE = 1200


@dataclass(slots=True)
class EndpointCounters:
    datagrams_received: int = 0
    segments_received: int = 0
    lookups: int = 0
    connections_accepted: int = 0
    version_negotiations_sent: int = 0
    dropped_malformed: int = 0
    dropped_unknown_cid: int = 0
    dropped_short_initial: int = 0
    dropped_closed: int = 0
    dropped_undecryptable_initial: int = 0
    dropped_not_accepting: int = 0  # Initials for new connections while handing over

    def dropped(self) -> int:
        return (
            self.dropped_not_accepting
            + self.dropped_malformed
            + self.dropped_unknown_cid
            + self.dropped_short_initial
            + self.dropped_closed
            + self.dropped_undecryptable_initial
        )


@dataclass(slots=True)
class Endpoint:
    """All connections on one local address, client or server side."""

    configuration: Configuration
    is_server: bool
    engine: OffloadEngine = field(default_factory=best_engine)
    connections: dict[bytes, Connection] = field(default_factory=dict)
    accepted: list[Connection] = field(default_factory=list)  # new server connections
    stateless: list[tuple[bytes, Address]] = field(default_factory=list)
    counters: EndpointCounters = field(default_factory=EndpointCounters)
    all_connections: list[Connection] = field(default_factory=list)
    #: False while the connections are being handed over: Initials of new connections
    #: are dropped (their clients send them again, to the successor)
    accepting: bool = True

    @property
    def cid_length(self) -> int:
        return self.configuration.connection_id_length

    # ------------------------------------------------------------------ client

    def connect(self, address: Address, now: float, server_name: str | None = None) -> Connection:
        conn = client_connection(
            self.configuration, address, now, server_name=server_name, engine=self.engine
        )
        self._track(conn)
        return conn

    # ------------------------------------------------------------------ receive

    def receive(self, data: bytes, address: Address, now: float, ecn: int = 0) -> Connection | None:
        """One plain datagram."""
        self.counters.datagrams_received += 1
        self.counters.segments_received += 1
        self.counters.lookups += 1
        conn = self._lookup(data, address, now)
        if conn is not None:
            receive_datagram(conn, data, address, now, ecn)
            if not self._keep_new(conn):
                return None
            self._sync_cids(conn)
        return conn

    def _keep_new(self, conn: Connection) -> bool:
        """A connection created for an Initial none of whose packets could be opened is
        forgotten at once (a forged or corrupted Initial must not hold server state)."""
        if conn.counters.packets_received or not self.accepted or self.accepted[-1] is not conn:
            return True
        self.accepted.pop()
        self.counters.connections_accepted -= 1
        self.counters.dropped_undecryptable_initial += 1
        conn.cid_changes.clear()
        self.forget(conn)
        return False

    def receive_datagrams(
        self, datagrams: list[tuple[bytes, Address, int]], now: float
    ) -> list[Connection]:
        """Plain datagrams ``(data, address, ecn)`` in arrival order (a socket without
        GRO, or a peer that does not send GSO batches). Consecutive short-header
        datagrams with the same DCID, address and ECN bits are joined and take the run
        path: one lookup and one engine call for the run."""
        touched: list[Connection] = []
        counters = self.counters
        cid_len = self.cid_length
        i = 0
        n = len(datagrams)
        while i < n:
            data, address, ecn = datagrams[i]
            j = i + 1
            if data and not data[0] & 0x80:
                key = data[1 : 1 + cid_len]
                while j < n:
                    other, other_address, other_ecn = datagrams[j]
                    if (
                        not other
                        or other[0] & 0x80
                        or other_address != address
                        or other_ecn != ecn
                        or other[1 : 1 + cid_len] != key
                    ):
                        break
                    j += 1
            if j == i + 1:
                conn = self.receive(data, address, now, ecn)
            else:
                counters.datagrams_received += j - i
                counters.segments_received += j - i
                counters.lookups += 1
                conn = self._lookup(data, address, now)
                if conn is not None:
                    run: list[tuple[int, int, bytes]] = []
                    pos = 0
                    for k in range(i, j):
                        length = len(datagrams[k][0])
                        run.append((pos, length, key))
                        pos += length
                    joined = b"".join(d for d, _, _ in datagrams[i:j])
                    receive_short_run(conn, joined, run, address, now, ecn)
                    self._sync_cids(conn)
            if conn is not None and conn not in touched:
                touched.append(conn)
            i = j
        return touched

    def receive_batch(
        self, data: bytes | memoryview, segment_size: int, address: Address, now: float,
        ecn: int = 0,
    ) -> list[Connection]:
        """A GRO batch: segments of ``segment_size`` (the last may be shorter) from one
        address. A run of short-header segments with the same DCID costs one lookup and
        one engine call; long-header segments take the per-datagram path."""
        counters = self.counters
        counters.datagrams_received += 1
        touched: list[Connection] = []
        total = len(data)
        if segment_size <= 0:
            segment_size = total
        cid_len = self.cid_length
        run: list[tuple[int, int, bytes]] = []
        run_conn: Connection | None = None
        run_key = b""
        pos = 0
        while pos < total:
            end = min(pos + segment_size, total)
            counters.segments_received += 1
            first = data[pos]
            if not first & 0x80:
                key = bytes(data[pos + 1 : pos + 1 + cid_len])
                if run and key == run_key:
                    run.append((pos, end - pos, key))
                    pos = end
                    continue
                if run and run_conn is not None:
                    receive_short_run(run_conn, data, run, address, now, ecn)
                run = []
                counters.lookups += 1
                run_conn = self._lookup(bytes(data[pos:end]), address, now)
                run_key = key
                if run_conn is not None:
                    run.append((pos, end - pos, key))
                    if run_conn not in touched:
                        touched.append(run_conn)
            else:
                if run and run_conn is not None:
                    receive_short_run(run_conn, data, run, address, now, ecn)
                run = []
                run_conn = None
                segment = bytes(data[pos:end])
                counters.lookups += 1
                conn = self._lookup(segment, address, now)
                if conn is not None:
                    receive_datagram(conn, segment, address, now, ecn)
                    if self._keep_new(conn) and conn not in touched:
                        touched.append(conn)
            pos = end
        if run and run_conn is not None:
            receive_short_run(run_conn, data, run, address, now, ecn)
        for c in touched:
            self._sync_cids(c)
        return touched

    def _lookup(self, data: bytes, address: Address, now: float) -> Connection | None:
        if not data:
            self.counters.dropped_malformed += 1
            return None
        first = data[0]
        if not first & 0x80:
            conn = self.connections.get(bytes(data[1 : 1 + self.cid_length]))
            if conn is None:
                self.counters.dropped_unknown_cid += 1
            elif conn.terminated:
                self.counters.dropped_closed += 1
                return None
            return conn
        try:
            hdr = parse_header(data, 0, self.cid_length)
        except WireError:
            self.counters.dropped_malformed += 1
            return None
        conn = self.connections.get(hdr.dcid)
        if conn is not None:
            if conn.terminated:
                self.counters.dropped_closed += 1
                return None
            return conn
        if not self.is_server:
            self.counters.dropped_unknown_cid += 1
            return None
        if hdr.version != QUIC_V1:
            if hdr.version != 0 and len(data) >= MIN_INITIAL_SIZE:
                vn = build_version_negotiation(hdr.scid, hdr.dcid, [QUIC_V1])
                self.stateless.append((vn, address))
                self.counters.version_negotiations_sent += 1
            else:
                self.counters.dropped_malformed += 1
            return None
        if hdr.packet_type != INITIAL:
            self.counters.dropped_unknown_cid += 1
            return None
        if len(data) < MIN_INITIAL_SIZE:
            self.counters.dropped_short_initial += 1
            return None
        if len(hdr.dcid) < 8:
            self.counters.dropped_malformed += 1
            return None
        if not self.accepting:
            self.counters.dropped_not_accepting += 1
            return None
        conn = server_connection(
            self.configuration, address, hdr.dcid, now, engine=self.engine, client_scid=hdr.scid
        )
        self.connections[hdr.dcid] = conn
        self._track(conn)
        self.accepted.append(conn)
        self.counters.connections_accepted += 1
        return conn

    # ------------------------------------------------------------------ send

    def datagrams_to_send(self, conn: Connection, now: float) -> list[bytes]:
        out = datagrams_to_send(conn, now)
        self._sync_cids(conn)
        return out

    def build_datagrams(self, conn: Connection, now: float) -> tuple[bytearray, list[int]]:
        """Datagrams in one buffer with their end offsets (see transport.send)."""
        out = build_datagrams(conn, now)
        self._sync_cids(conn)
        return out

    def pop_stateless(self) -> list[tuple[bytes, Address]]:
        out, self.stateless = self.stateless, []
        return out

    # ------------------------------------------------------------------ bookkeeping

    def adopt(self, conn: Connection) -> None:
        """Take over a connection restored from a snapshot (transport/snapshot.py)."""
        for cid in conn.host_cid_list():
            self.connections[cid] = conn
        self._track(conn)

    def _track(self, conn: Connection) -> None:
        self.all_connections.append(conn)
        self._sync_cids(conn)

    def _sync_cids(self, conn: Connection) -> None:
        if not conn.cid_changes:
            return
        for added, cid in conn.cid_changes:
            if added:
                self.connections[cid] = conn
            elif self.connections.get(cid) is conn:
                del self.connections[cid]
        conn.cid_changes.clear()
        if conn.terminated:
            self.forget(conn)

    def forget(self, conn: Connection) -> None:
        """Remove a terminated connection from every table."""
        for cid, c in list(self.connections.items()):
            if c is conn:
                del self.connections[cid]
        if conn in self.all_connections:
            self.all_connections.remove(conn)

    def new_server_cid(self) -> bytes:
        return os.urandom(self.cid_length)

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "datagrams_received": c.datagrams_received,
            "segments_received": c.segments_received,
            "lookups": c.lookups,
            "connections_accepted": c.connections_accepted,
            "dropped": c.dropped(),
        }
