"""The native engine's ACK frame handling (``crypto/_native_src/ack.c``) against its
Python twin, ``LossDetection.on_ack_received``.

For an ACK frame's common case in a bulk transfer or a handshake (one range of whole
records in any packet number space, nothing to declare lost) the C function removes the
records, takes the RTT sample and grows the window itself; everything else goes to the
method. Over whole downloads, handshakes included (0-20 % loss, both congestion
controllers, a client whose flow control ends runs) both give the same acknowledged and
lost records and leave the same sender state after every ACK frame of either side, and
the downloads arrive intact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.extension import EXT
from quicflow.transport import bulk, recovery_glue
from quicflow.transport.recovery import LossDetection, SentPacket
from tests.support import prereq
from tests.test_bulk_native import _download

_ONE_RTT = Epoch.ONE_RTT
#: what recovery_glue gives ack_setup: the epochs the C function takes
_SETUP_EPOCHS = (Epoch.ONE_RTT, Epoch.INITIAL, Epoch.HANDSHAKE)


def _records(packets: list[SentPacket]) -> list[tuple[Any, ...]]:
    # (a handshake's CRYPTO records differ by a byte from run to run: the ECDSA
    # signature's length varies; their frames are left out)
    return [(p.pn, p.count, p.size, p.unit, p.base_pn, p.time_sent, p.ack_eliciting,
             p.in_flight, p.epoch, tuple(p.frames) if p.epoch == _ONE_RTT else None)
            for p in packets]  # type: ignore[arg-type]


def _state(loss: LossDetection, result: tuple[list[SentPacket], list[SentPacket]]
           ) -> tuple[Any, ...]:
    rtt, cc = loss.rtt, loss.cc
    spaces = [(sp.largest_sent, sp.largest_acked, sp.loss_time, sp.last_ack_eliciting_time,
               sp.ack_eliciting_in_flight, sp.discarded, _records(list(sp.sent.values())))
              for sp in loss.spaces]
    floats = (rtt.latest_rtt, rtt.smoothed_rtt, rtt.rttvar, rtt.min_rtt, cc.ca_acked,
              loss.first_rtt_sample_time, loss.timer_anchor)
    return (
        _records(result[0]), _records(result[1]), spaces, floats,
        tuple(type(f).__name__ for f in floats), rtt.has_sample, cc.cwnd, cc.ssthresh,
        cc.bytes_in_flight, cc.recovery_start_time, cc.congestion_events,
        cc.cubic_w_max, cc.cubic_t_epoch, cc.cubic_w_est, loss.packets_acked,
        loss.packets_lost, loss.pto_count, loss.handshake_confirmed,
        loss.peer_completed_address_validation,
    )


def _traced(monkeypatch: pytest.MonkeyPatch, ack: Callable[..., Any], size: int,
            loss: float, max_data: int | None, algorithm: str, lossy_until: int
            ) -> list[tuple[Any, ...]]:
    trace: list[tuple[Any, ...]] = []

    def traced(det: LossDetection, *args: Any) -> tuple[list[SentPacket], list[SentPacket]]:
        result: tuple[list[SentPacket], list[SentPacket]] = ack(det, *args)
        trace.append(_state(det, result))
        return result

    with monkeypatch.context() as m:
        m.setattr(recovery_glue, "_ack_received", traced)
        _download(monkeypatch, bulk.build_bulk, size, loss, max_data, algorithm=algorithm,
                  lossy_until=lossy_until)
    return trace


@pytest.mark.parametrize(
    ("size", "loss", "max_data", "algorithm", "lossy_until", "c_share"),
    [(3 << 20, 0.0, None, "cubic", 0, 0.9), (3 << 20, 0.03, None, "cubic", 0, 0.0),
     (1 << 20, 0.2, None, "cubic", 0, 0.0), (2 << 20, 0.01, 96 * 1024, "cubic", 0, 0.0),
     (3 << 20, 0.02, None, "newreno", 0, 0.0),
     # losses early, then none (the receiver keeps reporting the old gaps: the twin's)
     (4 << 20, 0.05, None, "cubic", 512 * 1024, 0.0),
     (4 << 20, 0.05, None, "newreno", 512 * 1024, 0.0)],
)
def test_native_ack_received_matches_python(
    monkeypatch: pytest.MonkeyPatch, require: Callable[[bool, str], None],
    size: int, loss: float, max_data: int | None, algorithm: str, lossy_until: int,
    c_share: float,
) -> None:
    require(EXT is not None, "the native extension is not built")
    twin_calls = 0
    handshake_twin_calls = 0
    handshake_frames = 0

    def counted_twin(*args: Any) -> Any:
        nonlocal twin_calls, handshake_twin_calls
        twin_calls += 1
        handshake_twin_calls += args[1] != _ONE_RTT
        return LossDetection.on_ack_received(*args)

    def counted_native(*args: Any) -> Any:
        nonlocal handshake_frames
        handshake_frames += args[1] != _ONE_RTT
        return EXT.ack_received(*args)

    EXT.ack_setup(counted_twin, *_SETUP_EPOCHS)
    try:
        native = _traced(monkeypatch, counted_native, size, loss, max_data, algorithm,
                         lossy_until)
    finally:
        EXT.ack_setup(LossDetection.on_ack_received, *_SETUP_EPOCHS)
    python = _traced(monkeypatch, LossDetection.on_ack_received, size, loss, max_data,
                     algorithm, lossy_until)
    assert len(native) == len(python) > 20
    for i, (a, b) in enumerate(zip(native, python, strict=True)):
        assert a == b, f"ACK frame {i}"
    # the C function took its share of the frames itself (the handshake's, several
    # ranges (a loss leaves gaps), splits, loss walks, congestion avoidance: the twin's)
    assert len(native) - twin_calls >= c_share * len(native)
    if not loss:  # the handshake's Initial and Handshake ACK frames too
        assert handshake_frames >= 2
        assert handshake_twin_calls < handshake_frames


@st.composite
def _detector(draw: st.DrawFn) -> tuple[Epoch, LossDetection, list[tuple[int, int]], float,
                                        float, bool]:
    """A loss detector with records (packets and batches, with gaps) in one packet number
    space, a window in any state, and one ACK range."""
    epoch = draw(st.sampled_from([Epoch.INITIAL, Epoch.HANDSHAKE, _ONE_RTT]))
    loss = LossDetection(is_server=draw(st.booleans()))
    loss.handshake_confirmed = draw(st.booleans())
    loss.peer_completed_address_validation = draw(st.booleans())
    loss.max_ack_delay = draw(st.sampled_from([0.0, 0.001, 0.025, 0.3]))
    loss.packets_acked = draw(st.integers(0, 1000))
    loss.pto_count = draw(st.integers(0, 5))
    if draw(st.booleans()):
        loss.first_rtt_sample_time = 0.5
    rtt = loss.rtt
    if draw(st.booleans()):
        rtt.update(draw(st.floats(0.0001, 0.5)), 0.0, True, 0.025)
        rtt.update(draw(st.floats(0.0001, 0.5)), draw(st.floats(0.0, 0.05)), True, 0.025)
    cc = loss.cc
    cc.cwnd = draw(st.integers(2400, 1 << 24))
    cc.ssthresh = draw(st.sampled_from([cc.ssthresh, cc.cwnd, cc.cwnd * 2, 2400]))
    cc.app_limited = draw(st.booleans())
    # the ensemble's ceiling (ensemble.py): none, below, at or above the window
    cc.ss_ceiling = draw(st.sampled_from(
        [cc.ss_ceiling, cc.cwnd // 2, cc.cwnd, cc.cwnd + 1, cc.cwnd * 2]))
    sp = loss.spaces[(Epoch.INITIAL, Epoch.HANDSHAKE, _ONE_RTT).index(epoch)]
    pn = draw(st.integers(0, 5000))
    now = 10.0
    flight = 0
    for _ in range(draw(st.integers(1, 12))):
        pn += draw(st.sampled_from([0, 0, 0, 1, 7]))  # gaps: records acked before
        count = draw(st.sampled_from([1, 1, 2, 30, 64]))
        unit = 1200
        size = count * unit - draw(st.integers(0, 1100))
        t = now + pn * 1e-5
        p = SentPacket(pn, t, size, draw(st.booleans()), draw(st.booleans()), epoch,
                       [], count, unit)
        sp.sent[pn] = p
        sp.largest_sent = pn + count - 1
        if p.in_flight:
            flight += size
            if p.ack_eliciting:
                sp.ack_eliciting_in_flight += count
        pn += count
    cc.bytes_in_flight = flight + draw(st.integers(0, 5000))
    keys = list(sp.sent)
    sp.largest_acked = draw(st.sampled_from([-1, keys[0] - 1, keys[-1]]))
    if draw(st.booleans()):  # a recovery period began when one of them was sent
        cc.recovery_start_time = draw(st.sampled_from([p.time_sent
                                                       for p in sp.sent.values()]))
    last = sp.largest_sent
    lo = draw(st.integers(0, last))
    hi = draw(st.integers(lo, last + 2))
    if draw(st.booleans()):  # the common shape: from the oldest to a record's end
        first = sp.sent[keys[0]]
        lo = draw(st.sampled_from([0, first.pn]))
        ends = [p.pn + p.count - 1 for p in sp.sent.values()]
        hi = draw(st.sampled_from(ends))
    return epoch, loss, [(lo, hi)], draw(st.sampled_from([0.0, 0.0004, 0.03])), now + 0.2, (
        draw(st.booleans()))


@settings(max_examples=400, deadline=None)
@given(case=_detector())
def test_native_ack_received_matches_python_on_any_state(
    case: tuple[Epoch, LossDetection, list[tuple[int, int]], float, float, bool],
) -> None:
    """Random detector states and one-range ACKs in any space: the C function (or the twin it hands
    the frame to) leaves the state the method leaves and returns the same records, or
    raises the same error."""
    prereq.require(EXT is not None, "the native extension is not built")
    epoch, loss, ranges, ack_delay, now, confirmed = case
    a, b = copy.deepcopy(loss), copy.deepcopy(loss)
    outcome: list[Any] = []
    for det, fn in ((a, EXT.ack_received), (b, LossDetection.on_ack_received)):
        try:
            result = fn(det, epoch, list(ranges), ack_delay, now, confirmed)
        except Exception as exc:  # noqa: BLE001 - the same error either way
            outcome.append((type(exc), str(exc)))
        else:
            outcome.append(_state(det, result))
    assert outcome[0] == outcome[1]
