"""Stream buffers against a hostile or unlucky peer (issue 10, items 2, 5 and 6).

Retransmission ranges never reach below what was acknowledged; out-of-order data is
stored once (no overlap), in a bounded number of pieces, at a cost per piece that does
not grow with the pieces already stored.
"""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.transport.snapshot_check import check_recv_stream
from quicflow.transport.streams import MAX_RANGES, ReassemblyFull, RecvStream, SendStream


def _recv(limit: int = 1 << 20) -> RecvStream:
    return RecvStream(max_data=limit, window=limit, window_max=limit)


def _send_all(send: SendStream, size: int = 1000) -> list[tuple[int, bytes, bool, int]]:
    sent = []
    while (chunk := send.next_chunk(size, 1 << 30)) is not None:
        sent.append(chunk)
    return sent


# ---------------------------------------------------------------------- item 2


def test_lost_range_acknowledged_later_is_not_resent_from_a_compacted_buffer() -> None:
    """A range declared lost, then acknowledged (a late ACK) while the buffer is
    compacted: the next chunk must carry the right bytes, never an empty or shifted
    slice (the stream stalled, or sent wrong bytes)."""
    payload = random.Random(2).randbytes(200_000)
    send = SendStream(max_data=1 << 30)
    send.write(payload, fin=True)
    _send_all(send)
    send.on_lost(100_000, 2_000, False)  # [100000, 102000) lost ...
    send.on_acked(0, 101_000, False)  # ... and [0, 101000) acknowledged afterwards
    chunk = send.next_chunk(1000, 1 << 30)
    assert chunk is not None
    offset, data, _, _ = chunk
    assert offset >= 101_000
    assert data == payload[offset : offset + len(data)] and data
    # nothing below the acknowledged offset is ever offered again
    while (chunk := send.next_chunk(1000, 1 << 30)) is not None:
        assert chunk[0] >= send.acked_offset and chunk[1] == payload[chunk[0]:][: len(chunk[1])]


def test_lost_range_entirely_acknowledged_is_dropped_not_sent_empty() -> None:
    payload = random.Random(3).randbytes(150_000)
    send = SendStream(max_data=1 << 30)
    send.write(payload, fin=False)
    _send_all(send)
    send.on_lost(100_000, 1_000, False)
    send.on_acked(0, 140_000, False)
    assert send.next_chunk(1000, 1 << 30) is None  # nothing to resend: all acknowledged
    assert not send.has_data_to_send()


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_send_stream_under_random_loss_and_ack_order_delivers_exact_bytes(seed: int) -> None:
    """Random losses and ACKs in any order: every chunk offered carries the bytes of
    its offset, and once everything is acknowledged nothing is left to send."""
    rng = random.Random(seed)
    payload = rng.randbytes(rng.randint(70_000, 300_000))
    send = SendStream(max_data=1 << 30)
    send.write(payload, fin=True)
    in_flight: list[tuple[int, int, bool]] = []
    received = bytearray(len(payload))
    for _ in range(3000):
        chunk = send.next_chunk(rng.choice((700, 1200)), 1 << 30)
        if chunk is not None:
            offset, data, fin, _ = chunk
            assert data == payload[offset : offset + len(data)]
            received[offset : offset + len(data)] = data
            in_flight.append((offset, len(data), fin))
        if in_flight and (chunk is None or rng.random() < 0.5):
            record = in_flight.pop(rng.randrange(len(in_flight)))
            if rng.random() < 0.2:
                send.on_lost(*record)
            else:
                send.on_acked(*record)
        if send.is_complete():
            break
    while in_flight:
        send.on_acked(*in_flight.pop())
    while (chunk := send.next_chunk(1200, 1 << 30)) is not None:
        offset, data, fin, _ = chunk
        assert data == payload[offset : offset + len(data)]
        send.on_acked(offset, len(data), fin)
    assert send.is_complete()


# ---------------------------------------------------------------------- items 5 and 6


def test_repeated_out_of_order_frame_is_stored_once() -> None:
    recv = _recv()
    piece = random.Random(4).randbytes(1000)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(5000):  # each frame arrives as its own bytes object
            recv.receive(500_000, bytes(bytearray(piece)), False)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - base < 100_000  # one copy (1 kB) plus bookkeeping, not 5 MB
    assert recv.out_of_order_bytes == 1000


def test_overlapping_out_of_order_frames_store_each_byte_once() -> None:
    rng = random.Random(5)
    data = rng.randbytes(100_000)
    recv = _recv()
    for _ in range(3000):
        start = rng.randrange(1, len(data) - 1)
        end = min(len(data), start + rng.randint(1, 3000))
        recv.receive(start, data[start:end], False)
        assert recv.out_of_order_bytes <= len(data)
    recv.receive(0, data[:1], False)  # the missing first byte
    recv.receive(0, data, True)
    assert hashlib.sha256(recv.read()).digest() == hashlib.sha256(data).digest()
    assert recv.out_of_order_bytes == 0 and recv.at_eof()


def test_pieces_per_stream_are_bounded_and_refused_beyond() -> None:
    """1-byte frames two bytes apart across a 1 MiB window: the stream stores a
    bounded number of pieces; beyond it, a piece is refused (its packet is treated as
    lost, not acknowledged) and the stream stays consistent."""
    recv = _recv(1 << 20)
    stored = refused = 0
    for offset in range(2, 1 << 20, 2):
        try:
            recv.receive(offset, b"x", False)
            stored += 1
        except ReassemblyFull:
            refused += 1
    assert refused > 0
    assert recv.out_of_order_pieces == stored <= (1 << 20) // 1024
    # in-order data is never refused, and draining leaves nothing behind
    recv.receive(0, bytes(1 << 20), False)
    assert recv.readable == 1 << 20 and recv.out_of_order_pieces == 0


def test_in_order_data_filling_many_gaps_at_once_is_linear() -> None:
    """One frame that fills every gap drains the stored pieces in one pass (the
    pieces were kept in a sorted list and removed one by one with pop(0))."""
    recv = _recv(1 << 22)
    data = random.Random(6).randbytes(1 << 22)
    for offset in range(4096, len(data), 8192):
        recv.receive(offset, data[offset : offset + 4096], False)
    assert recv.out_of_order_pieces == len(range(4096, len(data), 8192))
    recv.receive(0, data, True)
    assert recv.read() == data and recv.out_of_order_pieces == 0


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.data())
def test_reassembly_with_overlaps_and_duplicates_is_byte_exact(
    seed: int, draw: st.DataObject
) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(1, 30_000))
    frames = []
    for _ in range(rng.randint(1, 80)):
        start = rng.randrange(len(data))
        end = min(len(data), start + rng.randint(1, 4000))
        frames.append((start, end))
    pos = 0
    while pos < len(data):  # make sure everything is covered
        n = rng.randint(1, 3000)
        frames.append((pos, min(len(data), pos + n)))
        pos += n
    rng.shuffle(frames)
    recv = _recv(1 << 20)
    out = bytearray()
    for start, end in frames:
        recv.receive(start, data[start:end], end == len(data))
        assert recv.out_of_order_bytes <= len(data)
        if draw.draw(st.booleans()):
            out += recv.read()
    out += recv.read()
    assert bytes(out) == data and recv.at_eof()
    assert recv.out_of_order_pieces == 0


def test_gaps_per_stream_are_bounded_even_with_a_huge_window() -> None:
    """Descending 1-KiB pieces with gaps between them, in a 1 GiB window (so the charge
    is no limit): at most MAX_RANGES gaps are kept, each new one costs a binary search
    and a bounded insertion; pieces that touch a stored range are still taken."""
    recv = _recv(1 << 30)
    refused = 0
    top = 2048 * (MAX_RANGES + 500)
    for offset in range(top, 0, -2048):  # always in front of everything stored
        try:
            recv.receive(offset, bytes(1024), False)
        except ReassemblyFull:
            refused += 1
    assert len(recv.chunk_ranges) == MAX_RANGES and refused == 500
    first = recv.chunk_ranges.starts[0]
    recv.receive(first - 1024, bytes(1024), False)  # adjacent to a range: accepted
    assert len(recv.chunk_ranges) == MAX_RANGES
    recv.receive(0, bytes(top + 1024), True)
    assert recv.readable == top + 1024 and recv.out_of_order_pieces == 0


@pytest.mark.parametrize("order", ["ascending", "shuffled"])
def test_small_pieces_within_the_window_are_never_refused(order: str) -> None:
    """RFC 9000 §2.2: data received out of order is buffered up to the advertised limit.
    A peer that resends in pieces of a few hundred bytes (picoquic under loss: 617
    pieces of 939 bytes on average behind one gap) must not be refused because each
    piece is charged PIECE_COST: refused, the stream stalled for good (the gap's bytes
    came in packets that also held a refused piece). A 64 KiB window, a 1200-byte gap
    at its start, the rest in 600- and 7-byte frames."""
    limit = 64 * 1024
    data = random.Random(11).randbytes(limit)
    frames = []
    pos = 1200
    while pos < limit:
        size = min(7 if len(frames) % 5 == 4 else 600, limit - pos)
        frames.append((pos, pos + size))
        pos += size
    if order == "shuffled":
        random.Random(12).shuffle(frames)
    recv = _recv(limit)
    for start, end in frames:
        recv.receive(start, data[start:end], end == limit)  # none raises ReassemblyFull
    assert recv.out_of_order_bytes == limit - 1200
    # the small pieces were joined: no more pieces than the window holds KiB (the charge
    # may pass the window by what the last pass over the pieces left unjoined)
    assert recv.out_of_order_pieces <= limit // 1024
    recv.receive(0, data[:1200], False)  # the gap
    assert recv.read() == data and recv.at_eof() and recv.out_of_order_pieces == 0
    assert recv.chunk_cost == 0


def test_a_piece_between_stored_ranges_is_taken_whatever_the_charge() -> None:
    """picoquic under 20 % loss with a 32 KiB stream window: 1210 bytes missing at the
    front, the rest of the window stored but 9 bytes between two ranges, the charge
    over the room. The 9 bytes add no gap: refused, they came again and again in the
    packet that also held the front's bytes, and the stream never moved. Taken, the
    front's bytes follow and everything reads back exact."""
    limit = 21 * 1024
    data = random.Random(13).randbytes(limit)
    hole = (9000, 9009)
    recv = _recv(limit)
    pos = 1210
    refused = 0
    while pos < limit:
        end = min(pos + 600, limit)
        for start, stop in ((pos, min(end, hole[0])), (max(pos, hole[1]), end)):
            if start < stop:
                try:
                    recv.receive(start, data[start:stop], stop == limit)
                except ReassemblyFull:
                    refused += 1
        pos = end
    assert refused == 0 and len(recv.chunk_ranges) == 2
    assert recv.chunk_cost > recv.max_data - recv.read_offset - 1024  # no room for 1 KiB
    recv.receive(hole[0], data[hole[0] : hole[1]], False)  # no ReassemblyFull
    assert len(recv.chunk_ranges) == 1
    recv.receive(0, data[:1210], False)
    assert recv.read() == data and recv.at_eof() and recv.chunk_cost == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_small_window_reassembly_stays_consistent_and_exact(seed: int) -> None:
    """Random frames of 1-700 bytes (duplicates, overlaps) in a 16 KiB window, so the
    charge binds and pieces are joined or refused: the stored pieces always tile their
    ranges with matching counters, and once everything arrived the bytes are exact."""
    rng = random.Random(seed)
    limit = 16 * 1024
    data = rng.randbytes(limit)
    recv = _recv(limit)
    frames = []
    for _ in range(rng.randint(20, 200)):
        start = rng.randrange(1, limit)
        frames.append((start, min(limit, start + rng.randint(1, 700))))
    for start, end in frames:
        try:
            recv.receive(start, data[start:end], end == limit)
        except ReassemblyFull:
            pass
        check_recv_stream(recv, "recv")
    recv.receive(0, data, True)
    check_recv_stream(recv, "recv")
    assert recv.read() == data and recv.at_eof() and recv.chunk_cost == 0


def test_tiny_frames_past_the_charge_do_not_each_walk_every_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer's 1-byte frames, each next to a stored range, once the charge binds: each
    is taken (it opens no gap), but a pass over all stored pieces (O(pieces)) is made
    only when the overcharge has grown by 1 KiB per 16 pieces since the last one. A pass
    per frame let a packet of 1-byte frames walk ~1000 pieces for each of its frames."""
    limit = 1 << 20
    data = random.Random(14).randbytes(limit)
    recv = _recv(limit)
    for offset in range(24, limit - 1024, 1024):  # the charge at once: 1000-byte
        recv.receive(offset, data[offset : offset + 1000], False)  # pieces, 24-byte gaps
    passes = 0
    small_runs = RecvStream._small_runs

    def counted(self: RecvStream) -> tuple[list[tuple[int, list[int]]], int]:
        nonlocal passes
        passes += 1
        return small_runs(self)

    monkeypatch.setattr(RecvStream, "_small_runs", counted)
    frames = 0
    for gap in range(1024, 1024 * 44, 1024):  # 43 gaps filled byte by byte
        for offset in range(gap, gap + 24):
            recv.receive(offset, data[offset : offset + 1], False)  # never refused
            frames += 1
    assert 0 < passes <= frames // 16  # (a pass per frame past the charge before)
    # bounded as before, but for the pieces stored since the last pass (1 in 16)
    assert recv.out_of_order_pieces <= (limit // 1024) * 17 // 16
    recv.receive(0, data, True)
    assert recv.read() == data and recv.at_eof() and recv.chunk_cost == 0
