"""The sans-I/O QUIC connection: state, public API, timers and closing.

Receiving lives in ``receive.py``, packet building in ``send.py``, the stream API in
``stream_api.py`` (bound here as methods); all are plain functions over a
:class:`Connection`, whose fields are plain data (see ``snapshot.py``). The fields marked
*runtime* (TLS session, packet protectors, offload engine) are rebuilt on restore.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cryptography import x509

from ..crypto.epoch import Epoch
from ..crypto.keys import PacketProtector
from ..crypto.offload import OffloadEngine, SoftwareOffloadEngine
from ..crypto.suites import CipherSuite
from ..tls.session import TlsSession
from ..wire.tparams import TransportParameters
from . import pathprobe, startup, stream_api
from .ack_frequency import AckFrequency, peer_max_ack_delay
from .closing import closing_timer, draining_deadline, on_closing_timer, start_closing
from .config import Configuration
from .congestion import CongestionControl, Pacer
from .errors import (
    PROTOCOL_VIOLATION,
    QuicError,
)
from .events import ConnectionTerminated, Event
from .path import Path, PathProbe, apply_path, set_pacing
from .pmtud import Pmtud
from .qlog import QlogTrace
from .recovery import LossDetection
from .rtt import RttEstimator
from .startup import SPACE_OF_EPOCH as SPACE_OF_EPOCH
from .startup import new_recovery as new_recovery
from .startup import new_spaces
from .state import (
    CLOSED,
    CLOSING,
    DRAINING,
    ECN_FAILED,
    HANDSHAKE,
    FlowControl,
    LocalCid,
    PacketSpace,
    PeerCid,
    StreamLimits,
    new_local_cid,
)
from .stream_api import StreamLimitReached as StreamLimitReached
from .streams import Stream

Address = tuple[Any, ...]

_NONE4: tuple[None, ...] = (None,) * 4
#: (a global: an enum class attribute costs about four times more)
_HANDSHAKE = Epoch.HANDSHAKE

#: Issues one of our connection IDs with its stateless reset token (an endpoint's
#: generator; see ``quicflow.endpoint.cids``).
CidIssuer = Callable[[], tuple[bytes, bytes]]


def new_reset_token(cid: bytes) -> bytes:
    """The stateless reset token for one of our CIDs: the one place tokens are made."""
    return os.urandom(16)


_seal_keys = itertools.count(1)


def new_seal_key() -> bytes:
    """A key for a connection's sealer entry in an offload engine: unique in the process
    (engines never leave it), local, and unrelated to any connection ID."""
    return next(_seal_keys).to_bytes(8, "big")


def random_cid_issuer(length: int) -> CidIssuer:
    """Random CIDs of ``length`` bytes (a connection without an endpoint)."""

    def issue() -> tuple[bytes, bytes]:
        cid = os.urandom(length)
        return cid, new_reset_token(cid)

    return issue


@dataclass(slots=True)
class ConnectionCounters:
    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    datagrams_sent: int = 0
    datagrams_received: int = 0
    packets_lost: int = 0
    packets_dropped: int = 0  # all drops; by reason below
    dropped_malformed: int = 0
    dropped_no_keys: int = 0
    dropped_undecryptable: int = 0
    dropped_other_dcid: int = 0  # coalesced after a packet with another DCID (RFC 9000 §12.2)
    dropped_other_scid: int = 0  # (client) long headers from another server's SCID (§7.2)
    dropped_short_initial: int = 0  # (server) Initials in datagrams under 1200 bytes (§14.1)
    dropped_unknown_address: int = 0  # (client) from no server address it knows (§9)
    dropped_bad_retry: int = 0
    duplicate_packets: int = 0
    engine_open_failures: int = 0
    dropped_reassembly_full: int = 0  # out-of-order data over the budget: not acked
    one_rtt_before_handshake: int = 0  # server: 1-RTT packets held or dropped, not acked
    datagram_frames_sent: int = 0  # DATAGRAM frames (RFC 9221)
    datagram_frames_received: int = 0
    datagram_frames_dropped: int = 0  # send queue full: the oldest was dropped
    close_resends: int = 0  # CONNECTION_CLOSE sent again on the closing timer
    close_resends_skipped: int = 0  # copies not sent: the peer had unacknowledged packets
    migrations: int = 0  # (client) moves to a new path validated by PATH_RESPONSE
    migrations_failed: int = 0  # (client) probes of a new path that got no answer
    path_probes_sent: int = 0  # (client) PATH_CHALLENGE datagrams sent on a probed path
    zero_rtt_sent: int = 0  # (client) 0-RTT packets sent
    zero_rtt_received: int = 0  # (server) 0-RTT packets opened and processed
    ack_frames_sent: int = 0  # ACK frames, all packet number spaces
    ack_frames_received: int = 0
    ack_frequency_sent: int = 0  # ACK_FREQUENCY frames (draft-ietf-quic-ack-frequency)
    ack_frequency_received: int = 0  # (the newest applied or not)
    immediate_acks_received: int = 0  # IMMEDIATE_ACK frames
    data_blocked_received: int = 0  # DATA_BLOCKED frames
    data_blocked_grew: int = 0  # of them, those that doubled the connection window
    key_updates_started: int = 0  # 1-RTT key updates we started (asked for, or the AEAD limit)


@dataclass(slots=True, eq=False)  # an entity: compared by identity
class Connection:
    """One QUIC connection, either role. Create with :func:`client_connection` or
    :func:`server_connection`."""

    configuration: Configuration
    is_client: bool
    now_created: float
    original_dcid: bytes
    peer_address: Address
    local_cid_length: int
    # connection IDs
    host_cids: list[LocalCid] = field(default_factory=list)
    next_host_cid_seq: int = 0
    peer_cids: list[PeerCid] = field(default_factory=list)
    peer_cid: bytes = b""
    peer_cid_seq: int = 0
    retire_pending: list[int] = field(default_factory=list)
    #: the largest Retire Prior To of the peer's NEW_CONNECTION_ID frames: a CID it sends
    #: later with a sequence below it is retired at once (RFC 9000 §19.15)
    peer_retire_prior_to: int = 0
    #: the Retire Prior To of our NEW_CONNECTION_ID frames: our CIDs below this sequence
    #: are retired by the peer and not replaced (see ``hand_over_cids``)
    host_retire_prior_to: int = 0
    #: (server) the handshake is complete: our CIDs up to the peer's
    #: active_connection_id_limit are issued when the next 1-RTT packet with room for them
    #: is built (send.py), so a connection closed at once (its client's close came with
    #: the Finished) never makes them
    host_cids_pending: bool = False
    #: (server) confirmed, but no 1-RTT packet from the client yet: the next one (its
    #: request, or its ACK of HANDSHAKE_DONE) sets ``host_cids_pending``, unless it
    #: closes the connection (receive.py)
    host_cids_deferred: bool = False
    cid_changes: list[tuple[bool, bytes]] = field(default_factory=list)  # (added, cid)
    initial_scid: bytes = b""  # our first SCID
    peer_initial_scid: bytes | None = None
    retry_scid: bytes | None = None
    token: bytes = b""
    version: int = 1  # QUIC version in use (QUIC_V1 or QUIC_V2)
    version_restarted: bool = False  # (client) restarted after Version Negotiation
    new_token: bytes = b""  # (server) the NEW_TOKEN token (sealed by the endpoint when due)
    new_token_pending: bool = False
    datagrams_pending: list[bytes] = field(default_factory=list)  # DATAGRAM frames to send
    # resumption and 0-RTT (early_data.py); wall_offset: add to ``now`` for Unix time
    wall_offset: float = 0.0
    session_resumed: bool = False
    early_data_attempted: bool = False  # (client) sent 0-RTT; (server) the client offered it
    early_data_accepted: bool = False
    remembered_params: TransportParameters | None = None  # (client) limits for 0-RTT
    version_switched: bool = False  # (server) compatible version negotiation moved us
    # state
    state: int = HANDSHAKE
    handshake_complete: bool = False
    handshake_confirmed: bool = False
    handshake_done_pending: bool = False
    #: (server) HANDSHAKE_DONE not yet acknowledged: the client may not have confirmed
    #: the handshake, and a key update it saw first could end the connection (quinn:
    #: KEY_UPDATE_ERROR), so none starts before (``key_phase_acked``)
    handshake_done_unacked: bool = False
    address_validated: bool = False
    bytes_received_unvalidated: int = 0
    bytes_sent_unvalidated: int = 0
    spaces: list[PacketSpace] = field(default_factory=new_spaces)
    alpn_protocol: str | None = None
    peer_certificate_ders: list[bytes] = field(default_factory=list)  # peer's chain, DER
    peer_params: TransportParameters | None = None
    # keys (secrets are kept for snapshot; 1-RTT keys live in the offload engine)
    cipher_suite: CipherSuite = CipherSuite.AES_128_GCM_SHA256
    one_rtt_send_secret: bytes = b""
    one_rtt_recv_secret: bytes = b""
    # key phases are not kept here: the offload engine's table entry of each direction is
    # their one source of truth (see send_key_phase / recv_key_phase)
    one_rtt_ready: bool = False
    # streams and flow control
    streams: dict[int, Stream] = field(default_factory=dict)
    send_queue: list[int] = field(default_factory=list)  # stream ids with data to send
    flow: FlowControl = field(default_factory=FlowControl)
    bidi: StreamLimits = field(default_factory=StreamLimits)
    uni: StreamLimits = field(default_factory=StreamLimits)
    pending_stream_updates: list[int] = field(default_factory=list)  # MAX_STREAM_DATA
    send_buffered: int = 0  # bytes the application wrote, not yet acknowledged or reset
    # recovery
    pacer: Pacer = field(default_factory=Pacer)
    loss: LossDetection = field(default_factory=LossDetection)
    probes_pending: list[int] = field(default_factory=partial(list, (0, 0, 0)))
    #: draft-ietf-quic-ack-frequency state, both roles (ack_frequency.py)
    ack_freq: AckFrequency = field(default_factory=AckFrequency)
    max_datagram_size: int = 1200
    path_mtu_cap: int = 65527  # largest UDP payload the path was seen to carry
    pmtud: Pmtud = field(default_factory=Pmtud)  # path MTU discovery (pmtud.py)
    # paths
    path_challenges_received: list[bytes] = field(default_factory=list)  # to answer
    path_challenge: bytes = b""  # sent on the current path, not yet answered
    path_challenge_pending: bool = False  # to be sent (again)
    path_changes: int = 0
    previous_path: Path | None = None  # while a new peer address is being validated
    #: (server) when validating the peer's new address is given up and the connection
    #: goes back to ``previous_path`` (RFC 9000 §8.2.4, §9.3.2); None: no validation runs
    path_validation_deadline: float | None = None
    probe: PathProbe | None = None  # (client) a new path being validated (pathprobe.py)
    # challenges that came from another address in probing-only packets, answered there:
    # (data, address, byte budget)
    off_path_challenges: list[tuple[bytes, Address, int]] = field(default_factory=list)
    last_packet_probing: bool = False  # the last packet processed had only probing frames
    last_non_probing_pn: int = -1  # newest 1-RTT packet with a non-probing frame
    preferred_pending: bool = False  # (client) the server's preferred address is untried
    # timers
    idle_timeout: float = 30.0
    idle_deadline: float = 0.0
    close_deadline: float | None = None
    last_ack_eliciting_sent_after_receive: bool = False
    # closing
    close_error: tuple[int, int | None, str, bool] | None = None  # (code, frame_type, reason, app)
    close_pending: bool = False
    close_started: float = 0.0  # closing state: see closing.py
    close_answered_at: float = 0.0  # when a copy of the close was last made due
    close_resend_at: float | None = None
    close_resends: int = 0
    close_packets_seen: int = 0
    #: the closing datagram as last built, sent again as it is while the packets it needs
    #: stay the same (``close_shape``, see close_send.py; RFC 9000 §10.2.1 allows the repeat)
    close_datagram: bytes = b""
    close_shape: int = -1
    terminated: bool = False
    events: list[Event] = field(default_factory=list)
    counters: ConnectionCounters = field(default_factory=ConnectionCounters)
    ecn_state: int = 0  # ECN_TESTING / ECN_CAPABLE / ECN_FAILED
    # (key_update_pending is a property: the two directions' phases differ in the engine)
    key_update_requested: bool = False  # asked for, waiting for key_update_allowed_at
    key_update_allowed_at: float = 0.0  # 3 PTO after the previous update (RFC 9001 §6.5)
    # first 1-RTT pn sent with the current send keys; -1: the handshake's keys (no update
    # yet). A new update waits for an ACK of a pn >= it (RFC 9001 §6.1).
    key_phase_first_pn: int = -1
    key_update_ping: bool = False  # a waiting update asks for that ACK with a PING
    # the next 1-RTT pn at which a build looks at the AEAD limits (aead_limits.py; 0:
    # the next build does)
    key_limit_pn: int = 0
    # (confidentiality, integrity) limits in packets; None: the suite's (RFC 9001 §6.6)
    aead_limits: tuple[int, int] | None = None
    key_updates_received: int = 0
    # migration: a random id given at the first capture, and how many captures so far;
    # a capture releases the connection (``released``): it never sends again here
    capture_id: bytes = b""
    capture_serial: int = 0
    released: bool = False
    one_rtt_send_hp: bytes = b""
    one_rtt_recv_hp: bytes = b""
    pacer_deadline: float | None = None
    # server: 1-RTT datagrams that came before the handshake completed, processed once
    # it has (RFC 9001 §5.7), at most MAX_EARLY_ONE_RTT of them: (packet, address, ecn)
    early_one_rtt: list[tuple[bytes, Address, int, float]] = field(default_factory=list)
    _now_hint: float = 0.0
    # runtime objects (not snapshotted)
    # The key of our 1-RTT sealer in the offload engine: local and unique (chosen by the
    # endpoint), never the peer's CID, which a peer picks and another peer can copy.
    seal_key: bytes = b""
    cid_issuer: CidIssuer | None = None  # where our CIDs come from (the endpoint)
    tls: TlsSession | None = None
    # (list factories as partials: no Python frame per connection)
    send_protectors: list[PacketProtector | None] = field(default_factory=partial(list, _NONE4))
    recv_protectors: list[PacketProtector | None] = field(default_factory=partial(list, _NONE4))
    engine: OffloadEngine = field(default_factory=SoftwareOffloadEngine)
    qlog: QlogTrace | None = None  # qlog events go here when set (qlog.py)

    # ------------------------------------------------------------------ setup
    # (in startup.py; bound here like the stream API below)

    local_params = startup.local_transport_parameters
    _local_transport_parameters = startup.local_transport_parameters
    _tls_config = startup.tls_config
    _setup = startup.setup
    _install_initial_keys = startup.install_initial_keys
    switch_version = startup.switch_version
    restart_in_version = startup.restart_in_version
    _negotiate_version = startup.negotiate_version

    # ------------------------------------------------------------------ CIDs

    def issue_host_cid(self) -> LocalCid:
        if self.cid_issuer is None:
            self.cid_issuer = random_cid_issuer(self.local_cid_length)
        cid, token = self.cid_issuer()
        # (sequence, cid, reset_token) by position: keywords cost twice as much
        entry = new_local_cid(self.next_host_cid_seq, cid, token)
        self.next_host_cid_seq += 1
        self.host_cids.append(entry)
        self.cid_changes.append((True, entry.cid))
        if self.one_rtt_ready:
            self.engine.alias(entry.cid, self.host_cids[0].cid, opener=True)
        return entry

    def hand_over_cids(self, cids: list[tuple[bytes, bytes]]) -> int:
        """Give the peer ``cids`` (``(cid, stateless reset token)`` pairs, e.g. CIDs that
        route to another host) in place of every CID issued so far: they are announced
        in NEW_CONNECTION_ID frames whose Retire Prior To retires all the older ones
        (RFC 9000 §5.1.2), and the older ones are not replaced when the peer retires
        them. Returns that Retire Prior To (the first new sequence number). At most the
        peer's ``active_connection_id_limit`` CIDs may be given (RFC 9000 §5.1.1)."""
        limit = self.peer_params.active_connection_id_limit if self.peer_params else 2
        if not cids:
            raise ValueError("hand_over_cids needs at least one CID")
        if len(cids) > limit:
            raise ValueError(f"the peer accepts {limit} connection IDs, not {len(cids)}")
        if any(len(cid) != self.local_cid_length or len(token) != 16 for cid, token in cids):
            raise ValueError("a handed-over CID has the wrong length or a bad reset token")
        first = self.next_host_cid_seq
        for cid, token in cids:
            entry = LocalCid(sequence=self.next_host_cid_seq, cid=bytes(cid),
                             reset_token=bytes(token))
            self.next_host_cid_seq += 1
            self.host_cids.append(entry)
            self.cid_changes.append((True, entry.cid))
            if self.one_rtt_ready:
                self.engine.alias(entry.cid, self.recv_key_cid(), opener=True)
        self.host_retire_prior_to = first
        self.host_cids_pending = self.host_cids_deferred = False  # these replace the
        # ones not issued yet
        return first

    def host_cid_list(self) -> list[bytes]:
        return [c.cid for c in self.host_cids if not c.retired]

    # ------------------------------------------------------------------ streams API
    # (in stream_api.py; bound here so ``conn.open_stream(...)`` etc. keep working)

    open_stream = stream_api.open_stream
    send_stream_data = stream_api.send_stream_data
    send_datagram = stream_api.send_datagram
    take_back_unsent = stream_api.take_back_unsent
    stream_buffered = stream_api.stream_buffered
    read_stream = stream_api.read_stream
    stream_at_eof = stream_api.stream_at_eof
    stream_waits = stream_api.stream_waits
    stream_complete = stream_api.stream_complete
    read_owes_credit = stream_api.read_owes_credit
    reset_stream = stream_api.reset_stream
    stop_sending = stream_api.stop_sending
    stream_ids = stream_api.stream_ids
    notify_writable = stream_api.notify_writable
    check_stream_direction = stream_api.check_stream_direction
    get_or_create_peer_stream = stream_api.get_or_create_peer_stream

    def initiate_key_update(self) -> None:
        """Start a 1-RTT key update (RFC 9001 §6): send with the next keys from now on.

        An update asked for while the previous one is not yet answered by the peer,
        before the peer acknowledged a packet we sent with the current keys (RFC 9001
        §6.1; a PING asks for that ACK), or less than three PTOs after that ACK (§6.5:
        the peer may not have the next keys yet), waits and starts by itself as soon as
        it may (see :meth:`timer`). Raises ValueError before the handshake is confirmed.
        """
        if not (self.handshake_confirmed and self.one_rtt_ready):
            raise ValueError("a key update needs a confirmed handshake")
        self.key_update_requested = True
        if not self.key_phase_acked():
            self.key_update_ping = True
        self._start_key_update_if_allowed(self._now_hint)

    def key_phase_acked(self) -> bool:
        """The peer acknowledged a packet we sent with the current keys (or there was
        no update yet): a new update may start (RFC 9001 §6.1). A server also waits
        for the acknowledgment of its HANDSHAKE_DONE (the client confirmed)."""
        return (self.spaces[2].largest_acked >= self.key_phase_first_pn
                and not self.handshake_done_unacked)

    def _start_key_update_if_allowed(self, now: float) -> None:
        from ..crypto.keys import next_generation_secret

        if self.key_update_pending or now < self.key_update_allowed_at:
            return
        if self.state >= CLOSING or not self.one_rtt_ready or not self.key_phase_acked():
            return
        self.key_update_requested = False
        self.key_phase_first_pn = self.spaces[2].next_pn
        self.counters.key_updates_started += 1
        # the engine's sealer moves to the next phase (the phase's one source of truth)
        self.one_rtt_send_secret = next_generation_secret(
            self.cipher_suite, self.one_rtt_send_secret, self.version
        )
        self.engine.update(self.seal_key, opener=False)
        if self.qlog is not None:
            from .qlog import key_updated

            key_updated(self, now, Epoch.ONE_RTT, True, "local_update",
                        key_phase=self.send_key_phase)

    def recv_key_cid(self) -> bytes:
        """The CID under which the engine holds our 1-RTT receive keys (any CID of ours
        in use: aliases share one table entry)."""
        for entry in self.host_cids:
            if not entry.retired:
                return entry.cid
        raise LookupError("connection has no CID in use")

    @property
    def send_key_phase(self) -> int:
        """The key phase we send with (read from the offload engine's table)."""
        if not self.one_rtt_ready:
            return 0
        return int(self.engine.key_state(self.seal_key, opener=False).key_phase)

    @property
    def recv_key_phase(self) -> int:
        """The key phase of the peer's packets we open (from the engine's table)."""
        if not self.one_rtt_ready:
            return 0
        return int(self.engine.key_state(self.recv_key_cid(), opener=True).key_phase)

    @property
    def key_phase(self) -> int:
        """The current send key phase (``send_key_phase``)."""
        return self.send_key_phase

    @property
    def key_update_pending(self) -> bool:
        """We started a key update that the peer has not answered yet: the two
        directions are in different phases (RFC 9001 §6)."""
        return self.one_rtt_ready and self.send_key_phase != self.recv_key_phase

    def lower_max_datagram_size(self, size: int) -> None:
        """A smaller path MTU was learned: send UDP payloads of at most ``size`` bytes
        from now on (never below 1200; never raises the current size)."""
        from .pmtud import on_path_mtu_cap

        self.path_mtu_cap = min(self.path_mtu_cap, max(1200, size))
        new = max(1200, min(self.max_datagram_size, size))
        if new < self.max_datagram_size:
            self.max_datagram_size = new
            self.cc.max_datagram_size = new
            self.pacer.max_datagram_size = new
        on_path_mtu_cap(self, self._now_hint)

    def on_peer_address(self, addr: Address) -> None:
        """A packet newer than any before came from ``addr`` (RFC 9000 §9.3).

        A server follows a client whose address changed (NAT rebinding, migration): it
        sends there from now on, validates the new path with PATH_CHALLENGE, and until
        the PATH_RESPONSE arrives sends at most 3x what it received on it. A new host
        (not just a new port) also restarts congestion control and RTT estimation.
        """
        if self.is_client or addr == self.peer_address or not self.handshake_confirmed:
            return
        previous = self.previous_path
        if previous is not None and tuple(addr) == previous.peer_address:
            # back on the last validated path (the peer's newest packet came from there
            # again: the move was a copy an attacker sent from elsewhere, RFC 9000 §9.3.3,
            # or a rebinding undone): no validation to run
            self.revert_path()
            return
        new_host = addr[0] != self.peer_address[0]
        if self.address_validated and previous is None:
            # RFC 9000 §9.3.3: the path it came from is challenged too (probe_datagrams
            # sends it), so that a peer still there answers with a newer packet from it
            self.previous_path = Path(
                peer_address=tuple(self.peer_address), validated=True,
                challenge=os.urandom(8), challenge_pending=True,
                max_datagram_size=self.max_datagram_size, mtu_cap=self.path_mtu_cap,
                ecn_state=self.ecn_state,
            )
        self.path_validation_deadline = self._now_hint + 3 * max(
            self.pto(), RttEstimator().pto_duration(self.loss.max_ack_delay, True))
        self.peer_address = addr
        set_pacing(self)
        self.path_changes += 1
        self.address_validated = False
        self.bytes_received_unvalidated = 0
        self.bytes_sent_unvalidated = 0
        self.path_challenge = os.urandom(8)
        self.path_challenge_pending = True
        if new_host:
            from .pmtud import restart

            self.loss.reset_path(self._now_hint)
            restart(self, self._now_hint)
        pathprobe.use_fresh_peer_cid(self)  # RFC 9000 §9.5: not one CID on two paths

    def revert_path(self) -> None:
        """(server) Back to ``previous_path``, the last validated one: its validation of
        the new address failed or the peer came back (RFC 9000 §9.3.2)."""
        previous = self.previous_path
        assert previous is not None
        previous.challenge, previous.challenge_pending = b"", False
        apply_path(self, previous)
        self.previous_path = None
        self.path_validation_deadline = None
        self.path_changes += 1
        from .idle import effective_idle  # (idle.py imports this module)

        # the half-open limit of an unvalidated address no longer holds
        idle = self._now_hint + effective_idle(self)
        if idle > self.idle_deadline:
            self.idle_deadline = idle

    def ecn_codepoint(self) -> int:
        """The ECN bits for outgoing datagrams: ECT(0) unless validation failed."""
        return 0 if self.ecn_state == ECN_FAILED else 2

    # ------------------------------------------------------------------ events & time

    @property
    def rtt(self) -> RttEstimator:
        return self.loss.rtt

    @property
    def cc(self) -> CongestionControl:
        return self.loss.cc

    @property
    def peer_certificates(self) -> list[x509.Certificate]:
        """The peer's certificate chain, leaf first, once the handshake is complete: the
        server's on a client; on a server the client's (empty if it presented none)."""
        return [x509.load_der_x509_certificate(der) for der in self.peer_certificate_ders]

    def next_event(self) -> Event | None:
        if self.events:
            return self.events.pop(0)
        return None

    def pop_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events

    def pto(self) -> float:
        return self.loss.rtt.pto_duration(peer_max_ack_delay(self), True)

    def timer(self) -> float | None:
        """The next time :meth:`handle_timer` must run, or None."""
        if self.terminated:
            return None
        if self.state >= CLOSING:
            return closing_timer(self)
        self.sync_recovery()
        # the earliest of these deadlines (compared as they come: no list, no min())
        best = self.idle_deadline
        t = self.loss.timer()
        if t is not None and t < best:
            best = t
        for space in self.spaces:
            t = space.ack_deadline
            if t is not None and t < best and not space.discarded:
                best = t
            t = space.ack_repeat_at
            if t is not None and t < best:
                best = t
        t = self.pacer_deadline
        if t is not None and t < best:
            best = t
        if self.key_update_requested and not self.key_update_pending and self.key_phase_acked():
            t = self.key_update_allowed_at
            if t < best:
                best = t
        if self.handshake_confirmed:
            t = self.pmtud.next_at  # a path MTU probe is due (pmtud.py; only one
            if t < best:  # before the idle deadline counts: best is never later)
                best = t
        if self.probe is not None:
            t = pathprobe.probe_timer(self) or self.probe.deadline
            if t < best:
                best = t
        t = self.path_validation_deadline
        if t is not None and t < best:
            best = t
        return best

    def handle_timer(self, now: float) -> None:
        self._now_hint = now
        if self.terminated:
            return
        if self.state >= CLOSING:
            deadline = self.close_deadline
            if deadline is not None and now >= deadline:
                self._terminate()  # the period is over (on_closing_timer's first case)
            else:
                on_closing_timer(self, now)
            return
        if now >= self.idle_deadline:
            self.state = DRAINING
            self.close_error = (0, None, "idle timeout", False)
            self.events.append(ConnectionTerminated(0, None, "idle timeout", False))
            self._terminate()
            return
        self.sync_recovery()
        loss = self.loss.timer()
        if loss is not None and now >= loss:
            # (imported here, where a loss timer fired: a relative import in a function
            # costs ~1 us per call, and most timers are the closing or the ACK timer)
            from .recovery_glue import on_loss_timeout

            on_loss_timeout(self, now)
        if self.pacer_deadline is not None and now >= self.pacer_deadline:
            self.pacer_deadline = None
        if self.key_update_requested:
            self._start_key_update_if_allowed(now)
        if self.probe is not None:
            pathprobe.on_probe_timer(self, now)
        deadline = self.path_validation_deadline
        if deadline is not None and now >= deadline:
            self.path_validation_deadline = None
            if not self.address_validated and self.previous_path is not None:
                self.revert_path()  # the new address never answered (RFC 9000 §9.3.2)

    def sync_recovery(self) -> None:
        """Copy what loss detection needs to know about the connection into it."""
        loss = self.loss
        loss.handshake_confirmed = self.handshake_confirmed
        loss.has_handshake_keys = self.send_protectors[_HANDSHAKE] is not None
        loss.amplification_limited = (
            not self.is_client and not self.address_validated
            and self.amplification_credit() < 1200
        )
        if self.peer_params is not None:
            loss.max_ack_delay = peer_max_ack_delay(self)

    def _terminate(self) -> None:
        self.state = CLOSED
        self.terminated = True
        for entry in self.host_cids:
            self.cid_changes.append((False, entry.cid))
        if self.one_rtt_ready:  # its engine entries, in one call
            self.engine.remove_connection([e.cid for e in self.host_cids], self.seal_key)
            self.one_rtt_ready = False

    # ------------------------------------------------------------------ closing

    def close(
        self,
        error_code: int = 0,
        reason: str = "",
        *,
        application: bool = True,
        frame_type: int | None = None,
        now: float | None = None,
    ) -> None:
        """Close the connection: CONNECTION_CLOSE goes out, then the closing period."""
        if self.state >= CLOSING:
            return
        if now is not None:
            self._now_hint = now
        self.close_error = (error_code, None if application else (frame_type or 0), reason,
                            application)
        self.close_pending = True
        self.state = CLOSING
        # nothing ever came from the peer: no closing period to answer it in
        start_closing(self, self._now_hint, 3 * self.pto() if self.counters.packets_received
                      else 0.0)
        self.events.append(
            ConnectionTerminated(
                error_code, None if application else frame_type, reason, False
            )
        )

    def abort(self, reason: str) -> None:
        """End at once, sending nothing: the peer is known to be unreachable (e.g. an
        ICMP port unreachable answered our Initial). ConnectionTerminated says why."""
        if self.terminated:
            return
        self.close_error = (0, None, reason, False)
        self.events.append(ConnectionTerminated(0, None, reason, False))
        self._terminate()

    def close_with_error(self, error: QuicError) -> None:
        self.close(error.code, error.reason, application=False, frame_type=error.frame_type)

    def enter_draining(self, code: int, frame_type: int | None, reason: str) -> None:
        if self.state >= CLOSING:
            if self.state == CLOSING:
                self.state = DRAINING
            return
        self.state = DRAINING
        self.close_deadline = draining_deadline(self._now_hint, self.pto())
        self.events.append(ConnectionTerminated(code, frame_type, reason, True))

    # ------------------------------------------------------------------ misc

    @property
    def is_closed(self) -> bool:
        return self.terminated

    def amplification_credit(self) -> int:
        if self.is_client or self.address_validated:
            return 1 << 62
        return 3 * self.bytes_received_unvalidated - self.bytes_sent_unvalidated

    def protocol_violation(self, reason: str) -> QuicError:
        return QuicError(PROTOCOL_VIOLATION, reason)
