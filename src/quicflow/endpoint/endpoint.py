"""Sans-I/O endpoint: demultiplexing by connection ID, accepting, stateless replies.

Datagrams come in as batches (a GRO buffer with its segment size, or single datagrams);
runs of segments with the same DCID cost one connection lookup (``counters.lookups``).

The endpoint owns connection IDs: its generator (``cid_generator``; a server's default is
plaintext QUIC-LB with the default ``ServerIdLayout``) issues every CID its connections
use, and its registry (``registry.py``) maps client-chosen initial DCIDs and our CIDs to
connections, held by identity. Short-header packets whose DCID the generator does not
recognise as ours are dropped (``dropped_not_ours``) before any lookup. The generator's
CID length wins over ``Configuration.connection_id_length``: the endpoint keeps a copy
of the configuration with the generator's length.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable, Container, KeysView, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..crypto.native import best_engine
from ..crypto.offload import OffloadEngine
from ..crypto.stateless_reset import stateless_reset_token
from ..tls.tickets import SessionTicket, StrikeRegister
from ..transport import qlog
from ..transport.config import Configuration
from ..transport.connection import (
    Address,
    CidIssuer,
    Connection,
)
from ..transport.factory import client_connection, server_connection
from ..transport.headers import parse_header
from ..transport.receive import receive_datagram
from ..transport.receive_bulk import RunPart, receive_short_run, receive_short_runs
from ..transport.send import MAX_DATAGRAMS_PER_CALL, build_datagrams, datagrams_to_send
from ..transport.state import DRAINING, ESTABLISHED
from ..wire.errors import WireError
from ..wire.packet import INITIAL, MIN_INITIAL_DATAGRAM, PacketHeader, build_version_negotiation
from .admission import Admission
from .cids import CidGenerator, ConnectionIdSource, RandomCidGenerator
from .moved import ForwardTarget, MovedCids
from .quiclb import QuicLbConfig, ServerIdLayout
from .registry import ConnectionRegistry
from .reset import match_reset
from .retired import RetiredCids
from .segments import short_run

#: Fresh CIDs drawn before giving up on one no other connection holds (a collision of
#: random nonces is rare; several in a row mean the generator is broken).
CID_ATTEMPTS = 8


def default_server_generator(cid_length: int, layout: ServerIdLayout | None = None) -> CidGenerator:
    """Plaintext QUIC-LB CIDs of ``cid_length`` bytes for ``layout``'s server ID."""
    layout = layout or ServerIdLayout()
    nonce_len = cid_length - 1 - layout.server_id_len
    if nonce_len < 4:
        raise ValueError(
            f"a server's connection IDs need at least {1 + layout.server_id_len + 4} bytes "
            f"(QUIC-LB: first octet, {layout.server_id_len}-byte server ID, 4-byte nonce), "
            f"got connection_id_length={cid_length}"
        )
    config = QuicLbConfig(server_id_len=layout.server_id_len, nonce_len=nonce_len)
    return CidGenerator(config, layout.server_id())


#: Most packets set aside for one connection being captured, or per round of reading for
#: connections handed off (``Endpoint.frozen``, ``Endpoint.forwarding``).
MAX_DIVERTED = 4096


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
    dropped_not_ours: int = 0  # short header whose DCID our generator did not issue
    dropped_initial_collision: int = 0  # another address's Initial with a held DCID
    cid_collisions: int = 0  # a CID the registry refused (held by another connection)
    dropped_not_accepting: int = 0  # Initials for new connections while handing over
    dropped_moved: int = 0  # packets for a connection handed off (no stateless reset)
    handoff_diverted: int = 0  # packets set aside for a same-host successor (takeover)
    forwarded_moved: int = 0  # packets for a connection moved elsewhere, forwarded there
    forwarded_received: int = 0  # packets another host forwarded to us (receive_forwarded)
    handshakes_failed: int = 0  # server connections that ended before their handshake did
    #: packets for a connection in its draining period: it sends nothing and has nothing
    #: to learn (RFC 9000 §10.2.2), e.g. a closing client's CONNECTION_CLOSE repeats
    dropped_draining: int = 0
    #: packets with a CID the client retired a moment ago (retired.py: no reset)
    dropped_retired_cid: int = 0

    def dropped(self) -> int:
        return (
            self.dropped_not_accepting
            + self.dropped_moved
            + self.dropped_malformed
            + self.dropped_unknown_cid
            + self.dropped_short_initial
            + self.dropped_closed
            + self.dropped_undecryptable_initial
            + self.dropped_not_ours
            + self.dropped_initial_collision
            + self.dropped_draining
            + self.dropped_retired_cid
        )


#: Configuration keys that outlive a connection: session tickets, Retry/NEW_TOKEN
#: tokens and stateless reset tokens sealed or derived with them must stay good at a
#: successor (``Endpoint.adopt_secrets``).
SECRET_FIELDS = ("ticket_key", "token_key", "reset_key")


@dataclass(slots=True, eq=False, weakref_slot=True)
class Endpoint:
    """All connections on one local address, client or server side.

    ``cid_generator`` issues every CID of ours (default: plaintext QUIC-LB with the
    default ``ServerIdLayout`` for a server, random CIDs for a client, both of the
    configuration's ``connection_id_length``).
    """

    configuration: Configuration
    is_server: bool
    engine: OffloadEngine = field(default_factory=best_engine)
    cid_generator: ConnectionIdSource | None = None
    registry: ConnectionRegistry[Connection] = field(default_factory=ConnectionRegistry)
    #: new server connections, oldest first, for the I/O layer to take (iterate, then
    #: ``clear()``). Keyed by identity; ``forget`` removes a connection still here, so a
    #: caller that takes them late, or never, holds no connection the endpoint dropped
    accepted: dict[Connection, None] = field(default_factory=dict)
    stateless: list[tuple[bytes, Address]] = field(default_factory=list)
    counters: EndpointCounters = field(default_factory=EndpointCounters)
    #: add to ``now`` to get wall-clock (Unix) seconds: token times must agree across
    #: processes and hosts; the I/O layer sets it
    wall_offset: float = 0.0
    admission: Admission = field(init=False)
    #: ``self.issue_cid`` through a weak reference, made once: every connection's
    #: ``cid_issuer`` (one object for all of them; see ``_weak_issuer``)
    _issuer: CidIssuer = field(init=False, repr=False)
    token_origins: dict[int, str] = field(default_factory=dict)  # (client) id -> server
    #: False while the connections are being handed over: Initials of new connections
    #: are dropped (their clients send them again, to the successor)
    accepting: bool = True
    #: CIDs of connections handed off (captured and released): their packets are
    #: dropped, never answered with a stateless reset the client would accept
    moved: MovedCids = field(default_factory=MovedCids)
    #: (server) CIDs a client retired a moment ago: their late packets are dropped,
    #: never answered with a stateless reset (retired.py)
    retired: RetiredCids = field(default_factory=RetiredCids)
    #: during a same-host handoff: short-header packets with a CID of ours that no
    #: connection here holds (handed off already, or issued by the successor since) are
    #: put here as ``(data, address, ecn)`` for the I/O layer to pass to the successor,
    #: instead of being dropped or answered with a stateless reset; None otherwise
    forwarding: list[tuple[bytes, Address, int]] | None = None
    #: connections being captured (by ``id``): their packets are set aside here, to
    #: reach them again after the restore, instead of changing them meanwhile
    frozen: dict[int, list[tuple[bytes, Address, int]]] = field(default_factory=dict)
    _diverted: list[tuple[bytes, Address, int]] | None = field(default=None, init=False,
                                                                repr=False)
    #: the long header ``_lookup`` parsed last (None after a short header or a drop):
    #: handed to ``receive_datagram`` so the datagram's first header is parsed once
    _header: PacketHeader | None = field(default=None, init=False, repr=False)
    #: called with each new connection and ``now`` before its first packet, to attach a
    #: qlog trace (``transport.qlog.start``); the I/O layer sets it (None: no qlog)
    qlog_factory: Callable[[Connection, float], None] | None = None
    #: datagrams to forward to the host a connection moved to: (data, client, target)
    forwarded: list[tuple[bytes, Address, ForwardTarget]] = field(default_factory=list)
    #: the secrets of SECRET_FIELDS this endpoint made itself (its configuration left
    #: them None): a successor in a takeover adopts its predecessor's instead
    #: (``adopt_secrets``), an operator's own keys stay
    generated_secrets: tuple[str, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        length = self.configuration.connection_id_length
        if self.cid_generator is None:
            self.cid_generator = (
                default_server_generator(length) if self.is_server else RandomCidGenerator(length)
            )
        if self.cid_generator.cid_length != length:
            self.configuration = dataclasses.replace(
                self.configuration, connection_id_length=self.cid_generator.cid_length
            )
        cfg = self.configuration
        self.generated_secrets = tuple(
            name for name in SECRET_FIELDS
            if getattr(cfg, name) is None and (self.is_server or name != "ticket_key"))
        if cfg.token_key is None or cfg.reset_key is None or (  # one random key per endpoint
            self.is_server and (cfg.ticket_key is None or cfg.strike_register is None)
        ):
            self.configuration = dataclasses.replace(
                cfg, token_key=cfg.token_key or os.urandom(32),
                reset_key=cfg.reset_key or os.urandom(32),
                ticket_key=cfg.ticket_key or (os.urandom(32) if self.is_server else None),
                # (not ``or``: a register is falsy while empty, and the one given, a
                # worker group's shared one say, must be the one used)
                strike_register=cfg.strike_register if cfg.strike_register is not None else (
                    StrikeRegister(window=cfg.ticket_age_window) if self.is_server else None),
            )
        self.admission = Admission(self.configuration)
        self._issuer = _weak_issuer(self)

    def secrets(self) -> dict[str, bytes]:
        """This endpoint's keys of SECRET_FIELDS (what a successor adopts)."""
        cfg = self.configuration
        return {name: value for name in SECRET_FIELDS
                if isinstance(value := getattr(cfg, name), bytes)}

    def adopt_secrets(self, secrets: dict[str, bytes]) -> list[str]:
        """Take a predecessor's keys (a same-host takeover) where this endpoint made its
        own: its session tickets, Retry and NEW_TOKEN tokens and stateless reset tokens
        stay good here. Keys the configuration set are kept. Returns the names adopted."""
        adopted = [name for name in self.generated_secrets
                   if isinstance(secrets.get(name), bytes) and len(secrets[name]) >= 16]
        if adopted:
            changes: dict[str, Any] = {name: secrets[name] for name in adopted}
            cfg = self.configuration = dataclasses.replace(self.configuration, **changes)
            self.admission.use_keys(cfg)
            self.generated_secrets = tuple(
                n for n in self.generated_secrets if n not in adopted)
        return adopted

    @property
    def generator(self) -> ConnectionIdSource:
        gen = self.cid_generator
        assert gen is not None  # set in __post_init__
        return gen

    @property
    def cid_length(self) -> int:
        return self.generator.cid_length

    @property
    def connections(self) -> dict[bytes, Connection]:
        """Our CIDs -> connection (read-only view of the registry's map)."""
        return self.registry.ours

    @property
    def all_connections(self) -> KeysView[Connection]:
        """Every connection held, by identity (a live view)."""
        return self.registry.connections()

    # ------------------------------------------------------------------ client

    def connect(self, address: Address, now: float, server_name: str | None = None) -> Connection:
        if self.cid_length == 0 and self.registry.is_held(b""):
            raise ValueError(
                "zero-length connection IDs: a connection needs an endpoint (socket) of its own"
            )
        cfg = self.configuration
        origin = f"{server_name or address[0]}:{address[1]}"
        tickets = cfg.session_ticket_cache
        conn = client_connection(
            cfg, address, now, server_name=server_name, engine=self.engine,
            cid_issuer=self._issuer, wall_offset=self.wall_offset,
            session_ticket=tickets.take(origin) if tickets is not None else None,
        )
        if self.qlog_factory is not None:
            self.qlog_factory(conn, now)
        if cfg.token_cache is not None or tickets is not None:
            self.token_origins[id(conn)] = origin
        if cfg.token_cache is not None:  # a NEW_TOKEN token from an earlier connection
            conn.token = cfg.token_cache.take(origin)
        self._track(conn)
        return conn

    def store_ticket(self, conn: Connection, ticket: SessionTicket) -> None:
        """Keep a session ticket the server sent ``conn`` (SessionTicketReceived) for
        the next connection to the same server (``Configuration.session_ticket_cache``)."""
        cache = self.configuration.session_ticket_cache
        origin = self.token_origins.get(id(conn))
        if cache is not None and origin is not None:
            cache.put(origin, ticket)

    def store_token(self, conn: Connection, token: bytes) -> None:
        """Keep a token the server sent ``conn`` (NewTokenReceived) for the next
        connection to the same server (``Configuration.token_cache``)."""
        cache = self.configuration.token_cache
        origin = self.token_origins.get(id(conn))
        if cache is not None and origin is not None:
            cache.put(origin, token)

    def issue_cid(self) -> tuple[bytes, bytes]:
        """A CID of ours that no connection holds, and its stateless reset token."""
        gen = self.cid_generator
        assert gen is not None  # set in __post_init__
        is_held = self.registry.is_held
        cid = gen.generate()
        for _ in range(CID_ATTEMPTS - 1):
            if not is_held(cid):
                break
            cid = gen.generate()
        # derived from the static key: right after a restart, a takeover, on every host
        key = self.configuration.reset_key
        assert key is not None  # set in __post_init__
        return cid, stateless_reset_token(key, cid)

    # ------------------------------------------------------------------ receive

    def receive(self, data: bytes, address: Address, now: float, ecn: int = 0) -> Connection | None:
        """One plain datagram."""
        self.counters.datagrams_received += 1
        self.counters.segments_received += 1
        self.counters.lookups += 1
        conn = self._lookup(data, address, now, ecn)
        if conn is not None:
            receive_datagram(conn, data, address, now, ecn, self._header)
            # (the calls' own first tests inline: most datagrams need neither)
            if not conn.counters.packets_received and not self._keep_new(conn):
                return None
            if self.admission.half_open:
                self.admission.update(conn)
            if conn.cid_changes:
                self._sync_cids(conn)
        return conn

    def _keep_new(self, conn: Connection) -> bool:
        """A connection created for an Initial none of whose packets could be opened is
        forgotten at once (a forged or corrupted Initial must not hold server state)."""
        if conn.counters.packets_received or conn not in self.accepted:
            return True
        del self.accepted[conn]
        qlog.stop(conn, keep=False)
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
        if len(datagrams) == 1:  # (a round of one, the usual ACK from a client of many)
            data, address, ecn = datagrams[0]
            conn = self.receive(data, address, now, ecn)
            return [] if conn is None else [conn]
        touched: dict[Connection, None] = {}  # by identity, in order
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
                self._diverted = None
                forwarded = len(self.forwarded)
                conn = self._lookup(data, address, now, ecn)
                if self._diverted is not None:
                    # the run's first was set aside for a handoff: so is the rest of it
                    for other, other_address, other_ecn in datagrams[i + 1 : j]:
                        self._divert(self._diverted, other, other_address, other_ecn)
                elif conn is None and len(self.forwarded) > forwarded:
                    target = self.forwarded[-1][2]  # the rest of the run goes along
                    for k in range(i + 1, j):
                        counters.forwarded_moved += 1
                        self.forwarded.append((datagrams[k][0], address, target))
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
            if conn is not None:
                touched[conn] = None
            i = j
        return list(touched)

    def receive_batch(
        self, data: bytes | memoryview, segment_size: int, address: Address, now: float,
        ecn: int = 0,
    ) -> list[Connection]:
        """A GRO batch: segments of ``segment_size`` (the last may be shorter) from one
        address. A run of short-header segments with the same DCID costs one lookup and
        one engine call; long-header segments take the per-datagram path."""
        return self.receive_batches(((data, segment_size),), address, now, ecn)

    def receive_batches(
        self, buffers: Sequence[tuple[bytes | memoryview, int]], address: Address,
        now: float, ecn: int = 0,
    ) -> list[Connection]:
        """GRO batches ``(data, segment_size)`` read back to back from one address with
        the same ECN bits, taken as ``receive_batch`` takes each, except that a run of
        one connection's short-header segments goes on from one buffer into the next:
        the kernel hands a flight over in buffers of at most 64 KiB, and a receive round
        of a download holds several (3-4 at 256 connections, 8 at one). The run costs
        one lookup, and its bookkeeping is done once (``receive_short_runs``)."""
        counters = self.counters
        touched: dict[Connection, None] = {}  # by identity, in order
        cid_len = self.cid_length
        parts: list[RunPart] = []  # the run's part in earlier buffers
        run: list[tuple[int, int, bytes]] = []  # ... and in this one
        run_conn: Connection | None = None
        run_key = b""
        for data, segment_size in buffers:
            counters.datagrams_received += 1
            total = len(data)
            if segment_size <= 0:
                segment_size = total
            pos = 0
            whole = short_run(data, 0, segment_size, run_key) if parts else None
            if whole is not None:
                # the run goes on through this whole buffer (the usual next buffer)
                counters.segments_received += len(whole)
                parts.append((data, whole))
                continue
            while pos < total:
                end = min(pos + segment_size, total)
                counters.segments_received += 1
                short = not data[pos] & 0x80
                key = b""
                if short:
                    key = bytes(data[pos + 1 : pos + 1 + cid_len])
                    if (run or parts) and key == run_key:
                        run.append((pos, end - pos, key))
                        pos = end
                        continue
                # the run so far (if any) ends here
                if run_conn is not None and (run or parts):
                    if run:
                        parts.append((data, run))
                    receive_short_runs(run_conn, parts, address, now, ecn)
                run = []
                parts = []
                if short:
                    counters.lookups += 1
                    run_conn = self._lookup(bytes(data[pos:end]), address, now, ecn)
                    run_key = key
                    if run_conn is not None:
                        touched[run_conn] = None
                        whole = (short_run(data, pos, segment_size, key)
                                 if end < total else None)
                        if whole is not None:
                            # every segment to the end continues this run (the usual GRO
                            # batch): all of them at once, as the loop would add them
                            parts.append((data, whole))
                            counters.segments_received += len(whole) - 1
                            break
                        run.append((pos, end - pos, key))
                else:
                    run_conn = None
                    segment = bytes(data[pos:end])
                    counters.lookups += 1
                    conn = self._lookup(segment, address, now, ecn)
                    if conn is not None:
                        receive_datagram(conn, segment, address, now, ecn, self._header)
                        if self.admission.half_open:
                            self.admission.update(conn)
                        if self._keep_new(conn):
                            touched[conn] = None
                pos = end
            if run:  # the run may go on in the next buffer
                parts.append((data, run))
                run = []
        if parts and run_conn is not None:
            receive_short_runs(run_conn, parts, address, now, ecn)
        for c in touched:
            self._sync_cids(c)
        return list(touched)

    def _divert(self, into: list[tuple[bytes, Address, int]], data: bytes, address: Address,
                ecn: int) -> None:
        self._diverted = into
        if len(into) >= MAX_DIVERTED:  # bounded: QUIC sends what was in them again
            self.counters.dropped_moved += 1
            return
        into.append((data, address, ecn))
        self.counters.handoff_diverted += 1

    def _lookup(self, data: bytes, address: Address, now: float, ecn: int = 0
                ) -> Connection | None:
        self._header = None
        if not data:
            self.counters.dropped_malformed += 1
            return None
        first = data[0]
        registry = self.registry
        gen = self.cid_generator
        assert gen is not None  # set in __post_init__
        if not first & 0x80:
            cid = bytes(data[1 : 1 + gen.cid_length])
            if not gen.is_ours(cid):
                self.counters.dropped_not_ours += 1
                return None
            conn = registry.by_cid(cid)
            if conn is None:
                if self.retired and self.retired.holds(cid, now):
                    self.counters.dropped_retired_cid += 1  # overtaken by its retirement
                    return None
                gone = bool(self.moved) and self.moved.holds(cid, now)
                target = self.moved.target(cid, now) if gone else None
                if target is not None:  # moved per connection: forward it there
                    self.counters.forwarded_moved += 1
                    self.forwarded.append((bytes(data), address, target))
                    return None
                if self.forwarding is not None:
                    # handing over: a CID of a connection handed over already, or one
                    # the successor issued for it since: the successor's business
                    self._divert(self.forwarding, data, address, ecn)
                    return None
                if gone:
                    self.counters.dropped_moved += 1  # it went elsewhere: no reset
                    return None
                self.counters.dropped_unknown_cid += 1
                if self.is_server:
                    reset = self.admission.reset_for(data, self.cid_length, now)
                    if reset is not None:
                        self.stateless.append((reset, address))
                else:
                    return match_reset(self.all_connections, data, address)
            elif conn.terminated:
                self.counters.dropped_closed += 1
                return None
            elif conn.state == DRAINING:
                self.counters.dropped_draining += 1
                return None
            elif self.frozen:
                held = self.frozen.get(id(conn))
                if held is not None:
                    self._divert(held, data, address, ecn)
                    return None
            return conn
        try:
            hdr = parse_header(data, 0, gen.cid_length)
        except WireError:
            self.counters.dropped_malformed += 1
            return None
        self._header = hdr
        dcid = hdr.dcid
        conn = registry.by_cid(dcid) if gen.is_ours(dcid) else None
        if conn is None and self.is_server:
            conn = registry.by_initial(dcid)
            if conn is not None and conn.peer_address != address:
                # a client-chosen DCID another client holds: refuse, never share
                self.counters.dropped_initial_collision += 1
                return None
        if conn is not None:
            if conn.terminated:
                self.counters.dropped_closed += 1
                return None
            if conn.state == DRAINING:
                self.counters.dropped_draining += 1
                return None
            return conn
        if not self.is_server:
            self.counters.dropped_unknown_cid += 1
            return None
        if hdr.version not in self.configuration.versions:
            if hdr.version != 0 and len(data) >= MIN_INITIAL_DATAGRAM:
                vn = build_version_negotiation(hdr.scid, hdr.dcid, self.configuration.versions)
                self.stateless.append((vn, address))
                self.counters.version_negotiations_sent += 1
            else:
                self.counters.dropped_malformed += 1
            return None
        if hdr.packet_type != INITIAL:
            self.counters.dropped_unknown_cid += 1
            return None
        if len(data) < MIN_INITIAL_DATAGRAM:
            self.counters.dropped_short_initial += 1
            return None
        if len(hdr.dcid) < 8:
            self.counters.dropped_malformed += 1
            return None
        if not self.accepting:
            self.counters.dropped_not_accepting += 1
            return None
        admit = self.admission.admit(
            hdr, address, now + self.wall_offset, self.new_server_cid, self.stateless
        )
        if admit is None:
            return None
        conn = server_connection(
            self.configuration, address, admit.original_dcid, now, engine=self.engine,
            client_scid=hdr.scid, retry_scid=admit.retry_scid, address_validated=admit.validated,
            version=hdr.version, cid_issuer=self._issuer,
        )
        if self.qlog_factory is not None:
            self.qlog_factory(conn, now)
        conn.wall_offset = self.wall_offset
        # the NEW_TOKEN token is sealed when it is first sent (_mint_token): a client
        # that closes with its Finished never gets one, and none is made for it
        conn.new_token_pending = self.admission.issues_new_tokens()
        self.admission.track(conn)
        registry.add_initial(dcid, conn)
        self._track(conn)
        self.accepted[conn] = None
        self.counters.connections_accepted += 1
        return conn

    def receive_forwarded(
        self, data: bytes, address: Address, now: float, allowed: Container[bytes] | None = None
    ) -> Connection | None:
        """A short-header datagram that another host received from ``address`` for a
        connection moved here (over an authenticated channel): delivered by CID, whether
        or not the CID carries our server ID (the client used the old host's CIDs).
        ``allowed``: the CIDs that sender may forward for (those of the connections it
        moved here); others are dropped."""
        counters = self.counters
        counters.forwarded_received += 1
        if not data or data[0] & 0x80:
            counters.dropped_malformed += 1
            return None
        counters.lookups += 1
        cid = bytes(data[1 : 1 + self.cid_length])
        conn = self.registry.by_cid(cid) if allowed is None or cid in allowed else None
        if conn is None or conn.terminated:
            counters.dropped_unknown_cid += 1
            return None
        receive_datagram(conn, data, address, now, 0)
        self._sync_cids(conn)
        return conn

    def pop_forwarded(self) -> list[tuple[bytes, Address, ForwardTarget]]:
        out, self.forwarded = self.forwarded, []
        return out

    # ------------------------------------------------------------------ send

    def datagrams_to_send(self, conn: Connection, now: float) -> list[bytes]:
        if conn.new_token_pending and not conn.new_token:
            self._mint_token(conn, now)
        out = datagrams_to_send(conn, now)
        self._sync_cids(conn)
        return out

    def build_datagrams(self, conn: Connection, now: float,
                        max_datagrams: int = MAX_DATAGRAMS_PER_CALL
                        ) -> tuple[bytearray, list[int]]:
        """Up to ``max_datagrams`` datagrams in one buffer with their end offsets (see
        transport.send)."""
        if conn.new_token_pending and not conn.new_token and conn.handshake_confirmed:
            self._mint_token(conn, now)
        out = build_datagrams(conn, now, max_datagrams)
        if conn.cid_changes:
            self._sync_cids(conn)
        return out

    def _mint_token(self, conn: Connection, now: float) -> None:
        """Seal ``conn``'s NEW_TOKEN token once it can be sent (handshake confirmed, still
        established), for the address the client has then."""
        if conn.handshake_confirmed and conn.state == ESTABLISHED:
            token = self.admission.new_token(conn.peer_address, now + self.wall_offset)
            conn.new_token = token
            conn.new_token_pending = bool(token)

    def pop_stateless(self) -> list[tuple[bytes, Address]]:
        out, self.stateless = self.stateless, []
        return out

    # ------------------------------------------------------------------ bookkeeping

    def adopt(self, conn: Connection) -> None:
        """Take over a connection restored from a snapshot (transport/snapshot.py).

        Its CIDs are registered (short-header packets reach it only if they carry our
        server ID: restore it where its CIDs route) and new ones come from our generator.
        """
        conn.cid_issuer = self._issuer
        for cid in conn.host_cid_list():
            conn.cid_changes.append((True, cid))
        self._track(conn)

    def _track(self, conn: Connection) -> None:
        self.registry.add(conn)
        self._sync_cids(conn)

    def _sync_cids(self, conn: Connection) -> None:
        if not conn.cid_changes:
            return
        if conn.terminated:  # forget drops every key it owns: no removal one by one
            self.forget(conn)
            return
        registry = self.registry
        for added, cid in conn.cid_changes:
            if added:
                if not registry.add_cid(cid, conn):
                    self.counters.cid_collisions += 1
            else:
                registry.remove_cid(cid, conn)
                if self.is_server:
                    self.retired.record(cid, conn._now_hint, conn.pto())
        conn.cid_changes.clear()

    def forget(self, conn: Connection) -> None:
        """Remove a connection and exactly its own CIDs (O(its CIDs), see registry.py).
        A handed-off connection's CIDs are remembered for a while (``moved``)."""
        if conn.released:
            self.moved.record((e.cid for e in conn.host_cids), conn._now_hint,
                              conn.idle_timeout)
        self.admission.half_open.pop(id(conn), None)  # (Admission.forget, inline)
        if self.accepted:
            self.accepted.pop(conn, None)  # (not taken yet by the I/O layer)
        if conn.qlog is not None:
            qlog.stop(conn)
        if self.token_origins:  # (a client's)
            self.token_origins.pop(id(conn), None)
        conn.cid_changes.clear()  # (its CIDs are dropped below, whatever they were)
        dropped = self.registry.forget(conn)
        if dropped and self.is_server and conn.counters.packets_received and not (
            conn.handshake_complete
        ):
            self.counters.handshakes_failed += 1
        if self.is_server:
            # a handshake that never completed still holds its TLS session, whose hooks
            # refer back to the connection: that cycle would keep the whole connection
            # (~100 objects) until a full collection; without it, refcounting frees it
            conn.tls = None

    def new_server_cid(self) -> bytes:
        """A fresh CID of ours that no connection holds (e.g. a Retry's SCID)."""
        return self.issue_cid()[0]

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "datagrams_received": c.datagrams_received,
            "segments_received": c.segments_received,
            "lookups": c.lookups,
            "connections_accepted": c.connections_accepted,
            "dropped": c.dropped(),
            "dropped_not_ours": c.dropped_not_ours,
            "dropped_moved": c.dropped_moved,
            "dropped_retired_cid": c.dropped_retired_cid,
            "handoff_diverted": c.handoff_diverted,
            "forwarded_moved": c.forwarded_moved,
            "forwarded_received": c.forwarded_received,
            "cid_collisions": c.cid_collisions,
            "handshakes_failed": c.handshakes_failed,
            "connections": len(self.registry),
            "half_open": len(self.admission.half_open),
            **dataclasses.asdict(self.admission.counters),
        }


def _weak_issuer(endpoint: Endpoint) -> CidIssuer:
    """``endpoint.issue_cid`` through a weak reference. The bound method itself, stored on
    the endpoint, would make the endpoint a reference cycle (with its registry, admission
    and configuration) that only a full collection frees: every ended ``connect()``
    client, whose endpoint is its own, would wait for one."""
    ref = weakref.ref(endpoint)

    def issue() -> tuple[bytes, bytes]:
        owner = ref()
        if owner is None:
            raise RuntimeError("the endpoint that issued this connection's CIDs is gone")
        return owner.issue_cid()

    return issue
