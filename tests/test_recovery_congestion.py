"""NewReno (RFC 9002 §7), CUBIC (RFC 9438) and pacing (RFC 9002 §7.7)."""

from __future__ import annotations

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport.congestion import (
    CUBIC_ALPHA,
    CUBIC_BETA,
    CUBIC_C,
    SSTHRESH_INFINITE,
    CongestionControl,
    Pacer,
    initial_window,
)
from quicflow.transport.recovery import LossDetection, SentPacket
from quicflow.transport.rtt import RttEstimator

MDS = 1200


def rtt_of(srtt: float) -> RttEstimator:
    return RttEstimator(latest_rtt=srtt, smoothed_rtt=srtt, rttvar=srtt / 4,
                        min_rtt=srtt, has_sample=True)


def test_initial_window_and_validation() -> None:
    assert initial_window(1200) == 12000
    assert initial_window(1500) == 14720
    cc = CongestionControl("newreno")
    assert cc.cwnd == 12000 and cc.ssthresh == SSTHRESH_INFINITE
    assert cc.available() == 12000
    cc.on_sent(5000, 0.0)
    assert cc.available() == 7000
    with pytest.raises(ValueError):
        CongestionControl("bbr")
    # Restoring a snapshot keeps the given window.
    assert CongestionControl("cubic", cwnd=50000).cwnd == 50000


@pytest.mark.parametrize("algorithm", ["newreno", "cubic"])
def test_slow_start_doubles_per_rtt(algorithm: str) -> None:
    ld = LossDetection(is_server=True, handshake_confirmed=True,
                       cc=CongestionControl(algorithm, MDS))
    pn = 0
    now = 0.0
    for expected in (12000, 24000, 48000, 96000):
        assert ld.cc.cwnd == expected
        first = pn
        while ld.cc.available() >= MDS:
            ld.on_packet_sent(SentPacket(pn, now, MDS, True, True, Epoch.ONE_RTT))
            pn += 1
        now += 0.1
        acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(first, pn - 1)], 0.0, now, True)
        assert len(acked) == expected // MDS and lost == []
        assert ld.bytes_in_flight == 0


def test_newreno_halves_once_per_recovery_period() -> None:
    cc = CongestionControl("newreno", MDS, cwnd=48000)
    rtt = rtt_of(0.1)
    cc.on_sent(48000, 0.0)
    cc.on_congestion_event(time_sent=0.5, now=1.0)
    assert cc.cwnd == 24000 and cc.ssthresh == 24000
    assert cc.recovery_start_time == 1.0
    # More losses of packets sent before the recovery started: no further reduction.
    cc.on_congestion_event(time_sent=0.9, now=1.1)
    cc.on_congestion_event(time_sent=1.0, now=1.2)
    assert cc.cwnd == 24000 and cc.congestion_events == 1
    # ACKs of packets sent before recovery do not grow the window.
    cc.on_acked(MDS, 0.95, 1.2, rtt)
    assert cc.cwnd == 24000
    # A loss of a packet sent after the recovery start is a new event.
    cc.on_congestion_event(time_sent=1.05, now=1.3)
    assert cc.cwnd == 12000 and cc.congestion_events == 2
    # Never below the minimum window.
    for i in range(10):
        cc.on_congestion_event(time_sent=2.0 + i, now=2.5 + i)
    assert cc.cwnd == 2 * MDS


def test_newreno_congestion_avoidance_one_mds_per_window() -> None:
    cc = CongestionControl("newreno", MDS, cwnd=24000, ssthresh=24000)
    rtt = rtt_of(0.1)
    cc.on_sent(10**6, 0.0)
    for _ in range(19):
        cc.on_acked(MDS, 0.5, 1.0, rtt)
    assert cc.cwnd == 24000  # 19 * 1200 < 24000
    cc.on_acked(MDS, 0.5, 1.0, rtt)
    assert cc.cwnd == 25200
    assert cc.ca_acked == 0


def test_slow_start_stops_at_ssthresh() -> None:
    cc = CongestionControl("newreno", MDS, cwnd=20000, ssthresh=24000)
    cc.on_sent(10**6, 0.0)
    cc.on_acked(12000, 0.5, 1.0, rtt_of(0.1))
    # 4000 bytes of slow start, the remaining 8000 count for congestion avoidance.
    assert cc.cwnd == 24000 and cc.ca_acked == 8000


def test_app_limited_does_not_grow() -> None:
    cc = CongestionControl("newreno", MDS)
    cc.on_sent(6000, 0.0)
    cc.app_limited = True
    cc.on_acked(6000, 0.0, 0.1, rtt_of(0.1))
    assert cc.cwnd == 12000 and cc.bytes_in_flight == 0


def test_ecn_ce_is_a_congestion_event() -> None:
    cc = CongestionControl("newreno", MDS, cwnd=40000)
    cc.on_ecn_ce(time_sent=0.2, now=0.3)
    assert cc.cwnd == 20000 and cc.recovery_start_time == 0.3


def test_persistent_congestion_minimum_window() -> None:
    for algorithm in ("newreno", "cubic"):
        cc = CongestionControl(algorithm, MDS, cwnd=100000)
        cc.on_congestion_event(1.0, 2.0)
        cc.on_persistent_congestion()
        assert cc.cwnd == 2 * MDS
        assert cc.recovery_start_time is None


def simulate_cubic(cc: CongestionControl, srtt: float, t0: float, until: float,
                   step: float = 0.005) -> dict[float, int]:
    """Acks arrive continuously at cwnd bytes per srtt; returns cwnd at each step."""
    rtt = rtt_of(srtt)
    out: dict[float, int] = {}
    carry = 0.0
    for i in range(round((until - t0) / step) + 1):
        now = t0 + i * step
        carry += cc.cwnd * step / srtt
        size = int(carry)
        carry -= size
        cc.bytes_in_flight = 10**9
        if size:
            cc.on_acked(size, now - srtt, now, rtt)
        out[round(i * step, 3)] = cc.cwnd
    return out


def test_cubic_reduction_and_fast_convergence() -> None:
    cc = CongestionControl("cubic", MDS, cwnd=100 * MDS)
    cc.on_congestion_event(time_sent=0.5, now=1.0)
    assert cc.cubic_w_max == 100 * MDS
    assert cc.cwnd == cc.ssthresh == int(100 * MDS * CUBIC_BETA)
    # A second loss below the previous W_max: fast convergence lowers W_max further.
    cc.cwnd = 90 * MDS
    cc.on_congestion_event(time_sent=1.5, now=2.0)
    assert cc.cubic_w_max == pytest.approx(90 * MDS * (1 + CUBIC_BETA) / 2)
    assert cc.cwnd == int(90 * MDS * CUBIC_BETA)


def test_cubic_follows_concave_then_convex_curve() -> None:
    w_max = 1000  # segments; large enough that the Reno-friendly estimate stays below
    cc = CongestionControl("cubic", MDS, cwnd=w_max * MDS)
    srtt = 0.1
    t0 = 1.0
    cc.on_congestion_event(time_sent=0.9, now=t0)
    assert cc.cwnd == 700 * MDS
    curve = simulate_cubic(cc, srtt, t0 + 0.001, t0 + 14.0, step=0.01)
    k = (300 / CUBIC_C) ** (1 / 3)  # (W_max - cwnd_epoch) / C in segments: ~9.09 s
    assert cc.cubic_k == pytest.approx(k, rel=1e-6)

    def w_cubic(t: float) -> float:
        return float((CUBIC_C * (t - k) ** 3 + w_max) * MDS)

    # cwnd tracks W_cubic (the target is W_cubic(t + RTT), reached within ~1 RTT).
    for t in (1.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 14.0):
        assert curve[t] == pytest.approx(w_cubic(t), rel=0.01), t
        assert curve[t] <= w_cubic(t + srtt)
    assert cc.cubic_w_est < cc.cwnd  # still in the cubic region
    # Concave before K: increments shrink; plateau near W_max; convex after: they grow.
    inc = [curve[t + 1.0] - curve[t] for t in range(14)]
    assert all(a > b for a, b in zip(inc[:8], inc[1:9], strict=True))
    assert all(a < b for a, b in zip(inc[9:], inc[10:], strict=False))
    assert abs(curve[round(k, 2)] - w_max * MDS) < MDS
    values = list(curve.values())
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_cubic_reno_friendly_region_on_short_rtt() -> None:
    cc = CongestionControl("cubic", MDS, cwnd=20 * MDS)
    srtt = 0.002
    cc.on_congestion_event(time_sent=0.0, now=0.0)
    start = cc.cwnd
    curve = simulate_cubic(cc, srtt, 0.001, 0.5, step=0.001)
    # With a 2 ms RTT the Reno estimate outgrows the cubic curve.
    assert cc.cubic_t_epoch is not None
    assert cc.cubic_window(0.5) < cc.cubic_w_est
    assert cc.cwnd == int(cc.cubic_w_est)
    # While below cwnd_prior, W_est grows by alpha = 3(1-b)/(1+b) segments per RTT.
    early = curve[0.02] - start  # 10 RTTs
    assert early == pytest.approx(10 * CUBIC_ALPHA * MDS, rel=0.25)
    # Above cwnd_prior alpha becomes 1: one segment per RTT.
    late = curve[0.48] - curve[0.38]  # 50 RTTs
    assert cc.cubic_w_est > cc.cubic_cwnd_prior
    assert late == pytest.approx(50 * MDS, rel=0.1)


def test_cubic_after_persistent_congestion_restarts_with_k_zero() -> None:
    cc = CongestionControl("cubic", MDS, cwnd=100 * MDS)
    cc.on_congestion_event(time_sent=0.0, now=1.0)
    cc.on_persistent_congestion()
    assert cc.cwnd == 2 * MDS
    rtt = rtt_of(0.1)
    cc.bytes_in_flight = 10**9
    # Slow start up to ssthresh, then a new epoch with K = 0 and W_max = cwnd.
    while cc.cwnd < cc.ssthresh:
        cc.on_acked(cc.cwnd, 1.5, 2.0, rtt)
    cc.on_acked(MDS, 1.5, 2.0, rtt)
    assert cc.cubic_k == 0.0
    assert cc.cubic_w_max == cc.cubic_cwnd_epoch


def test_pacer_spaces_a_burst() -> None:
    pacer = Pacer(max_datagram_size=MDS)
    rtt = rtt_of(0.1)
    cwnd = 120000
    rate = 1.25 * cwnd / 0.1  # 1.5 MB/s -> 0.8 ms per 1200-byte packet
    assert pacer.rate(rtt, cwnd) == pytest.approx(rate)
    now = 0.0
    times = []
    for _ in range(20):
        now = max(now, pacer.next_send_time(now, MDS, rtt, cwnd))
        pacer.consume(now, MDS, rtt, cwnd)
        times.append(now)
    assert times[:10] == [0.0] * 10  # initial burst of 10 datagrams
    gaps = [b - a for a, b in zip(times[10:], times[11:], strict=False)]
    assert times[10] == pytest.approx(MDS / rate)
    for g in gaps:
        assert g == pytest.approx(MDS / rate)
    # After a long idle period the bucket holds one burst, not more.
    assert pacer.budget(now + 10.0, rtt, cwnd) == 10 * MDS
    # A float smoothed RTT works too; a zero RTT means no pacing.
    assert pacer.next_send_time(now + 10.0, MDS, 0.1, cwnd) == now + 10.0
    assert Pacer().next_send_time(5.0, MDS, 0.0, cwnd) == 5.0


def test_pacer_granularity_lets_a_send_run_ahead_by_the_timer_resolution() -> None:
    """Sends may spend what the rate earns within ``granularity`` (the event loop's
    timer resolution) instead of waiting for a timer that oversleeps it."""
    from quicflow.transport.congestion import Pacer

    strict = Pacer(max_datagram_size=1200, burst_datagrams=1)
    early = Pacer(max_datagram_size=1200, burst_datagrams=1, granularity=0.001)
    rate_rtt, cwnd = 0.01, 120_000  # 1.25 * 120000 / 0.01 = 15 MB/s = 15000 B/ms
    for p in (strict, early):
        p.consume(0.0, 1200, rate_rtt, cwnd)
    assert strict.budget(0.0, rate_rtt, cwnd) == 0
    assert early.budget(0.0, rate_rtt, cwnd) == 15000
    assert early.next_send_time(0.0, 1200, rate_rtt, cwnd) == 0.0
    assert strict.next_send_time(0.0, 1200, rate_rtt, cwnd) > 0.0


def test_pacer_hands_out_bursts_not_single_datagrams() -> None:
    """With a budget under a burst, run_budget gives nothing now and the time at which a
    burst's worth has built up; at that time the whole burst may go (issue 11)."""
    pacer = Pacer(max_datagram_size=MDS, burst_interval=0.002, max_burst_datagrams=256)
    cwnd, srtt = 100 * MDS, 0.1  # rate 1.5 MB/s: the 10-datagram bucket is the burst
    room, later = pacer.run_budget(0.0, srtt, cwnd, 64 * MDS)
    assert later is None and room >= 10 * MDS  # a full bucket at the start
    pacer.consume(0.0, room, srtt, cwnd)
    room, later = pacer.run_budget(0.001, srtt, cwnd, 64 * MDS)
    assert room == 0 and later is not None  # ~1.5 datagrams earned: wait, do not trickle
    rate = pacer.rate(srtt, cwnd)
    assert later == pytest.approx(10 * MDS / rate, rel=1e-6)  # a full bucket then
    room, again = pacer.run_budget(later, srtt, cwnd, 64 * MDS)
    assert again is None and room >= 10 * MDS
    # a small want (little data waits) goes as soon as it is covered
    pacer.consume(later, room, srtt, cwnd)
    room, wait = pacer.run_budget(later + 0.0001, srtt, cwnd, MDS)
    assert wait is not None and wait == pytest.approx(later + MDS / rate, rel=1e-6)


def test_pacer_bucket_holds_a_run_when_the_window_is_large() -> None:
    """With srtt inflated by a busy sender's own queue, 2 ms of the rate is a few
    datagrams; a connection with a window of eight runs or more may still send one run
    (64 datagrams) at once, so every backlogged connection's turn builds runs of the
    same length. A small window keeps the small burst (cwnd / 8 at most)."""
    pacer = Pacer(max_datagram_size=MDS, burst_interval=0.002, max_burst_datagrams=256,
                  run_datagrams=64)
    plain = Pacer(max_datagram_size=MDS, burst_interval=0.002, max_burst_datagrams=256)
    srtt = 0.1
    big = 1000 * MDS  # rate 15 MB/s: 2 ms of it is 25 datagrams
    assert plain.capacity(plain.rate(srtt, big), big) == pytest.approx(25 * MDS)
    assert pacer.capacity(pacer.rate(srtt, big), big) == 64 * MDS
    room, later = pacer.run_budget(0.0, srtt, big, 64 * MDS)
    assert later is None and room >= 64 * MDS
    pacer.consume(0.0, room, srtt, big)
    # the average rate is the same: the next run waits for 64 datagrams' worth
    _, later = pacer.run_budget(0.001, srtt, big, 64 * MDS)
    assert later == pytest.approx(64 * MDS / pacer.rate(srtt, big), rel=0.05)
    small = 80 * MDS  # a window of 80 datagrams: cwnd / 8 = 10 datagrams, the fixed burst
    assert pacer.capacity(pacer.rate(srtt, small), small) == 10 * MDS
    mid = 200 * MDS  # cwnd / 8 = 25 datagrams, more than 2 ms of the rate (5)
    assert pacer.capacity(pacer.rate(srtt, mid), mid) == pytest.approx(25 * MDS)
