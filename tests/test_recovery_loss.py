"""Loss detection, RFC 9002 §6 and Appendix A."""

from __future__ import annotations

import time

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport.congestion import CongestionControl
from quicflow.transport.errors import PROTOCOL_VIOLATION, QuicError
from quicflow.transport.recovery import AckError, LossDetection, SentPacket

MDS = 1200


def server(algorithm: str = "newreno") -> LossDetection:
    return LossDetection(
        is_server=True, handshake_confirmed=True, cc=CongestionControl(algorithm, MDS)
    )


def send(
    ld: LossDetection,
    pn: int,
    t: float,
    epoch: Epoch = Epoch.ONE_RTT,
    size: int = MDS,
    ack_eliciting: bool = True,
) -> SentPacket:
    p = SentPacket(pn, t, size, ack_eliciting, True, epoch, [f"frames-{pn}"])
    ld.on_packet_sent(p)
    return p


def pns(packets: list[SentPacket]) -> list[int]:
    return [p.pn for p in packets]


def test_packet_threshold_scenario() -> None:
    ld = server()
    for pn in range(10):
        send(ld, pn, pn * 0.001)
    assert ld.bytes_in_flight == 10 * MDS
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(6, 9), (0, 2)], 0.0, 0.1, True)
    assert pns(acked) == [0, 1, 2, 6, 7, 8, 9]
    # 9 >= pn + 3 for 3, 4 and 5.
    assert pns(lost) == [3, 4, 5]
    assert lost[0].frames == ["frames-3"]
    assert ld.bytes_in_flight == 0
    assert ld.packets_acked == 7 and ld.packets_lost == 3
    assert ld.largest_acked(Epoch.ONE_RTT) == 9
    assert ld.largest_acked(Epoch.ZERO_RTT) == 9  # same space
    assert ld.largest_acked(Epoch.HANDSHAKE) is None


def test_packet_threshold_step_by_step() -> None:
    ld = server()
    for pn in range(10):
        send(ld, pn, pn * 0.001)
    now = 0.1
    _, lost = ld.on_ack_received(Epoch.ONE_RTT, [(6, 6), (0, 2)], 0.0, now, True)
    assert pns(lost) == [3]  # 6 >= 3+3; 4 and 5 are within the threshold
    assert pns(ld.unacked(Epoch.ONE_RTT)) == [4, 5, 7, 8, 9]
    # 4 and 5 wait for the time threshold.
    timer = ld.timer()
    assert timer is not None and timer == pytest.approx(0.004 + 9 / 8 * (now - 0.006))
    _, lost = ld.on_ack_received(Epoch.ONE_RTT, [(7, 7)], 0.0, now + 0.001, True)
    assert pns(lost) == [4]
    _, lost = ld.on_ack_received(Epoch.ONE_RTT, [(8, 8)], 0.0, now + 0.002, True)
    assert pns(lost) == [5]
    assert pns(ld.unacked(Epoch.ONE_RTT)) == [9]


def test_time_threshold_via_timer() -> None:
    ld = server()
    send(ld, 0, 0.0)
    send(ld, 1, 0.001)
    send(ld, 2, 0.002)
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(2, 2)], 0.0, 0.1, True)
    assert pns(acked) == [2] and lost == []
    assert ld.rtt.latest_rtt == pytest.approx(0.098)
    loss_delay = 9 / 8 * 0.098
    t = ld.timer()
    assert t == pytest.approx(loss_delay)
    assert t is not None
    # Too early: nothing happens.
    assert ld.on_timeout(t - 0.0005) == ([], None)
    lost, epoch = ld.on_timeout(t)
    assert pns(lost) == [0] and epoch is None
    t2 = ld.timer()
    assert t2 == pytest.approx(0.001 + loss_delay)
    assert t2 is not None
    lost, epoch = ld.on_timeout(t2)
    assert pns(lost) == [1] and epoch is None
    assert ld.bytes_in_flight == 0
    # Nothing left in flight on a server: no timer.
    assert ld.timer() is None


def test_pto_backoff_and_probe_epoch() -> None:
    ld = server()
    ld.max_pto_period = 0.0  # RFC 9002's unbounded doubling (the cap: tests below)
    send(ld, 0, 0.0)
    pto = 0.333 + 4 * 0.1665 + 0.025  # application space includes max_ack_delay
    t = ld.timer()
    assert t == pytest.approx(pto)
    assert t is not None
    assert ld.on_timeout(t - 0.01) == ([], None)
    lost, epoch = ld.on_timeout(t)
    assert lost == [] and epoch == Epoch.ONE_RTT and ld.pto_count == 1
    # Probe sent at t: next PTO is twice as long.
    send(ld, 1, t)
    t2 = ld.timer()
    assert t2 == pytest.approx(t + 2 * pto)
    assert t2 is not None
    _, epoch = ld.on_timeout(t2)
    assert epoch == Epoch.ONE_RTT and ld.pto_count == 2
    send(ld, 2, t2)
    assert ld.timer() == pytest.approx(t2 + 4 * pto)
    assert ld.pto_fired == 2
    # An ACK resets the backoff; the unacknowledged earlier packets are lost by time.
    now = t2 + 0.05
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(2, 2)], 0.0, now, True)
    assert pns(acked) == [2] and pns(lost) == [0, 1]
    assert ld.pto_count == 0
    # First RTT sample came after those packets: no persistent congestion.
    assert ld.persistent_congestions == 0


def _fire_ptos(ld: LossDetection, count: int, epoch: Epoch = Epoch.ONE_RTT) -> list[float]:
    """Let ``count`` PTOs expire with nothing acknowledged, a probe sent at each; returns
    the periods between consecutive probes (simulated time)."""
    t = 0.0
    send(ld, 0, t, epoch)
    periods = []
    for pn in range(1, count + 1):
        deadline = ld.timer()
        assert deadline is not None
        periods.append(deadline - t)
        assert ld.on_timeout(deadline)[1] == epoch
        t = deadline
        send(ld, pn, t, epoch)
    return periods


def test_pto_backoff_is_capped_at_one_second() -> None:
    # application space on a fast path: 30 ms PTO, doubling until 1 s, then 1 s
    ld = server()
    ld.rtt.update(0.002, 0.0, True, 0.025)
    periods = _fire_ptos(ld, 11)
    base = ld.rtt.pto_duration(0.025, True)
    assert periods[:6] == pytest.approx([base * 2**i for i in range(6)])
    assert base * 2**6 > 1.0 and periods[6:] == pytest.approx([1.0] * 5)
    # five seconds of silence take 10 failed probe rounds (uncapped: 8, and 10 are 32 s)
    assert sum(periods[:9]) < 5.0 < sum(periods[:10])
    assert sum(base * 2**i for i in range(10)) > 30.0
    assert ld.pto_count == 11


def test_handshake_pto_does_not_back_off_past_its_first_second() -> None:
    # before any RTT sample the PTO is 333 ms + 4 * 166.5 ms = 999 ms: the cap keeps it
    # there (uncapped: 1, 2, 4, 8, 16 s — the > 5 s handshake silences at 30 % loss)
    ld = LossDetection(is_server=False, cc=CongestionControl("newreno", MDS))
    periods = _fire_ptos(ld, 5, Epoch.INITIAL)
    assert periods[0] == pytest.approx(0.999)
    assert periods[1:] == pytest.approx([1.0] * 4)


def test_pto_cap_never_shortens_a_long_pto() -> None:
    # a path whose PTO without backoff is above the cap keeps that PTO, without doubling
    ld = server()
    ld.rtt.update(2.0, 0.0, True, 0.025)
    base = ld.rtt.pto_duration(0.025, True)
    assert _fire_ptos(ld, 3) == pytest.approx([base] * 3)


def test_no_application_pto_before_handshake_confirmed() -> None:
    ld = LossDetection(is_server=True)
    send(ld, 0, 0.0, Epoch.HANDSHAKE)
    send(ld, 0, 0.01, Epoch.ONE_RTT)
    t = ld.timer()
    assert t == pytest.approx(0.999)  # handshake space, no max_ack_delay
    assert t is not None
    _, epoch = ld.on_timeout(t)
    assert epoch == Epoch.HANDSHAKE
    ld.discard_epoch(Epoch.HANDSHAKE)
    assert ld.pto_count == 0
    assert ld.timer() is None  # only 1-RTT in flight, not confirmed yet
    ld.handshake_confirmed = True
    assert ld.timer() == pytest.approx(0.01 + 0.999 + 0.025)


def test_client_anti_deadlock_probe() -> None:
    ld = LossDetection(is_server=False)
    send(ld, 0, 0.0, Epoch.INITIAL)
    acked, _ = ld.on_ack_received(Epoch.INITIAL, [(0, 0)], 0.5, 0.1, False)
    assert pns(acked) == [0]
    # Initial ACKs: ack delay ignored.
    assert ld.rtt.smoothed_rtt == pytest.approx(0.1)
    assert ld.ack_eliciting_in_flight == 0
    # Nothing in flight, but the server has not validated us: the timer stays armed.
    expected = 0.1 + 0.1 + 4 * 0.05
    assert ld.timer() == pytest.approx(expected)
    _, epoch = ld.on_timeout(expected)
    assert epoch == Epoch.INITIAL and ld.pto_count == 1
    ld.has_handshake_keys = True
    assert ld.timer() == pytest.approx(expected + 2 * 0.3)
    _, epoch = ld.on_timeout(expected + 0.6)
    assert epoch == Epoch.HANDSHAKE
    # A Handshake ACK completes address validation: timer off.
    send(ld, 0, 1.0, Epoch.HANDSHAKE)
    ld.on_ack_received(Epoch.HANDSHAKE, [(0, 0)], 0.0, 1.1, False)
    assert ld.peer_completed_address_validation
    assert ld.pto_count == 0
    assert ld.timer() is None


def test_amplification_limited_server_has_no_pto() -> None:
    ld = LossDetection(is_server=True)
    send(ld, 0, 0.0, Epoch.INITIAL)
    ld.amplification_limited = True
    assert ld.timer() is None
    assert ld.on_timeout(5.0) == ([], None)
    ld.amplification_limited = False
    assert ld.timer() == pytest.approx(0.999)


def test_ack_of_unsent_packet_is_protocol_violation() -> None:
    ld = server()
    send(ld, 0, 0.0)
    with pytest.raises(AckError) as info:
        ld.on_ack_received(Epoch.ONE_RTT, [(0, 1)], 0.0, 0.1, True)
    assert isinstance(info.value, QuicError)
    assert info.value.code == PROTOCOL_VIOLATION
    with pytest.raises(AckError):
        ld.on_ack_received(Epoch.HANDSHAKE, [(0, 0)], 0.0, 0.1, True)


def test_duplicate_ack_is_harmless() -> None:
    ld = server()
    send(ld, 0, 0.0)
    send(ld, 1, 0.0)
    ld.on_ack_received(Epoch.ONE_RTT, [(0, 1)], 0.0, 0.1, True)
    srtt = ld.rtt.smoothed_rtt
    assert ld.on_ack_received(Epoch.ONE_RTT, [(0, 1)], 0.0, 0.5, True) == ([], [])
    assert ld.rtt.smoothed_rtt == srtt


def test_rtt_only_from_newly_acked_largest() -> None:
    ld = server()
    send(ld, 0, 0.0)
    send(ld, 1, 0.01)
    ld.on_ack_received(Epoch.ONE_RTT, [(1, 1)], 0.0, 0.1, True)
    assert ld.rtt.latest_rtt == pytest.approx(0.09)
    # Largest (1) is not newly acked: no sample, even though 0 is.
    acked, _ = ld.on_ack_received(Epoch.ONE_RTT, [(0, 1)], 0.0, 0.3, True)
    assert pns(acked) == [0]
    assert ld.rtt.latest_rtt == pytest.approx(0.09)
    # Non-ack-eliciting only: no sample either.
    send(ld, 2, 0.4, ack_eliciting=False)
    ld.on_ack_received(Epoch.ONE_RTT, [(2, 2)], 0.0, 0.9, True)
    assert ld.rtt.latest_rtt == pytest.approx(0.09)


def test_sparse_packets_large_ranges() -> None:
    ld = server()
    for i in range(10):
        send(ld, i * 1000, i * 0.001)
    acked, lost = ld.on_ack_received(
        Epoch.ONE_RTT, [(5000, 9000), (0, 2500)], 0.0, 0.1, True
    )
    assert pns(acked) == [0, 1000, 2000, 5000, 6000, 7000, 8000, 9000]
    assert pns(lost) == [3000, 4000]


def test_huge_range_is_fast() -> None:
    ld = server()
    send(ld, 0, 0.0)
    send(ld, 50_000_000, 0.001)
    start = time.perf_counter()
    acked, _ = ld.on_ack_received(Epoch.ONE_RTT, [(0, 50_000_000)], 0.0, 0.1, True)
    assert time.perf_counter() - start < 0.05
    assert pns(acked) == [0, 50_000_000]


def test_many_packets_many_ranges() -> None:
    ld = server()
    for pn in range(2000):
        send(ld, pn, pn * 1e-5)
    # Ack every even packet: 1000 single-packet ranges, largest first.
    ranges = [(pn, pn) for pn in range(1998, -1, -2)]
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, ranges, 0.0, 0.1, True)
    assert pns(acked) == list(range(0, 2000, 2))
    assert pns(lost) == list(range(1, 1996, 2))  # 1998 >= 1995 + 3
    assert pns(ld.unacked(Epoch.ONE_RTT)) == [1997, 1999]


def test_persistent_congestion_collapses_window() -> None:
    ld = server()
    send(ld, 0, 0.0)
    ld.on_ack_received(Epoch.ONE_RTT, [(0, 0)], 0.0, 0.1, True)
    # Persistent congestion duration: (0.1 + 4*0.05 + 0.025) * 3 = 0.975 s.
    for pn, t in zip(range(1, 6), (1.0, 1.5, 2.0, 2.5, 3.0), strict=True):
        send(ld, pn, t)
    send(ld, 6, 3.1)
    _, lost = ld.on_ack_received(Epoch.ONE_RTT, [(6, 6)], 0.0, 3.2, True)
    assert pns(lost) == [1, 2, 3, 4, 5]
    assert ld.persistent_congestions == 1
    assert ld.cc.recovery_start_time is None
    # Collapsed to 2 * MDS; then pn 6 (acked in the same ACK, processed after the
    # losses as in RFC 9002 A.7) grows it in slow start by its size.
    assert ld.cc.cwnd == 3 * MDS
    assert ld.cc.ssthresh > ld.cc.cwnd


def test_no_persistent_congestion_when_ack_in_between() -> None:
    ld = server()
    send(ld, 0, 0.0)
    ld.on_ack_received(Epoch.ONE_RTT, [(0, 0)], 0.0, 0.1, True)
    for pn, t in zip(range(1, 6), (1.0, 1.5, 2.0, 2.5, 3.0), strict=True):
        send(ld, pn, t)
    send(ld, 6, 3.1)
    cwnd = ld.cc.cwnd
    _, lost = ld.on_ack_received(Epoch.ONE_RTT, [(6, 6), (3, 3)], 0.0, 3.2, True)
    assert pns(lost) == [1, 2, 4, 5]
    assert ld.persistent_congestions == 0
    assert ld.cc.cwnd == cwnd // 2


def test_discard_epoch_removes_bytes_without_congestion() -> None:
    ld = LossDetection(is_server=True)
    send(ld, 0, 0.0, Epoch.INITIAL)
    send(ld, 1, 0.0, Epoch.INITIAL)
    send(ld, 0, 0.0, Epoch.HANDSHAKE)
    t = ld.timer()
    assert t is not None
    assert ld.on_timeout(t) == ([], Epoch.INITIAL)
    assert ld.pto_count == 1
    cwnd = ld.cc.cwnd
    removed = ld.discard_epoch(Epoch.INITIAL)
    assert pns(removed) == [0, 1]
    assert ld.bytes_in_flight == MDS
    assert ld.cc.cwnd == cwnd and ld.cc.congestion_events == 0
    assert ld.pto_count == 0
    assert ld.on_ack_received(Epoch.INITIAL, [(0, 1)], 0.0, 1.0, False) == ([], [])
    with pytest.raises(ValueError):
        send(ld, 2, 1.0, Epoch.INITIAL)


def test_discard_zero_rtt_keeps_one_rtt() -> None:
    ld = LossDetection(is_server=False)
    send(ld, 0, 0.0, Epoch.ZERO_RTT)
    send(ld, 1, 0.0, Epoch.ZERO_RTT)
    send(ld, 2, 0.1, Epoch.ONE_RTT)
    removed = ld.discard_epoch(Epoch.ZERO_RTT)
    assert pns(removed) == [0, 1]
    assert pns(ld.unacked(Epoch.ONE_RTT)) == [2]
    assert ld.bytes_in_flight == MDS
    with pytest.raises(ValueError):
        send(ld, 2, 0.2, Epoch.ONE_RTT)  # pn must keep growing in the shared space


def test_lose_all_and_reset_path() -> None:
    ld = server("cubic")
    send(ld, 0, 0.0, Epoch.HANDSHAKE)
    send(ld, 0, 0.0)
    send(ld, 1, 0.0)
    out = ld.lose_all()
    assert [(p.epoch, p.pn) for p in out] == [
        (Epoch.HANDSHAKE, 0),
        (Epoch.ONE_RTT, 0),
        (Epoch.ONE_RTT, 1),
    ]
    assert ld.bytes_in_flight == 0 and ld.ack_eliciting_in_flight == 0
    assert ld.cc.congestion_events == 0
    send(ld, 2, 1.0)
    ld.reset_path(1.5)
    assert ld.cc.algorithm == "cubic" and ld.bytes_in_flight == MDS
    assert not ld.rtt.has_sample
