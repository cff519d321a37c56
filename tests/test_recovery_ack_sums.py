"""The per-ACK shortcuts of the sender's ACK processing leave the state the RFC's steps
would: consecutive acknowledged bytes of a stream handed to the send buffer as one range
(recovery_glue.on_acked_packets), the loss walk skipped when nothing is outstanding at
or below the largest acknowledged, split batches put back without a full sort."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.transport.recovery import LossDetection, SentPacket
from quicflow.transport.streams import SendStream


def _state(s: SendStream) -> tuple[object, ...]:
    return (s.acked_offset, list(s.acked), list(s.lost), s.fin_acked, s.buffer_start,
            list(s.chunk_ends), [bytes(c) for c in s.chunks])


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_one_range_per_run_of_acked_bytes_leaves_the_same_buffer(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(1, 20_000))
    one, each = SendStream(), SendStream()
    pieces: list[tuple[int, int, bool]] = []
    for s in (one, each):
        s.max_data = 1 << 30
        pos = 0
        while pos < len(data):  # written in pieces of any size, the last one with FIN
            n = rng.randint(1, 6000)
            s.write(data[pos:pos + n], fin=pos + n >= len(data))
            pos += n
    while (chunk := one.next_chunk(rng.randint(1, 3000), 1 << 30)) is not None:
        each.next_chunk(len(chunk[1]) or 1, 1 << 30)
        pieces.append((chunk[0], len(chunk[1]), chunk[2]))
    assert each.next_offset == one.next_offset == len(data)
    for offset, length, fin in pieces:
        if rng.random() < 0.2:  # some declared lost before their ACK arrives
            one.on_lost(offset, length, fin)
            each.on_lost(offset, length, fin)
    order = list(range(len(pieces)))
    rng.shuffle(order)
    released_one = released_each = 0
    while order:  # ACK frames, each acknowledging some pieces in offset order
        frame = sorted(order[: rng.randint(1, 5)])
        del order[: len(frame)]
        for i in frame:
            released_each += each.on_acked(*pieces[i])
        run: list[int] = []
        for i in frame + [-1]:  # merge consecutive pieces, as on_acked_packets does
            if run and i >= 0 and pieces[i][0] == pieces[run[-1]][0] + pieces[run[-1]][1] \
                    and not pieces[run[-1]][2]:
                run.append(i)
                continue
            if run:
                start = pieces[run[0]][0]
                end = pieces[run[-1]][0] + pieces[run[-1]][1]
                released_one += one.on_acked(start, end - start, pieces[run[-1]][2])
            run = [i]
        assert _state(one) == _state(each)
        assert released_one == released_each
    assert one.is_complete() and each.is_complete()
    assert released_one == len(data)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_nothing_left_that_the_loss_walk_would_declare_lost(seed: int) -> None:
    """After every ACK (any ranges, batches split anywhere, packets of many send times):
    the records stay keyed by their first packet number in ascending order, and the
    RFC's loss walk run again at the same time finds nothing lost and the same timer
    (after an ACK that acknowledged some packets: one that acknowledges none returns
    before the walk, RFC 9002 A.7)."""
    rng = random.Random(seed)
    ld = LossDetection()
    ld.handshake_confirmed = True
    pn = 0
    t = 0.0
    for _ in range(rng.randint(1, 12)):
        count = rng.choice((1, 1, 3, 20, 50))
        ld.on_packet_sent(SentPacket(pn, t, 1200 * count, True, True, Epoch.ONE_RTT,
                                     [], count, 1200 if count > 1 else 0))
        pn += count + rng.choice((0, 0, 0, 1))
        t += rng.choice((0.0, 0.001, 0.01))
    sp = ld.spaces[2]
    top = sp.largest_sent + 1
    now = t
    seen = 0
    for _ in range(rng.randint(1, 8)):
        now += rng.choice((0.0005, 0.002, 0.05))
        edges = sorted(rng.sample(range(top), min(top, 2 * rng.randint(1, 3))))
        ranges = [(edges[i], edges[i + 1]) for i in range(0, len(edges) - 1, 2)][::-1]
        if not ranges:
            ranges = [(edges[0], edges[0])]
        acked, lost = ld.on_ack_received(Epoch.ONE_RTT, ranges, 0.0, now, True)
        seen += sum(p.count for p in acked + lost)
        keys = list(sp.sent)
        assert keys == sorted(keys) and all(sp.sent[k].pn == k for k in keys)
        assert all(sp.sent[a].last_pn < b for a, b in zip(keys, keys[1:], strict=False))
        if acked:  # (RFC 9002 A.7: the loss walk runs when an ACK acknowledged some)
            loss_time = sp.loss_time
            assert ld._detect_lost(sp, now) == []
            assert sp.loss_time == loss_time
    left = sum(p.count for p in sp.sent.values())
    assert seen + left == ld.packets_sent
    assert ld.bytes_in_flight == 1200 * left
