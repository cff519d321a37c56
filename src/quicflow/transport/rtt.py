"""Round-trip time estimation, RFC 9002 §5 (all times in float seconds)."""

from __future__ import annotations

from dataclasses import dataclass

#: RFC 9002 §6.2.2: the RTT assumed before the first sample.
INITIAL_RTT = 0.333
#: RFC 9002 §6.1.2: timer granularity.
GRANULARITY = 0.001


@dataclass(slots=True, eq=False)
class RttEstimator:
    """Smoothed RTT, RTT variation and minimum RTT of one path (RFC 9002 §5)."""

    latest_rtt: float = 0.0
    smoothed_rtt: float = INITIAL_RTT
    rttvar: float = INITIAL_RTT / 2
    min_rtt: float = 0.0
    has_sample: bool = False

    def update(
        self,
        latest_rtt: float,
        ack_delay: float,
        handshake_confirmed: bool,
        max_ack_delay: float,
    ) -> None:
        """Take one RTT sample (RFC 9002 §5.3).

        ``ack_delay`` is the peer's reported delay in seconds (already scaled by its
        ack_delay_exponent; pass 0 for Initial-space ACKs); ``max_ack_delay`` is the
        peer's transport parameter in seconds. The delay is capped by ``max_ack_delay``
        only once the handshake is confirmed, and it is never subtracted when that
        would bring the sample below ``min_rtt``.
        """
        self.latest_rtt = latest_rtt
        if not self.has_sample:
            self.has_sample = True
            self.min_rtt = latest_rtt
            if not handshake_confirmed and max_ack_delay < ack_delay <= latest_rtt + GRANULARITY:
                # RFC 9002 takes the first sample whole. During the handshake a delay
                # above max_ack_delay is one the peer reports for packets it held without
                # keys (RFC 9000 §13.2.5) or for an ACK it resent after the first was
                # lost; taken whole, it makes the RTT — and every PTO after it — seconds
                # long (at 30 % loss: 1-2 s PTOs for the whole transfer).
                latest_rtt = max(latest_rtt - ack_delay, GRANULARITY)
            self.smoothed_rtt = latest_rtt
            self.rttvar = latest_rtt / 2
            return
        if latest_rtt < self.min_rtt:
            self.min_rtt = latest_rtt
        if handshake_confirmed and ack_delay > max_ack_delay:
            ack_delay = max_ack_delay
        adjusted = latest_rtt
        if latest_rtt >= self.min_rtt + ack_delay:
            adjusted = latest_rtt - ack_delay
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed_rtt - adjusted)
        self.smoothed_rtt = 0.875 * self.smoothed_rtt + 0.125 * adjusted

    def pto_duration(self, max_ack_delay: float, include_ack_delay: bool) -> float:
        """One probe timeout without backoff: srtt + max(4·rttvar, 1 ms) [+ max_ack_delay]."""
        var = 4 * self.rttvar  # (max() without its call: once per send turn's re-arm)
        duration = self.smoothed_rtt + (var if var > GRANULARITY else GRANULARITY)
        if include_ack_delay:
            duration += max_ack_delay
        return duration

    def loss_delay(self) -> float:
        """Time threshold for loss (RFC 9002 §6.1.2): 9/8 · max(srtt, latest_rtt), ≥ 1 ms."""
        delay = 1.125 * max(self.latest_rtt, self.smoothed_rtt)
        return delay if delay > GRANULARITY else GRANULARITY
