"""The one-range ACK of every outstanding record (a handshake's usual ACK) takes a short
path in LossDetection.on_ack_received: the same packets acked, in the same order, the
same state left, as the general merge walk (_remove_acked) gives."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.transport.recovery import AckError, LossDetection, SentPacket, SpaceState


def _sent(rng: random.Random) -> list[SentPacket]:
    out = []
    pn = rng.randint(0, 3)
    for _ in range(rng.randint(1, 6)):
        count = rng.choice((1, 1, 1, 4))
        unit = 1200 if count > 1 else 0
        size = 1200 * count if count > 1 else rng.randint(40, 1200)
        out.append(SentPacket(pn, 0.0, size, rng.random() < 0.8, True, Epoch.HANDSHAKE,
                              [], count, unit))
        pn += count + rng.choice((0, 0, 1))  # now and then a skipped packet number
    return out


def _view(packets: list[SentPacket]) -> list[tuple[int, int, int, int]]:
    return [(p.pn, p.count, p.size, p.base_pn) for p in packets]


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_one_range_ack_matches_the_merge_walk(seed: int) -> None:
    rng = random.Random(seed)
    records = _sent(rng)
    ld = LossDetection(is_server=True)
    for p in records:
        ld.on_packet_sent(p)
    last = records[-1].pn + records[-1].count - 1
    lo = rng.randint(0, min(records[0].pn + 1, last))
    hi = rng.randint(max(lo, last - 2), last)  # often all of it, sometimes not
    reference = SpaceState(sent={p.pn: p for p in records})
    expected = LossDetection._remove_acked(reference, [(lo, hi)])
    in_flight = ld.bytes_in_flight
    acked, _lost = ld.on_ack_received(Epoch.HANDSHAKE, [(lo, hi)], 0.0, 0.05, False)
    assert _view(acked) == _view(expected)
    sp = ld.spaces[1]
    # what is left: the records the reference kept, minus any declared lost
    assert set(sp.sent) <= set(reference.sent)
    assert ld.packets_acked == sum(p.count for p in expected)
    assert ld.bytes_in_flight <= in_flight - sum(p.size for p in expected)
    if lo <= records[0].pn and hi >= last:
        assert not sp.sent and sp.loss_time is None and ld.bytes_in_flight == 0
        assert ld.spaces[1].ack_eliciting_in_flight == 0


def test_invalid_range_is_still_refused() -> None:
    ld = LossDetection(is_server=True)
    ld.on_packet_sent(SentPacket(0, 0.0, 1200, True, True, Epoch.HANDSHAKE, [], 1, 0))
    with pytest.raises(AckError):
        ld.on_ack_received(Epoch.HANDSHAKE, [(-1, 0)], 0.0, 0.05, False)
    with pytest.raises(AckError):
        ld.on_ack_received(Epoch.HANDSHAKE, [(0, 1)], 0.0, 0.05, False)  # never sent
    acked, _ = ld.on_ack_received(Epoch.HANDSHAKE, [(0, 0)], 0.0, 0.05, False)
    assert _view(acked) == [(0, 1, 1200, -1)] and ld.bytes_in_flight == 0
