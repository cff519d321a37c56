"""Loss detection over the three packet number spaces, RFC 9002 §6 and Appendix A.

Sans-I/O: time comes in as ``now`` (float monotonic seconds). The connection tells
the detector what it needs through plain fields (see :class:`LossDetection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from quicflow.crypto.epoch import Epoch

from .congestion import CongestionControl
from .errors import PROTOCOL_VIOLATION, QuicError
from .rtt import GRANULARITY, RttEstimator

#: RFC 9002 §6.1.1: kPacketThreshold.
PACKET_THRESHOLD = 3
#: RFC 9002 §7.6.1: kPersistentCongestionThreshold.
PERSISTENT_CONGESTION_THRESHOLD = 3
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
    """One sent packet as loss detection sees it; ``frames`` belong to the connection."""

    pn: int
    time_sent: float
    size: int
    ack_eliciting: bool
    in_flight: bool
    epoch: Epoch
    frames: list[object] = field(default_factory=list)


@dataclass(slots=True)
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


def _new_spaces() -> list[SpaceState]:
    return [SpaceState(), SpaceState(), SpaceState()]


@dataclass(slots=True)
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

    def peer_validated(self) -> bool:
        """PeerCompletedAddressValidation() of RFC 9002 A.6."""
        return self.is_server or self.peer_completed_address_validation or (
            self.handshake_confirmed
        )

    # -- events --------------------------------------------------------------

    def on_packet_sent(self, pkt: SentPacket) -> None:
        """Record a sent packet (RFC 9002 A.5). Packet numbers must increase per space."""
        sp = self.spaces[EPOCH_SPACE[pkt.epoch]]
        if sp.discarded:
            raise ValueError(f"packet number space of {pkt.epoch.name} was discarded")
        if pkt.pn <= sp.largest_sent:
            raise ValueError(f"packet number {pkt.pn} not above {sp.largest_sent}")
        sp.largest_sent = pkt.pn
        sp.sent[pkt.pn] = pkt
        self.packets_sent += 1
        if pkt.in_flight:
            if pkt.ack_eliciting:
                sp.last_ack_eliciting_time = pkt.time_sent
                sp.ack_eliciting_in_flight += 1
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
        if space == PnSpace.HANDSHAKE and not self.is_server:
            self.peer_completed_address_validation = True
        if sp.discarded or not ranges:
            return [], []
        largest = ranges[0][1]
        if largest > sp.largest_sent:
            raise AckError(f"ACK of unsent packet {largest} in {epoch.name}")
        if largest > sp.largest_acked:
            sp.largest_acked = largest
        largest_pkt = sp.sent.get(largest)
        acked = self._remove_acked(sp, ranges)
        if not acked:
            return [], []

        if largest_pkt is not None:
            for p in acked:
                if p.ack_eliciting:
                    if self.first_rtt_sample_time is None:
                        self.first_rtt_sample_time = now
                    self.rtt.update(
                        now - largest_pkt.time_sent,
                        0.0 if space == PnSpace.INITIAL else ack_delay,
                        self.handshake_confirmed,
                        self.max_ack_delay,
                    )
                    break

        lost = self._detect_lost(sp, now)
        if lost:
            self._on_lost(sp, lost, now)

        cc = self.cc
        growth = 0
        growth_time = 0.0
        recovering = 0
        for p in acked:
            if p.in_flight:
                if p.ack_eliciting:
                    sp.ack_eliciting_in_flight -= 1
                if cc.in_recovery(p.time_sent):
                    recovering += p.size
                else:
                    growth += p.size
                    if p.time_sent > growth_time:
                        growth_time = p.time_sent
        if recovering:
            cc.on_removed_from_flight(recovering)
        if growth:
            cc.on_acked(growth, growth_time, now, self.rtt)
        self.packets_acked += len(acked)

        if self.peer_validated():
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
        if epoch == Epoch.ZERO_RTT:
            removed = [p for p in sp.sent.values() if p.epoch == Epoch.ZERO_RTT]
            for p in removed:
                del sp.sent[p.pn]
        else:
            removed = list(sp.sent.values())
            sp.sent.clear()
            sp.discarded = True
            sp.loss_time = None
            sp.last_ack_eliciting_time = None
        self._remove_from_flight(sp, removed)
        if space != PnSpace.APPLICATION:
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
        self.packets_lost += len(out)
        return out

    def reset_path(self) -> None:
        """New path (RFC 9000 §9.4): fresh RTT estimate and congestion controller of the
        same algorithm; bytes already in flight stay counted."""
        old = self.cc
        self.rtt = RttEstimator()
        self.cc = CongestionControl(old.algorithm, old.max_datagram_size)
        self.cc.bytes_in_flight = old.bytes_in_flight
        self.first_rtt_sample_time = None

    # -- internals -----------------------------------------------------------

    def _remove_from_flight(self, sp: SpaceState, packets: list[SentPacket]) -> None:
        size = 0
        for p in packets:
            if p.in_flight:
                size += p.size
                if p.ack_eliciting:
                    sp.ack_eliciting_in_flight -= 1
        if size:
            self.cc.on_removed_from_flight(size)

    @staticmethod
    def _remove_acked(sp: SpaceState, ranges: list[tuple[int, int]]) -> list[SentPacket]:
        """Pop the tracked packets named by ``ranges``, in packet number order.

        Walks whichever is smaller: the packet numbers the ranges cover, or the
        tracked packets up to the largest acknowledged.
        """
        sent = sp.sent
        if not sent:
            return []
        covered = 0
        for lo, hi in ranges:
            if lo < 0 or hi < lo:
                raise AckError(f"invalid ACK range {lo}..{hi}")
            covered += hi - lo + 1
        acked: list[SentPacket] = []
        if covered <= len(sent):
            pop = sent.pop
            for lo, hi in sorted(ranges):
                for pn in range(lo, hi + 1):
                    p = pop(pn, None)
                    if p is not None:
                        acked.append(p)
            return acked
        asc = sorted(ranges)
        n = len(asc)
        i = 0
        lo, hi = asc[0]
        for pn, p in sent.items():
            while pn > hi:
                i += 1
                if i == n:
                    break
                lo, hi = asc[i]
            if i == n:
                break
            if pn >= lo:
                acked.append(p)
        for p in acked:
            del sent[p.pn]
        return acked

    def _detect_lost(self, sp: SpaceState, now: float) -> list[SentPacket]:
        """DetectAndRemoveLostPackets (RFC 9002 A.10); sets the space's loss_time."""
        sp.loss_time = None
        largest_acked = sp.largest_acked
        if largest_acked < 0:
            return []
        loss_delay = self.rtt.loss_delay()
        lost_send_time = now - loss_delay
        threshold_pn = largest_acked - PACKET_THRESHOLD
        lost: list[SentPacket] = []
        loss_time: float | None = None
        for pn, p in sp.sent.items():
            if pn > largest_acked:
                break
            if pn <= threshold_pn or p.time_sent <= lost_send_time:
                lost.append(p)
            else:
                t = p.time_sent + loss_delay
                if loss_time is None or t < loss_time:
                    loss_time = t
        sent = sp.sent
        for p in lost:
            del sent[p.pn]
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
                    sp.ack_eliciting_in_flight -= 1
                if last_sent is None or p.time_sent > last_sent:
                    last_sent = p.time_sent
        self.packets_lost += len(lost)
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
            prev_pn = p.pn
            if not p.ack_eliciting:
                continue
            if run_start is None:
                run_start = p.time_sent
            elif p.time_sent - run_start > duration:
                return True
        return False

    def _pto_time_and_space(self) -> tuple[float | None, PnSpace | None]:
        """GetPtoTimeAndSpace (RFC 9002 A.8) plus the no-timer case."""
        backoff = 1 << self.pto_count if self.pto_count < 62 else float(2**62)
        duration = self.rtt.pto_duration(0.0, False) * backoff
        if self.ack_eliciting_in_flight == 0:
            if self.peer_validated() or self.timer_anchor is None:
                return None, None
            space = PnSpace.HANDSHAKE if self.has_handshake_keys else PnSpace.INITIAL
            return self.timer_anchor + duration, space
        best: float | None = None
        best_space: PnSpace | None = None
        for space in PnSpace:
            sp = self.spaces[space]
            if sp.ack_eliciting_in_flight == 0 or sp.last_ack_eliciting_time is None:
                continue
            d = duration
            if space == PnSpace.APPLICATION:
                if not self.handshake_confirmed:
                    break
                d += self.max_ack_delay * backoff
            t = sp.last_ack_eliciting_time + d
            if best is None or t < best:
                best = t
                best_space = space
        return best, best_space
