"""The ACK Frequency extension (draft-ietf-quic-ack-frequency-14), both roles.

Receiving side: we advertise ``min_ack_delay`` (``Configuration.ack_frequency``); the
peer's ACK_FREQUENCY frames then set the ack-eliciting threshold, the max ack delay and
the reordering threshold we ACK with (newest sequence number only), and IMMEDIATE_ACK asks
for an ACK at once. Until a frame arrives the RFC 9000 §13.2 policy stays as it was
(threshold 1: an ACK every second ack-eliciting packet, at every gap, within
max_ack_delay). The decisions after received packets (``after_eliciting``,
``out_of_order``, ``after_newest``) are the one home of those rules for both receive paths
(receive.py, receive_bulk.py).

Sending side: when the peer offered ``min_ack_delay``, ``maybe_request`` (after each
1-RTT ACK frame, while stream data waits to be sent: a handshake-only or idle connection
asks nothing, which would cost it a datagram each way) asks for a threshold of a
quarter of the congestion window in packets, at most
``Configuration.ack_frequency_threshold``, in steps of a factor of two (a new
frame only when the wanted value doubles or halves). The requested max ack delay is a
quarter of the smoothed RTT within the peer's min_ack_delay and max_ack_delay, and
``peer_max_ack_delay`` gives RFC 9002 (PTO, RTT samples) the delay the peer may use now;
the reordering threshold is 1, so every gap is still acknowledged at once and loss
recovery sees what it saw before. A PTO probe carries IMMEDIATE_ACK once a threshold
above 1 was requested (``on_probe``).

All of it is plain data in :class:`AckFrequency` (``Connection.ack_freq``); its defaults
are "not negotiated", which is what a snapshot taken before the extension restores to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..crypto.epoch import Epoch
from ..wire.frames import IMMEDIATE_ACK, encode_frame
from ..wire.frames import AckFrequency as AckFrequencyFrame
from .errors import PROTOCOL_VIOLATION, QuicError

if TYPE_CHECKING:
    from .connection import Connection
    from .state import PacketSpace

#: the min_ack_delay we advertise: our timers' granularity (rtt.GRANULARITY), microseconds
MIN_ACK_DELAY_US = 1000
#: a requested max ack delay of 2^14 ms or more is invalid (as max_ack_delay, RFC 9000 §18.2)
MAX_ACK_DELAY_LIMIT_US = (1 << 14) * 1000
#: the reordering threshold we request: every gap acknowledged at once (RFC 9000's rule)
REQUESTED_REORDERING = 1


@dataclass(slots=True, eq=False)
class AckFrequency:
    """Per-connection ACK Frequency state (both roles)."""

    # receiving side: what the peer asked of us
    advertised_us: int = -1  # the min_ack_delay we sent (microseconds); -1: none
    recv_sequence: int = -1  # the largest ACK_FREQUENCY sequence number applied
    threshold: int = 1  # ack-eliciting packets we may hold before an ACK is owed
    max_delay: float = -1.0  # the max ack delay in force, seconds (< 0: our configuration's)
    reordering: int = 1  # 1: an ACK at every gap; 0: never for reordering; n: gap of n
    gap_pn: int = -1  # (reordering > 1) the first packet number of an unreported gap
    # sending side: what we asked of the peer
    peer_min_us: int = -1  # the peer's min_ack_delay (microseconds); -1: not offered/used
    sequence: int = 0  # the next sequence number we send
    requested: int = 1  # the threshold we last requested (1: none sent, RFC 9000's)
    pending: bool = False  # an ACK_FREQUENCY frame with ``requested`` waits
    #: the max ack delay the peer may use now, seconds (< 0: its transport parameter's):
    #: the larger of the old and the new value while our newest frame is unacknowledged
    peer_delay: float = -1.0
    immediate_pending: bool = False  # an IMMEDIATE_ACK frame waits


# ------------------------------------------------------------------ negotiation


def local_min_ack_delay(cfg: Any) -> int | None:
    """The min_ack_delay transport parameter a configuration sends (None: off): our
    timer granularity, never above our own max_ack_delay (as the draft requires)."""
    if not cfg.ack_frequency:
        return None
    return min(MIN_ACK_DELAY_US, int(cfg.max_ack_delay * 1000) * 1000)


def on_local_parameters(conn: Connection, min_ack_delay: int | None) -> None:
    """Our parameters went out with ``min_ack_delay`` (None: without the extension)."""
    conn.ack_freq.advertised_us = -1 if min_ack_delay is None else min_ack_delay


def on_peer_parameters(conn: Connection, min_ack_delay: int | None) -> None:
    """The peer's parameters: ask it for fewer ACKs only if it offered the extension and
    our configuration uses it."""
    if min_ack_delay is not None and conn.configuration.ack_frequency:
        conn.ack_freq.peer_min_us = min_ack_delay


# ------------------------------------------------------------------ receiving side


def on_ack_frequency(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    """ACK_FREQUENCY (draft -14 §4): apply the newest request."""
    af = conn.ack_freq
    if af.advertised_us < 0:
        raise QuicError(PROTOCOL_VIOLATION, "ACK_FREQUENCY without our min_ack_delay")
    conn.counters.ack_frequency_received += 1
    delay_us = frame.max_ack_delay
    if delay_us < af.advertised_us:
        raise QuicError(PROTOCOL_VIOLATION, "requested max ack delay below min_ack_delay")
    if delay_us >= MAX_ACK_DELAY_LIMIT_US:
        raise QuicError(PROTOCOL_VIOLATION, "requested max ack delay of 2^14 ms or more")
    if frame.sequence <= af.recv_sequence:
        return  # an older request, arrived late: ignored
    af.recv_sequence = frame.sequence
    af.threshold = frame.threshold
    af.max_delay = delay_us / 1_000_000
    af.reordering = frame.reordering
    af.gap_pn = -1
    space = conn.spaces[2]
    if space.ack_eliciting_pending > af.threshold:
        space.ack_immediately = True
    elif space.ack_deadline is not None and space.ack_deadline > now + af.max_delay:
        space.ack_deadline = now + af.max_delay


def on_immediate_ack(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    """IMMEDIATE_ACK (draft -14 §5): the packet is acknowledged at once."""
    if conn.ack_freq.advertised_us < 0:
        raise QuicError(PROTOCOL_VIOLATION, "IMMEDIATE_ACK without our min_ack_delay")
    conn.counters.immediate_acks_received += 1
    conn.spaces[2].ack_immediately = True


def after_eliciting(conn: Connection, space: PacketSpace, count: int, now: float) -> None:
    """``count`` ack-eliciting 1-RTT packets arrived: an ACK is pending, at once past
    the threshold, else within the max ack delay.

    Only these make a 1-RTT ACK pending (both receive paths). A packet without
    ack-eliciting frames (a peer's ACK alone) is put in the ranges and acknowledged
    when an ACK goes for an ack-eliciting one: RFC 9000 §13.2.1, "Non-ack-eliciting
    packets are eventually acknowledged when the endpoint sends an ACK frame in
    response to other events", and §13.2.4 leaves it to their sender to ask for an ACK
    (ack_send.elicit's PING). An ACK written into each data packet for the peer's ACKs
    alone cost the peer an ACK frame to parse and walk for nothing it needs."""
    space.ack_pending = True
    pending = space.ack_eliciting_pending + count
    space.ack_eliciting_pending = pending
    space.ack_repeats = 0
    af = conn.ack_freq
    if pending > af.threshold:
        space.ack_immediately = True
    elif space.ack_deadline is None:
        delay = af.max_delay
        space.ack_deadline = now + (delay if delay >= 0 else conn.configuration.max_ack_delay)


def out_of_order(conn: Connection, space: PacketSpace, pn: int, largest: int) -> None:
    """Packet ``pn`` arrived out of order (below ``largest``, the largest received before
    it, or past a gap): RFC 9000's immediate ACK, or the requested reordering threshold
    (draft -14 §6.2: 0 ignores reordering; n > 1 waits until a gap is n packets old)."""
    af = conn.ack_freq
    reordering = af.reordering
    if reordering == 1:
        space.ack_immediately = True
    elif reordering > 1 and pn > largest + 1 and af.gap_pn < 0:
        af.gap_pn = largest + 1
        after_newest(conn, space, pn)


def after_newest(conn: Connection, space: PacketSpace, largest: int) -> None:
    """(reordering threshold above 1, a gap open) ``largest`` is the new largest packet
    number: an ACK at once when the gap is as old as the threshold."""
    af = conn.ack_freq
    if largest - af.gap_pn >= af.reordering:
        space.ack_immediately = True
        af.gap_pn = -1


def silence_limit(conn: Connection) -> float:
    """A newest packet after a silence longer than this is acknowledged at once: our
    max_ack_delay, as after it a packet is likely a PTO probe (RFC 9002 §6.2). Not while
    the peer's ACK_FREQUENCY request is in force: the peer marks its probes with
    IMMEDIATE_ACK and allows for the delay it asked for (draft -14 §7); at 256
    connections a connection's turns are often that far apart on loopback."""
    if conn.ack_freq.recv_sequence >= 0:
        return _INF
    limit: float = conn.configuration.max_ack_delay
    return limit


_INF = float("inf")


def on_ce(conn: Connection, space: PacketSpace) -> None:
    """A CE-marked packet arrived: acknowledged at once while the peer's request holds
    ACKs back (draft -14 §6.3; the RFC 9000 policy is unchanged)."""
    if conn.ack_freq.recv_sequence >= 0:
        space.ack_immediately = True


def on_stream_end(conn: Connection) -> None:
    """A STREAM frame with FIN arrived: while the peer's request holds ACKs back, the end
    of a stream is acknowledged at once (its sender may have nothing more to send, and
    would otherwise wait out the max ack delay for the last ACK)."""
    if conn.ack_freq.recv_sequence >= 0:
        conn.spaces[2].ack_immediately = True


# ------------------------------------------------------------------ sending side


def maybe_request(conn: Connection) -> None:
    """A new threshold when a quarter of the congestion window, capped, has doubled or
    halved since the last. Its caller (``recovery_glue.on_ack_frame``, after a 1-RTT ACK
    frame) asks only when the peer offered the extension and stream data waits to be
    sent: asking costs a frame and the peer's ACK of it (about +8 % instructions per
    handshake for a connection that sends nothing after it)."""
    af = conn.ack_freq
    want = conn.loss.cc.cwnd // (4 * conn.max_datagram_size)
    cap = conn.configuration.ack_frequency_threshold
    if want > cap:
        want = cap
    if want < 2:
        want = 1
    current = af.requested
    if want >= 2 * current or 2 * want <= current:
        af.requested = want
        af.pending = True


def requested_delay_us(conn: Connection) -> int:
    """The max ack delay we request: a quarter of the smoothed RTT, within the peer's
    min_ack_delay and its own max_ack_delay. An ACK held for the threshold then waits at
    most that long when a flight ends below it (with the peer's 25 ms, a simulated 16 MiB
    download on a 10 ms path took 32 % longer: slow start waited for its ACKs)."""
    params = conn.peer_params
    top = params.max_ack_delay * 1000 if params is not None else 25_000
    delay = int(conn.loss.rtt.smoothed_rtt * 250_000)
    if delay > top:
        delay = top
    floor = conn.ack_freq.peer_min_us
    return delay if delay > floor else floor


def peer_max_ack_delay(conn: Connection) -> float:
    """RFC 9002's max_ack_delay of the peer (seconds, for PTO and RTT samples): the value
    our ACK_FREQUENCY asked for once the peer has it, else its transport parameter."""
    delay = conn.ack_freq.peer_delay
    if delay >= 0:
        return delay
    params = conn.peer_params
    return params.max_ack_delay / 1000 if params is not None else 0.025


def on_probe(conn: Connection) -> None:
    """A 1-RTT PTO fired: the probe asks for an ACK at once when we asked the peer to
    hold ACKs back (draft -14 §7)."""
    af = conn.ack_freq
    if af.requested > 1:
        af.immediate_pending = True


def on_frame_acked(conn: Connection, sequence: int, delay_us: int) -> None:
    """The peer has our ACK_FREQUENCY ``sequence``: if it is the newest, its max ack
    delay is the one in force from now on."""
    af = conn.ack_freq
    if sequence == af.sequence - 1:
        af.peer_delay = delay_us / 1_000_000


def on_frame_lost(conn: Connection, sequence: int) -> None:
    """A packet with our ACK_FREQUENCY frame ``sequence`` was lost: sent again with the
    current values (and a new sequence number) unless a newer one went out since."""
    af = conn.ack_freq
    if sequence == af.sequence - 1:
        af.pending = True


def encode_pending(conn: Connection, payload: bytearray) -> tuple[int, int]:
    """Write the waiting IMMEDIATE_ACK and ACK_FREQUENCY frames; returns the sequence
    number and requested max ack delay (µs) of the ACK_FREQUENCY frame written, or
    (-1, 0). Until the peer acknowledges it, PTO allows for the larger of the delay in
    force and the new one."""
    af = conn.ack_freq
    if af.immediate_pending:
        payload.append(IMMEDIATE_ACK)
        af.immediate_pending = False
    if not af.pending:
        return -1, 0
    af.pending = False
    sequence = af.sequence
    af.sequence = sequence + 1
    conn.counters.ack_frequency_sent += 1
    delay_us = requested_delay_us(conn)
    encode_frame(AckFrequencyFrame(sequence, af.requested, delay_us, REQUESTED_REORDERING),
                 payload)
    in_force = peer_max_ack_delay(conn)
    delay = delay_us / 1_000_000
    af.peer_delay = delay if delay > in_force else in_force
    return sequence, delay_us
