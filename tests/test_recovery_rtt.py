"""RTT estimator math, RFC 9002 §5.3."""

from __future__ import annotations

import pytest

from quicflow.transport.rtt import GRANULARITY, INITIAL_RTT, RttEstimator


def test_initial_values() -> None:
    r = RttEstimator()
    assert r.smoothed_rtt == INITIAL_RTT == 0.333
    assert r.rttvar == pytest.approx(0.1665)
    assert not r.has_sample
    # PTO before any sample: 333 ms + 4 * 166.5 ms = 999 ms.
    assert r.pto_duration(0.025, False) == pytest.approx(0.999)
    assert r.pto_duration(0.025, True) == pytest.approx(1.024)


def test_first_sample_sets_everything() -> None:
    r = RttEstimator()
    r.update(0.1, ack_delay=0.05, handshake_confirmed=True, max_ack_delay=0.025)
    assert r.has_sample
    assert r.latest_rtt == 0.1
    assert r.min_rtt == 0.1
    assert r.smoothed_rtt == 0.1  # ack delay ignored on the first sample
    assert r.rttvar == 0.05


def test_ack_delay_capped_after_confirmation() -> None:
    r = RttEstimator()
    r.update(0.1, 0.0, True, 0.025)
    r.update(0.2, ack_delay=0.03, handshake_confirmed=True, max_ack_delay=0.025)
    adjusted = 0.2 - 0.025
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * abs(0.1 - adjusted))
    assert r.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * adjusted)
    assert r.min_rtt == 0.1


def test_ack_delay_not_capped_before_confirmation() -> None:
    r = RttEstimator()
    r.update(0.1, 0.0, False, 0.025)
    r.update(0.2, ack_delay=0.03, handshake_confirmed=False, max_ack_delay=0.025)
    assert r.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.17)


def test_ack_delay_not_subtracted_below_min_rtt() -> None:
    r = RttEstimator()
    r.update(0.1, 0.0, True, 0.025)
    r.update(0.11, ack_delay=0.02, handshake_confirmed=True, max_ack_delay=0.025)
    # 0.11 < min_rtt + ack_delay = 0.12: the raw sample is used.
    assert r.smoothed_rtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.11)
    assert r.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.01)


def test_min_rtt_tracks_raw_samples() -> None:
    r = RttEstimator()
    r.update(0.1, 0.0, True, 0.025)
    r.update(0.05, 0.04, True, 0.025)
    assert r.min_rtt == 0.05
    assert r.latest_rtt == 0.05


def test_converges_to_constant_rtt() -> None:
    r = RttEstimator()
    for _ in range(200):
        r.update(0.04, 0.0, True, 0.025)
    assert r.smoothed_rtt == pytest.approx(0.04)
    assert r.rttvar < 1e-6
    # rttvar is tiny: the granularity floor applies.
    assert r.pto_duration(0.0, False) == pytest.approx(0.04 + GRANULARITY)


def test_loss_delay() -> None:
    r = RttEstimator()
    r.update(0.08, 0.0, True, 0.025)
    r.update(0.16, 0.0, True, 0.025)
    assert r.loss_delay() == pytest.approx(9 / 8 * 0.16)
    tiny = RttEstimator(latest_rtt=1e-5, smoothed_rtt=1e-5, has_sample=True)
    assert tiny.loss_delay() == GRANULARITY


def test_first_sample_before_confirmation_subtracts_a_long_reported_delay() -> None:
    # a resent ACK or an ACK of packets held without keys (RFC 9000 §13.2.5) reports a
    # delay above max_ack_delay: the first sample takes the path's RTT, not the wait
    r = RttEstimator()
    r.update(1.004, ack_delay=1.0, handshake_confirmed=False, max_ack_delay=0.025)
    assert r.smoothed_rtt == pytest.approx(0.004)
    assert r.min_rtt == 1.004  # min_rtt stays the raw sample (RFC 9002 §5.2)
    # delays within max_ack_delay, after confirmation, or longer than the sample itself
    # (not believable) leave the first sample whole, as RFC 9002 §5.3 does
    for delay, confirmed in ((0.02, False), (1.0, True), (1.5, False)):
        r = RttEstimator()
        r.update(1.004, ack_delay=delay, handshake_confirmed=confirmed, max_ack_delay=0.025)
        assert r.smoothed_rtt == 1.004
