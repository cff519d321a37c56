"""Plain-data pieces of connection state: packet number spaces, CIDs, flow control."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .inline import fast_init
from .rangeset import RangeSet
from .streams import RecvStream, SendStream

# connection states
HANDSHAKE = 0
ESTABLISHED = 1
CLOSING = 2
DRAINING = 3
CLOSED = 4

# ECN validation (RFC 9000 §13.4.2)
ECN_TESTING = 0
ECN_CAPABLE = 1
ECN_FAILED = 2

# retransmission record kinds (first element of each record tuple)
R_STREAM = 0
R_CRYPTO = 1
R_MAX_DATA = 2
R_MAX_STREAM_DATA = 3
R_MAX_STREAMS = 4
R_NEW_CID = 5
R_RETIRE_CID = 6
R_HANDSHAKE_DONE = 7
R_RESET = 8
R_STOP = 9
R_DATA_BLOCKED = 10
R_STREAM_BLOCKED = 11
R_STREAMS_BLOCKED = 12
R_ACK = 13
R_PING = 14
# (R_STREAM_RUN, stream_id, offset, bytes_per_packet, total_bytes, fin): a batch of
# packets each carrying the next bytes_per_packet bytes of one stream
R_STREAM_RUN = 15
R_PATH_CHALLENGE = 16
R_NEW_TOKEN = 24  # (R_NEW_TOKEN,): the server's NEW_TOKEN frame
R_ACK_FREQUENCY = 25  # (R_ACK_FREQUENCY, sequence): our ACK_FREQUENCY frame


def _crypto_send() -> SendStream:
    return SendStream(max_data=1 << 62)


def new_crypto_recv() -> RecvStream:
    """A CRYPTO receive stream of the Handshake or application space (a 1 MiB window);
    a server's application space makes its own on demand (receive.py ``_on_crypto``)."""
    return RecvStream(max_data=1 << 20, window=1 << 20, window_max=1 << 20)


#: CRYPTO data a server buffers in the Initial space, whose keys anyone can derive: a
#: ClientHello fits many times over (RFC 9000 §7.5 asks for at least 4096 bytes).
INITIAL_CRYPTO_WINDOW = 1 << 16


def initial_crypto_recv() -> RecvStream:
    return RecvStream(max_data=INITIAL_CRYPTO_WINDOW, window=INITIAL_CRYPTO_WINDOW,
                      window_max=INITIAL_CRYPTO_WINDOW)


@dataclass(slots=True, eq=False, init=False)
class PacketSpace:
    """One packet number space: what we sent and what we must acknowledge.

    Three are made per connection: the ``__init__`` is written out (the generated one
    called a factory function per list and CRYPTO stream). The fields' defaults below
    stay what it sets."""

    next_pn: int = 0
    largest_acked: int = -1
    received: RangeSet = field(default_factory=RangeSet)
    #: packet numbers below it were dropped from ``received`` (which keeps its newest
    #: ranges only, see :func:`forget_old_ranges`); a packet below it is taken as a
    #: duplicate, since it may have been processed (RFC 9000 §12.3)
    received_floor: int = 0
    largest_received: int = -1
    largest_received_time: float = 0.0
    ack_eliciting_pending: int = 0
    ack_immediately: bool = False
    ack_deadline: float | None = None
    #: a received packet not yet acknowledged; 1-RTT: an ack-eliciting one (a packet
    #: without ack-eliciting frames is acknowledged only with others: after_eliciting)
    ack_pending: bool = False
    #: 1-RTT: when to send the last ACK-only packet again (and how many times it was),
    #: see send.ACK_REPEATS
    ack_repeat_at: float | None = None
    ack_repeats: int = 0
    ecn_counts: list[int] = field(default_factory=lambda: [0, 0, 0])  # what we received
    ecn_peer_counts: list[int] = field(default_factory=lambda: [0, 0, 0])  # peer's ACK_ECN
    #: the space's CRYPTO streams; None once the space is discarded (its keys are gone,
    #: so nothing is sent or received in it again), which frees ~1 KB per idle connection
    #: for each of the Initial and Handshake spaces
    crypto_send: SendStream | None = field(default_factory=_crypto_send)
    #: (a server's application space: None until a 1-RTT CRYPTO frame comes, which a
    #: client never needs to send)
    crypto_recv: RecvStream | None = field(default_factory=new_crypto_recv)
    discarded: bool = False

    def __init__(self, crypto_recv: RecvStream | None = None) -> None:
        """A fresh space; ``crypto_recv`` replaces the default CRYPTO receive window."""
        self.next_pn = 0
        self.largest_acked = -1
        self.received = RangeSet()
        self.received_floor = 0
        self.largest_received = -1
        self.largest_received_time = 0.0
        self.ack_eliciting_pending = 0
        self.ack_immediately = False
        self.ack_deadline = None
        self.ack_pending = False
        self.ack_repeat_at = None
        self.ack_repeats = 0
        self.ecn_counts = [0, 0, 0]
        self.ecn_peer_counts = [0, 0, 0]
        self.crypto_send = SendStream(max_data=1 << 62)
        self.crypto_recv = new_crypto_recv() if crypto_recv is None else crypto_recv
        self.discarded = False


#: ``received`` holds at most this many ranges; past it the oldest are forgotten
RECEIVED_RANGES = 64
#: ... down to this many
RECEIVED_RANGES_KEPT = 32


def forget_old_ranges(space: PacketSpace) -> None:
    """``space.received`` grew past RECEIVED_RANGES ranges (a peer's losses or
    reordering): the oldest are dropped, below RECEIVED_RANGES_KEPT, and the floor
    rises to the oldest range kept, so that no packet number below it is processed
    again (RFC 9000 §12.3; such a packet is a replay or far too late). ACK frames carry
    the ranges kept only."""
    received = space.received
    floor = received.starts[-RECEIVED_RANGES_KEPT]
    received.shift_below(floor)
    space.received_floor = floor


@dataclass(slots=True)
class LocalCid:
    """A connection ID we issued."""

    sequence: int
    cid: bytes
    reset_token: bytes
    retired: bool = False
    announced: bool = False  # NEW_CONNECTION_ID sent (and not lost)


@dataclass(slots=True)
class PeerCid:
    """A connection ID the peer issued to us."""

    sequence: int
    cid: bytes
    reset_token: bytes | None


#: ``LocalCid(sequence, cid, reset_token)`` and ``PeerCid(sequence, cid, reset_token)``
#: for the per-handshake paths: the native engine's twin of the constructor (inline.py)
new_local_cid: Callable[[int, bytes, bytes], LocalCid] = fast_init(
    LocalCid, "sequence", "cid", "reset_token")
new_peer_cid: Callable[[int, bytes, bytes | None], PeerCid] = fast_init(
    PeerCid, "sequence", "cid", "reset_token")


@dataclass(slots=True, eq=False)
class FlowControl:
    """Connection-level flow control in both directions."""

    peer_max_data: int = 0  # peer's limit on what we send
    data_sent: int = 0
    max_data: int = 0  # our limit on what the peer sends
    data_received: int = 0  # sum of highest offsets of the peer's streams
    data_consumed: int = 0  # read by the application
    window: int = 0
    window_max: int = 0
    last_update_time: float = 0.0
    blocked_sent_at: int = -1
    blocked_pending: bool = False
    pending_max_data: bool = False
    # the peer's last DATA_BLOCKED at our current limit: the limit it named (-1: none)
    # and when it arrived (0.0: never); the next window update decides on it
    peer_blocked_at: int = -1
    peer_blocked_time: float = 0.0
    reassembly_cost: int = 0  # sum of the streams' out-of-order charge (chunk_cost)

    def reassembly_budget(self) -> int:
        """How much more out-of-order data (charged per piece) the streams may hold:
        together never more than the connection's receive window."""
        return self.max_data - self.data_consumed - self.reassembly_cost


@dataclass(slots=True, eq=False)
class StreamLimits:
    """Stream counts in both directions for one stream type (bidi or uni)."""

    peer_max: int = 0  # how many we may open
    opened_local: int = 0
    max_remote: int = 0  # how many the peer may open (advertised)
    opened_remote: int = 0  # highest peer stream index + 1
    closed_remote: int = 0
    window: int = 0
    pending_max_streams: bool = False
    blocked_sent_at: int = -1
    blocked_pending: bool = False
