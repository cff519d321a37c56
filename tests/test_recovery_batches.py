"""Loss detection over batch records: ACK ranges and loss thresholds applied by range
arithmetic to one record per sent batch."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.transport.recovery import LossDetection, SentPacket


def _batch(pn: int, count: int, t: float, unit: int = 1200, last: int = 1200) -> SentPacket:
    size = unit * (count - 1) + last
    return SentPacket(pn, t, size, True, True, Epoch.ONE_RTT, ["run"], count, unit)


def _ld() -> LossDetection:
    ld = LossDetection()
    ld.handshake_confirmed = True
    return ld


def test_whole_batch_acked_is_one_record() -> None:
    ld = _ld()
    ld.on_packet_sent(_batch(0, 50, 0.0, last=700))
    assert ld.bytes_in_flight == 49 * 1200 + 700
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(0, 49)], 0.0, 0.01, True)
    assert len(acked) == 1 and acked[0].count == 50 and not lost
    assert ld.bytes_in_flight == 0 and ld.packets_acked == 50


def test_partial_ack_splits_and_keeps_the_rest_outstanding() -> None:
    ld = _ld()
    ld.on_packet_sent(_batch(0, 10, 0.0, last=500))
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(2, 3)], 0.0, 0.001, True)
    assert [(p.pn, p.count, p.base_pn, p.size) for p in acked] == [(2, 2, 0, 2400)]
    # packet 0 is 3 below the largest acked: lost by count; 1 waits for the time threshold
    assert [(p.pn, p.count, p.base_pn) for p in lost] == [(0, 1, 0)]
    assert ld.bytes_in_flight == 1200 + 5 * 1200 + 500
    assert ld.timer() is not None
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(4, 9), (2, 3)], 0.0, 0.0011, True)
    assert [(p.pn, p.count) for p in acked] == [(4, 6)]
    assert acked[0].size == 5 * 1200 + 500  # includes the shorter last packet
    assert [(p.pn, p.count, p.base_pn) for p in lost] == [(1, 1, 0)]
    assert ld.bytes_in_flight == 0


def test_packet_threshold_cuts_a_batch() -> None:
    ld = _ld()
    ld.on_packet_sent(_batch(0, 20, 0.0))
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(10, 12)], 0.0, 0.001, True)
    # 0..9 below largest 12 - 3 = 9: lost; 13..19 outstanding
    assert [(p.pn, p.count) for p in lost] == [(0, 10)]
    assert ld.bytes_in_flight == 7 * 1200


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_bytes_and_packets_are_conserved(seed: int) -> None:
    """Any ACK pattern over batches: every packet ends up acked or lost exactly once, and
    the bytes in flight return to zero."""
    rng = random.Random(seed)
    ld = _ld()
    pn = 0
    total = 0
    for _ in range(rng.randint(1, 8)):
        count = rng.randint(1, 60)
        last = rng.randint(100, 1200)
        ld.on_packet_sent(_batch(pn, count, 0.0, last=last))
        total += count
        pn += count
    seen: dict[int, int] = {}
    now = 0.001
    for _ in range(rng.randint(1, 6)):
        lo = rng.randint(0, pn - 1)
        hi = rng.randint(lo, pn - 1)
        acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(lo, hi)], 0.0, now, True)
        for p in acked + lost:
            for x in range(p.pn, p.pn + p.count):
                seen[x] = seen.get(x, 0) + 1
        now += 0.001
    acked, lost = ld.on_ack_received(Epoch.ONE_RTT, [(0, pn - 1)], 0.0, now, True)
    for p in acked + lost:
        for x in range(p.pn, p.pn + p.count):
            seen[x] = seen.get(x, 0) + 1
    assert sorted(seen) == list(range(total)) and set(seen.values()) == {1}
    assert ld.bytes_in_flight == 0
