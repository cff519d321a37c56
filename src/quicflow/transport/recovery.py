"""Loss detection over the three packet number spaces, RFC 9002 §6 and Appendix A.

Sans-I/O: time comes in as ``now`` (float monotonic seconds). The connection tells
the detector what it needs through plain fields (see :class:`LossDetection`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from quicflow.crypto.epoch import Epoch

from .congestion import CongestionControl
from .errors import PROTOCOL_VIOLATION, QuicError
from .inline import fast_init
from .rtt import GRANULARITY, RttEstimator

#: RFC 9002 §6.1.1: kPacketThreshold.
PACKET_THRESHOLD = 3
#: RFC 9002 §7.6.1: kPersistentCongestionThreshold.
PERSISTENT_CONGESTION_THRESHOLD = 3
#: The PTO period stops doubling once it reaches this many seconds (or the PTO without
#: backoff, if that is longer); see :attr:`LossDetection.max_pto_period`.
MAX_PTO_PERIOD = 1.0
#: Frame type of ACK, reported with the PROTOCOL_VIOLATION of a bad ACK.
_ACK_FRAME_TYPE = 0x02


class PnSpace(IntEnum):
    """Packet number spaces: 0-RTT and 1-RTT share APPLICATION."""

    INITIAL = 0
    HANDSHAKE = 1
    APPLICATION = 2


#: Epoch (by value) -> packet number space.
EPOCH_SPACE: tuple[PnSpace, ...] = (
    PnSpace.INITIAL,
    PnSpace.APPLICATION,
    PnSpace.HANDSHAKE,
    PnSpace.APPLICATION,
)
#: the spaces in order (iterating the enum class runs the enum module's Python code)
_PN_SPACES: tuple[PnSpace, ...] = tuple(PnSpace)
#: the spaces compared with on the per-ACK path, as globals (an enum class attribute costs
#: about four times more)
_INITIAL_SPACE = PnSpace.INITIAL
_HANDSHAKE_SPACE = PnSpace.HANDSHAKE
_APPLICATION_SPACE = PnSpace.APPLICATION
_ZERO_RTT = Epoch.ZERO_RTT
#: Packet number space -> epoch in which a probe for that space is sent.
SPACE_EPOCH: tuple[Epoch, ...] = (Epoch.INITIAL, Epoch.HANDSHAKE, Epoch.ONE_RTT)


def space_of(epoch: Epoch) -> PnSpace:
    return EPOCH_SPACE[epoch]


class AckError(QuicError):
    """An ACK frame acknowledged a packet that was never sent (PROTOCOL_VIOLATION)."""

    def __init__(self, reason: str) -> None:
        super().__init__(PROTOCOL_VIOLATION, reason, _ACK_FRAME_TYPE)


@dataclass(slots=True)
class SentPacket:
    """A sent packet, or a sent batch of ``count`` consecutive packet numbers
    ``pn .. pn + count - 1`` sent together (one record per batch, DESIGN.md).

    ``size`` is the bytes of all of them; in a batch every packet is ``unit`` bytes but
    the last, which may be shorter. ACK ranges and loss thresholds are applied to
    batches by range arithmetic: the part of a batch that is acknowledged or lost is
    reported as a record of its own (a *piece*) whose ``base_pn`` is the first packet
    number of the batch it came from, so the connection can map the piece back to the
    bytes it carried. ``frames`` belong to the connection.
    """

    pn: int
    time_sent: float
    size: int
    ack_eliciting: bool
    in_flight: bool
    epoch: Epoch
    frames: list[object] = field(default_factory=list)
    count: int = 1
    unit: int = 0
    base_pn: int = -1
    pmtu_probe: bool = False  # a DPLPMTUD probe: its loss is no congestion signal

    @property
    def last_pn(self) -> int:
        return self.pn + self.count - 1

    def piece(self, lo: int, hi: int) -> SentPacket:
        """Packets ``lo..hi`` (inclusive, inside this record) as a record of their own."""
        if lo == self.pn and hi == self.pn + self.count - 1:
            return self
        n = hi - lo + 1
        size = n * self.unit
        if hi == self.pn + self.count - 1:
            size -= self.unit * self.count - self.size  # the last packet may be shorter
        base = self.base_pn if self.base_pn >= 0 else self.pn
        return SentPacket(lo, self.time_sent, size, self.ack_eliciting, self.in_flight,
                          self.epoch, self.frames, n, self.unit, base, self.pmtu_probe)


#: ``SentPacket(pn, time_sent, size, ack_eliciting, in_flight, epoch, frames)`` for the
#: per-packet send path: the native engine's twin of the constructor (inline.py)
new_sent_packet: Callable[[int, float, int, bool, bool, Epoch, list[object]], SentPacket] = (
    fast_init(SentPacket, "pn", "time_sent", "size", "ack_eliciting", "in_flight", "epoch",
              "frames"))


@dataclass(slots=True, eq=False)
class SpaceState:
    """Per packet number space state of RFC 9002 Appendix A.

    ``sent`` is keyed by packet number and, since numbers only grow, in send order.
    """

    sent: dict[int, SentPacket] = field(default_factory=dict)
    largest_sent: int = -1
    largest_acked: int = -1
    loss_time: float | None = None
    last_ack_eliciting_time: float | None = None
    ack_eliciting_in_flight: int = 0
    discarded: bool = False


def _rebuilt(
    sent: dict[int, SentPacket], removed: list[int], kept: list[SentPacket]
) -> dict[int, SentPacket]:
    """``sent`` without ``removed``, with the ``kept`` pieces, in packet number order.

    ``kept`` is in packet number order; ``sent`` itself is emptied of ``removed``."""
    for key in removed:
        del sent[key]
    if not sent or kept[-1].pn < next(iter(sent)):
        # the usual case: the pieces left of split batches come before every record
        # still outstanding (an ACK or a loss takes the oldest packets)
        merged: dict[int, SentPacket] = {}
        for piece in kept:  # (a loop: a comprehension is a call of its own)
            merged[piece.pn] = piece
        merged.update(sent)
        return merged
    for piece in kept:
        sent[piece.pn] = piece
    return dict(sorted(sent.items()))


def _new_spaces() -> list[SpaceState]:
    return [SpaceState(), SpaceState(), SpaceState()]


@dataclass(slots=True, eq=False)
class LossDetection:
    """RFC 9002 loss detection and the congestion controller it drives.

    Inputs the connection keeps up to date (plain fields):

    - ``is_server``: servers treat the peer's address validation as complete.
    - ``max_ack_delay``: the peer's max_ack_delay transport parameter, in seconds
      (0.025 until the parameters are known).
    - ``handshake_confirmed``: RFC 9001 §4.1.2; also set by ``on_ack_received``'s
      argument. Until it is true no PTO is armed for the application space.
    - ``peer_completed_address_validation``: for a client, true once it received an
      ACK in a Handshake packet (set automatically) or the handshake is confirmed.
    - ``has_handshake_keys``: whether Handshake keys exist (which epoch an
      anti-deadlock probe uses).
    - ``amplification_limited``: a server that may not send more before address
      validation (3× limit); no PTO is armed while it is true.
    - ``max_pto_period``: the backoff cap in seconds (0 = none). RFC 9002 §6.2.1 doubles
      the PTO period at every expiry, without limit; here it doubles only until it
      reaches ``max_pto_period`` (1 s by default), or stays at the PTO without backoff
      if that is longer already. Why (README, "Loss recovery"): unbounded doubling turns a few
      consecutive losses into silences of many seconds (at 30 % loss each way, six
      failed probe rounds from a 1 s handshake PTO are a 63 s wait) and can outgrow the
      peer's idle timeout, which kills a connection that is alive. The probing a capped
      timer allows — at most two datagrams per max(PTO, 1 s) — stays below the rate of a
      connection at the minimum congestion window (two datagrams per RTT, RFC 9002
      §7.2), which every connection may send at even in persistent congestion; the
      congestion response itself (persistent congestion, minimum window) is unchanged.
    """

    is_server: bool = False
    max_ack_delay: float = 0.025
    handshake_confirmed: bool = False
    peer_completed_address_validation: bool = False
    has_handshake_keys: bool = False
    amplification_limited: bool = False
    rtt: RttEstimator = field(default_factory=RttEstimator)
    cc: CongestionControl = field(default_factory=CongestionControl)
    spaces: list[SpaceState] = field(default_factory=_new_spaces)
    pto_count: int = 0
    first_rtt_sample_time: float | None = None
    #: when the current path began (``reset_path``): a packet sent before went on the
    #: previous path and gives the new one no RTT sample (RFC 9000 §9.4)
    path_started: float = 0.0
    max_pto_period: float = MAX_PTO_PERIOD
    #: When the RFC's SetLossDetectionTimer last ran (base of the anti-deadlock PTO).
    timer_anchor: float | None = None
    # Counters.
    packets_sent: int = 0
    packets_acked: int = 0
    packets_lost: int = 0
    pto_fired: int = 0
    persistent_congestions: int = 0

    # -- queries -------------------------------------------------------------

    @property
    def bytes_in_flight(self) -> int:
        return self.cc.bytes_in_flight

    @property
    def ack_eliciting_in_flight(self) -> int:
        s = self.spaces
        return (
            s[0].ack_eliciting_in_flight
            + s[1].ack_eliciting_in_flight
            + s[2].ack_eliciting_in_flight
        )

    def largest_acked(self, epoch: Epoch) -> int | None:
        """Largest packet number the peer acknowledged in that epoch's space."""
        value = self.spaces[EPOCH_SPACE[epoch]].largest_acked
        return value if value >= 0 else None

    def unacked(self, epoch: Epoch) -> list[SentPacket]:
        """The packets of that epoch's space still awaiting an ACK, in send order."""
        return list(self.spaces[EPOCH_SPACE[epoch]].sent.values())

    def oldest_ack_eliciting(self, epoch: Epoch) -> SentPacket | None:
        """The oldest packet of that epoch's space still awaiting an ACK that carried
        frames to send again (ack-eliciting, not a PMTU probe); ACK-only packets before
        it, which a peer need never acknowledge, are passed over."""
        for pkt in self.spaces[EPOCH_SPACE[epoch]].sent.values():
            if pkt.ack_eliciting and not pkt.pmtu_probe:
                return pkt
        return None

    def peer_validated(self) -> bool:
        """PeerCompletedAddressValidation() of RFC 9002 A.6."""
        return self.is_server or self.peer_completed_address_validation or (
            self.handshake_confirmed
        )

    def pto_period(self, include_ack_delay: bool) -> float:
        """The current PTO period: the PTO of RFC 9002 §6.2.1 (with the peer's
        max_ack_delay for the application space) times 2^pto_count, but no longer than
        ``max_pto_period`` once the backoff has begun — or than the PTO without backoff
        when that alone is longer."""
        base = self.rtt.pto_duration(self.max_ack_delay, include_ack_delay)
        count = self.pto_count
        period = base * (1 << count) if count < 62 else base * float(2**62)
        cap = self.max_pto_period
        if cap > 0 and period > base:
            period = max(base, min(period, cap))
        return period

    # -- events --------------------------------------------------------------

    def on_packet_sent(self, pkt: SentPacket) -> None:
        """Record a sent packet (RFC 9002 A.5). Packet numbers must increase per space."""
        sp = self.spaces[EPOCH_SPACE[pkt.epoch]]
        if sp.discarded:
            raise ValueError(f"packet number space of {pkt.epoch.name} was discarded")
        if pkt.pn <= sp.largest_sent:
            raise ValueError(f"packet number {pkt.pn} not above {sp.largest_sent}")
        sp.largest_sent = pkt.pn + pkt.count - 1
        sp.sent[pkt.pn] = pkt
        self.packets_sent += pkt.count
        if pkt.in_flight:
            if pkt.ack_eliciting:
                sp.last_ack_eliciting_time = pkt.time_sent
                sp.ack_eliciting_in_flight += pkt.count
            self.cc.on_sent(pkt.size, pkt.time_sent)
            self.timer_anchor = pkt.time_sent

    def on_ack_received(
        self,
        epoch: Epoch,
        ranges: list[tuple[int, int]],
        ack_delay: float,
        now: float,
        handshake_confirmed: bool,
    ) -> tuple[list[SentPacket], list[SentPacket]]:
        """Process one ACK frame (RFC 9002 A.7); returns (newly acked, newly lost).

        ``ranges`` are inclusive ``(smallest, largest)``, largest range first, as the
        wire layer parses them; ``ack_delay`` is in seconds. Both lists are in packet
        number order. Raises :class:`AckError` for an ACK of a never-sent packet.
        ECN: if the ACK raised the CE count, call ``cc.on_ecn_ce`` with the send time
        of the largest newly acked packet.
        """
        if handshake_confirmed:
            self.handshake_confirmed = True
        space = EPOCH_SPACE[epoch]
        sp = self.spaces[space]
        if space == _HANDSHAKE_SPACE and not self.is_server:
            self.peer_completed_address_validation = True
        if sp.discarded or not ranges:
            return [], []
        largest = ranges[0][1]
        if largest > sp.largest_sent:
            raise AckError(f"ACK of unsent packet {largest} in {epoch.name}")
        if largest > sp.largest_acked:
            sp.largest_acked = largest
        sent = sp.sent
        if len(ranges) == 1 and sent and 0 <= ranges[0][0] <= next(iter(sent)) and (
            (last := next(reversed(sent.values()))).pn + last.count - 1 <= largest
        ):
            # one range over every record (a handshake's usual ACK): all of it, in order,
            # without _remove_acked's merge walk
            acked = list(sent.values())
            sent.clear()
        else:
            acked = self._remove_acked(sp, ranges)
            if not acked:
                return [], []
        largest_pkt = acked[-1] if acked[-1].pn + acked[-1].count - 1 == largest else None

        if largest_pkt is not None and largest_pkt.time_sent >= self.path_started:
            for p in acked:
                if p.ack_eliciting:
                    if self.first_rtt_sample_time is None:
                        self.first_rtt_sample_time = now
                    self.rtt.update(
                        now - largest_pkt.time_sent,
                        ack_delay,  # also in Initial: a resent ACK reports its delay
                        self.handshake_confirmed,
                        self.max_ack_delay,
                    )
                    break

        sent = sp.sent  # (_remove_acked may have rebuilt it)
        if sent and next(iter(sent)) <= sp.largest_acked:
            lost = self._detect_lost(sp, now)
            if lost:
                self._on_lost(sp, lost, now)
        else:
            # nothing outstanding at or below the largest acknowledged (all of it
            # acknowledged, or only packets sent after it left): nothing can be lost and
            # no loss timer is due, as _detect_lost's walk would find at its first record
            sp.loss_time = None
            lost = []

        cc = self.cc
        growth = 0
        growth_time = 0.0
        recovering = 0
        count = 0
        # (cc.in_recovery inline: a packet sent at or before the recovery start)
        recovery_start = cc.recovery_start_time
        for p in acked:
            count += p.count
            if p.in_flight:
                if p.ack_eliciting:
                    sp.ack_eliciting_in_flight -= p.count
                if recovery_start is not None and p.time_sent <= recovery_start:
                    recovering += p.size
                else:
                    growth += p.size
                    if p.time_sent > growth_time:
                        growth_time = p.time_sent
        if recovering:
            cc.on_removed_from_flight(recovering)
        if growth:
            cc.on_acked(growth, growth_time, now, self.rtt)
        self.packets_acked += count

        if self.is_server or self.peer_completed_address_validation or (
            self.handshake_confirmed
        ):  # peer_validated() inline
            self.pto_count = 0
        self.timer_anchor = now
        return acked, lost

    def timer(self) -> float | None:
        """When ``on_timeout`` must run next (RFC 9002 A.8), or None."""
        earliest: float | None = None
        for sp in self.spaces:
            t = sp.loss_time
            if t is not None and (earliest is None or t < earliest):
                earliest = t
        if earliest is not None:
            return earliest
        if self.amplification_limited:
            return None
        return self._pto_time_and_space()[0]

    def on_timeout(self, now: float) -> tuple[list[SentPacket], Epoch | None]:
        """The loss detection timer fired (RFC 9002 A.9).

        Returns the packets lost by the time threshold, or ``([], epoch)`` when a PTO
        expired and the connection must send one or two ack-eliciting probes in
        ``epoch`` (for the anti-deadlock case: Handshake if it has Handshake keys,
        else a padded Initial). Returns ``([], None)`` when nothing was due yet.
        """
        loss_space: SpaceState | None = None
        loss_time = 0.0
        for sp in self.spaces:
            t = sp.loss_time
            if t is not None and (loss_space is None or t < loss_time):
                loss_space = sp
                loss_time = t
        if loss_space is not None:
            if now < loss_time:
                return [], None
            lost = self._detect_lost(loss_space, now)
            if lost:
                self._on_lost(loss_space, lost, now)
            self.timer_anchor = now
            return lost, None
        if self.amplification_limited:
            return [], None
        deadline, space = self._pto_time_and_space()
        if deadline is None or space is None or now < deadline:
            return [], None
        self.pto_count += 1
        self.pto_fired += 1
        self.timer_anchor = now
        return [], SPACE_EPOCH[space]

    def discard_epoch(self, epoch: Epoch) -> list[SentPacket]:
        """Forget a space whose keys were discarded (RFC 9002 A.11); returns its packets.

        Their bytes leave the flight without a congestion signal. ``Epoch.ZERO_RTT``
        (0-RTT rejected) removes only the 0-RTT packets of the application space,
        whose frames the connection must send again in 1-RTT.
        """
        space = EPOCH_SPACE[epoch]
        sp = self.spaces[space]
        if epoch == _ZERO_RTT:
            removed = [p for p in sp.sent.values() if p.epoch == _ZERO_RTT]
            for p in removed:
                del sp.sent[p.pn]
        else:
            removed = list(sp.sent.values()) if sp.sent else []
            sp.sent.clear()
            sp.discarded = True
            sp.loss_time = None
            sp.last_ack_eliciting_time = None
        if removed:  # (a handshake's spaces are usually all acknowledged by now)
            self._remove_from_flight(sp, removed)
        if space != _APPLICATION_SPACE:
            self.pto_count = 0
        return removed

    def lose_all(self) -> list[SentPacket]:
        """Declare every tracked packet lost without a congestion signal (e.g. after a
        snapshot restore) and return them, in space then packet number order."""
        out: list[SentPacket] = []
        for sp in self.spaces:
            removed = list(sp.sent.values())
            sp.sent.clear()
            sp.loss_time = None
            self._remove_from_flight(sp, removed)
            out.extend(removed)
        self.packets_lost += sum(p.count for p in out)
        return out

    def on_retry(self, now: float) -> None:
        """A Retry (RFC 9002 §6.3): the flight it answers was received but not processed,
        so it is neither acknowledged nor lost. Every packet record goes without a
        congestion signal, congestion control and the PTO backoff start afresh, and the
        first Initial's round trip becomes the RTT estimate when there is none yet (which
        §6.3 allows). (The 0-RTT records go first: their frames are sent again.)"""
        first: float | None = None
        for sp in self.spaces:
            if sp.sent:
                removed = list(sp.sent.values())
                sp.sent.clear()
                self._remove_from_flight(sp, removed)
                for p in removed:
                    if first is None or p.time_sent < first:
                        first = p.time_sent
            sp.loss_time = None
            sp.last_ack_eliciting_time = None
        self.pto_count = 0
        old = self.cc
        self.cc = CongestionControl(old.algorithm, old.max_datagram_size)
        self.cc.bytes_in_flight = old.bytes_in_flight  # (0: the flight was all there was)
        if first is not None and not self.rtt.has_sample and now > first:
            self.rtt.update(now - first, 0.0, False, self.max_ack_delay)

    def reset_path(self, now: float) -> None:
        """New path (RFC 9000 §9.4): fresh RTT estimate and congestion controller of the
        same algorithm; bytes already in flight stay counted. The packets sent on the
        old path "MUST NOT contribute to congestion control or RTT estimation for the
        new path": their ACKs give no RTT sample (``path_started``), and the new
        controller starts as if a recovery period began now, so that they leave the
        flight without growing its window and their losses start no recovery period."""
        old = self.cc
        self.rtt = RttEstimator()
        self.cc = CongestionControl(old.algorithm, old.max_datagram_size)
        self.cc.bytes_in_flight = old.bytes_in_flight
        self.cc.recovery_start_time = now
        self.first_rtt_sample_time = None
        self.path_started = now

    # -- internals -----------------------------------------------------------

    def _remove_from_flight(self, sp: SpaceState, packets: list[SentPacket]) -> None:
        size = 0
        for p in packets:
            if p.in_flight:
                size += p.size
                if p.ack_eliciting:
                    sp.ack_eliciting_in_flight -= p.count
        if size:
            self.cc.on_removed_from_flight(size)

    @staticmethod
    def _remove_acked(sp: SpaceState, ranges: list[tuple[int, int]]) -> list[SentPacket]:
        """Pop what ``ranges`` acknowledge, in packet number order.

        Records (packets or batches) and ranges are both sorted, so one merge walk over
        the records up to the largest acknowledged packet number does it; a batch that
        a range covers in part is split, and only its acknowledged pieces are returned.
        """
        sent = sp.sent
        if not sent:
            return []
        for lo, hi in ranges:
            if lo < 0 or hi < lo:
                raise AckError(f"invalid ACK range {lo}..{hi}")
        asc = ranges if len(ranges) == 1 else sorted(ranges)
        largest = asc[-1][1]
        n = len(asc)
        acked: list[SentPacket] = []
        kept: list[SentPacket] = []  # remaining pieces of split batches
        removed: list[int] = []
        i = 0
        for key, p in sent.items():
            if key > largest:
                break
            first = key
            last = key + p.count - 1
            while i < n and asc[i][1] < first:
                i += 1
            if i == n:
                break
            if asc[i][0] <= first and last <= asc[i][1]:
                acked.append(p)  # the common case: all of it
                removed.append(key)
                continue
            if last < asc[i][0]:
                continue
            # a batch partly covered by one or more ranges
            pos = first
            j = i
            while j < n and asc[j][0] <= last:
                lo = max(asc[j][0], first)
                hi = min(asc[j][1], last)
                if lo > pos:
                    kept.append(p.piece(pos, lo - 1))
                acked.append(p.piece(lo, hi))
                pos = hi + 1
                j += 1
            if pos <= last:
                kept.append(p.piece(pos, last))
            removed.append(key)
        if not removed:
            return acked
        if not kept:
            for key in removed:
                del sent[key]
            return acked
        sp.sent = _rebuilt(sent, removed, kept)
        return acked

    def _detect_lost(self, sp: SpaceState, now: float) -> list[SentPacket]:
        """DetectAndRemoveLostPackets (RFC 9002 A.10); sets the space's loss_time.

        For a batch, the packets at or below the packet threshold are lost by count, all
        of it up to the largest acknowledged by time; the rest stays outstanding.
        """
        sp.loss_time = None
        largest_acked = sp.largest_acked
        if largest_acked < 0 or not sp.sent:
            return []
        loss_delay = self.rtt.loss_delay()
        lost_send_time = now - loss_delay
        threshold_pn = largest_acked - PACKET_THRESHOLD
        lost: list[SentPacket] = []
        kept: list[SentPacket] = []
        removed: list[int] = []
        loss_time: float | None = None
        for pn, p in sp.sent.items():
            if pn > largest_acked:
                break
            last = pn + p.count - 1
            if p.time_sent <= lost_send_time:
                cut = min(last, largest_acked)  # lost by time up to the largest acked
            else:
                cut = min(last, threshold_pn)  # lost by count
                t = p.time_sent + loss_delay
                if cut < min(last, largest_acked) and (loss_time is None or t < loss_time):
                    loss_time = t
            if cut < pn:
                continue
            removed.append(pn)
            lost.append(p.piece(pn, cut))
            if cut < last:
                kept.append(p.piece(cut + 1, last))
        sent = sp.sent
        if kept:
            sp.sent = _rebuilt(sent, removed, kept)
        else:
            for pn in removed:
                del sent[pn]
        sp.loss_time = loss_time
        return lost

    def _on_lost(self, sp: SpaceState, lost: list[SentPacket], now: float) -> None:
        """OnPacketsLost (RFC 9002 A.10 / B.8) incl. persistent congestion."""
        lost_bytes = 0
        last_sent: float | None = None
        for p in lost:
            if p.in_flight:
                lost_bytes += p.size
                if p.ack_eliciting:
                    sp.ack_eliciting_in_flight -= p.count
                if p.pmtu_probe:
                    continue  # a lost probe says nothing about congestion (RFC 9000 §14.4)
                if last_sent is None or p.time_sent > last_sent:
                    last_sent = p.time_sent
        self.packets_lost += sum(p.count for p in lost)
        cc = self.cc
        if lost_bytes:
            cc.on_removed_from_flight(lost_bytes)
        if last_sent is None:
            return
        cc.on_congestion_event(last_sent, now)
        if self.first_rtt_sample_time is not None and self._persistent_congestion(lost):
            cc.on_persistent_congestion()
            self.persistent_congestions += 1

    def _persistent_congestion(self, lost: list[SentPacket]) -> bool:
        """RFC 9002 §7.6.2: two ack-eliciting packets lost, sent more than the
        persistent congestion duration apart, after the first RTT sample, with nothing
        between them acknowledged.

        Packets between them count as "not acknowledged" only if they are in the same
        run of consecutive lost packet numbers (a conservative reading: a gap may be
        an acknowledged packet).
        """
        rtt = self.rtt
        duration = (
            rtt.smoothed_rtt + max(4 * rtt.rttvar, GRANULARITY) + self.max_ack_delay
        ) * PERSISTENT_CONGESTION_THRESHOLD
        first_sample = self.first_rtt_sample_time
        assert first_sample is not None
        run_start: float | None = None
        prev_pn = -2
        for p in lost:
            if p.time_sent <= first_sample:
                prev_pn = -2
                continue
            if p.pn != prev_pn + 1:
                run_start = None
            prev_pn = p.pn + p.count - 1
            if not p.ack_eliciting or p.pmtu_probe:
                continue
            if run_start is None:
                run_start = p.time_sent
            elif p.time_sent - run_start > duration:
                return True
        return False

    def _pto_time_and_space(self) -> tuple[float | None, PnSpace | None]:
        """GetPtoTimeAndSpace (RFC 9002 A.8) plus the no-timer case; the backoff is
        capped by ``max_pto_period`` (see the class docstring)."""
        s = self.spaces
        if not (s[0].ack_eliciting_in_flight or s[1].ack_eliciting_in_flight):
            # the usual case once the handshake is over: the application space alone
            app = s[2]
            if app.ack_eliciting_in_flight:
                if app.last_ack_eliciting_time is None or not self.handshake_confirmed:
                    return None, None
                return app.last_ack_eliciting_time + self.pto_period(True), _APPLICATION_SPACE
            if self.peer_validated() or self.timer_anchor is None:
                return None, None
            space = _HANDSHAKE_SPACE if self.has_handshake_keys else _INITIAL_SPACE
            return self.timer_anchor + self.pto_period(False), space
        duration = self.pto_period(False)
        best: float | None = None
        best_space: PnSpace | None = None
        for space in _PN_SPACES:
            sp = s[space]
            if sp.ack_eliciting_in_flight == 0 or sp.last_ack_eliciting_time is None:
                continue
            d = duration
            if space == _APPLICATION_SPACE:
                if not self.handshake_confirmed:
                    break
                d = self.pto_period(True)
            t = sp.last_ack_eliciting_time + d
            if best is None or t < best:
                best = t
                best_space = space
        return best, best_space
