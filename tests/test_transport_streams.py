"""Stream buffers: reassembly, flow control, final size, and reading after FIN."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.transport.errors import FINAL_SIZE_ERROR, FLOW_CONTROL_ERROR, QuicError
from quicflow.transport.rangeset import RangeSet
from quicflow.transport.snapshot_check import check_send_stream
from quicflow.transport.streams import ReassemblyFull, RecvStream, SendStream


def _recv(limit: int = 1 << 30) -> RecvStream:
    return RecvStream(max_data=limit, window=limit, window_max=limit)


def test_everything_buffered_with_fin_is_read_in_small_pieces() -> None:
    # regression: FIN arriving before the application read all data must not end the
    # stream early
    data = random.Random(1).randbytes(300_000)
    recv = _recv()
    for offset in range(0, len(data), 1000):
        recv.receive(offset, data[offset : offset + 1000], offset + 1000 >= len(data))
    out = bytearray()
    while True:
        chunk = recv.read(4096)
        if not chunk:
            break
        assert not recv.fin_read or recv.readable == 0
        out += chunk
    assert bytes(out) == data
    assert recv.fin_read


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.data())
def test_reassembly_any_order_and_duplicates(seed: int, draw: st.DataObject) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randint(1, 20_000))
    pieces = []
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 1500)
        pieces.append((pos, data[pos : pos + n]))
        pos += n
    pieces += rng.sample(pieces, k=min(len(pieces), 5))  # duplicates
    rng.shuffle(pieces)
    recv = _recv()
    out = bytearray()
    for offset, chunk in pieces:
        recv.receive(offset, chunk, offset + len(chunk) == len(data))
        if draw.draw(st.booleans()):
            out += recv.read()
    out += recv.read()
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    assert recv.at_eof()


def test_flow_control_and_final_size_violations() -> None:
    recv = _recv(limit=1000)
    with pytest.raises(QuicError) as exc:
        recv.receive(900, b"x" * 200, False)
    assert exc.value.code == FLOW_CONTROL_ERROR
    recv = _recv()
    recv.receive(0, b"abc", True)
    with pytest.raises(QuicError) as exc:
        recv.receive(3, b"d", False)
    assert exc.value.code == FINAL_SIZE_ERROR
    recv = _recv()
    recv.receive(0, b"abcdef", False)
    with pytest.raises(QuicError) as exc:
        recv.receive(0, b"abc", True)  # final size below received data
    assert exc.value.code == FINAL_SIZE_ERROR


def test_send_stream_retransmits_lost_ranges_first_and_trims_acked() -> None:
    send = SendStream(max_data=1 << 20)
    payload = bytes(range(256)) * 1000
    send.write(payload, fin=True)
    sent = []
    while True:
        chunk = send.next_chunk(1000, 1 << 30)
        if chunk is None:
            break
        sent.append(chunk)
    assert b"".join(c[1] for c in sent) == payload and sent[-1][2]
    send.on_lost(5000, 1000, False)
    again = send.next_chunk(1000, 1 << 30)
    assert again is not None and again[0] == 5000 and again[1] == payload[5000:6000]
    assert again[3] == 0  # retransmissions do not count against flow control
    for offset, data, fin, _ in sent:
        send.on_acked(offset, len(data), fin)
    assert send.is_complete() and send.buffered == 0


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_send_stream_chunks_hold_exactly_the_unacknowledged_bytes(seed: int) -> None:
    # writes of every size (small ones coalesce, large ones stay separate chunks), sends,
    # acknowledgements in any order, losses and take_back: every byte sent or resent is
    # the byte written at that offset, and the buffer passes the snapshot check
    rng = random.Random(seed)
    send = SendStream(max_data=1 << 40)
    written = bytearray()
    in_flight: list[tuple[int, int]] = []
    for _ in range(rng.randint(1, 60)):
        op = rng.random()
        if op < 0.35:
            n = rng.choice([1, 100, 5000, 65535, 65536, 70_000, 300_000])
            data = rng.randbytes(n)
            send.write(data if rng.random() < 0.5 else bytearray(data))
            written += data
        elif op < 0.7:
            got = send.next_chunk(rng.choice([10, 1200, 100_000]), 1 << 40)
            if got is not None:
                offset, data, _, _ = got
                assert data == written[offset : offset + len(data)]
                in_flight.append((offset, len(data)))
        elif op < 0.85 and in_flight:
            offset, n = in_flight.pop(rng.randrange(len(in_flight)))
            send.on_acked(offset, n, False)
        elif op < 0.95 and in_flight:
            offset, n = in_flight.pop(rng.randrange(len(in_flight)))
            send.on_lost(offset, n, False)
        else:
            del written[send.take_back() :]
        check_send_stream(send, "s")
        assert send.write_offset == len(written)
    send.compact()
    check_send_stream(send, "s")
    assert b"".join(send.chunks) == written[send.acked_offset :]


def test_send_stream_keeps_a_large_write_without_copying_it() -> None:
    send = SendStream(max_data=1 << 30)
    big = random.Random(2).randbytes(1 << 20)
    send.write(b"head")
    send.write(big)
    send.write(b"tail")
    assert send.chunks[1] is big  # the application's bytes, not a copy
    assert [len(c) for c in send.chunks] == [4, 1 << 20, 4]
    send.next_chunk(1 << 21, 1 << 30)
    send.on_acked(0, (1 << 20) + 4, False)  # whole chunks acknowledged: dropped
    assert send.chunks == [b"tail"] and send.buffer_start == 0


def test_take_back_to_the_acknowledged_offset_leaves_no_empty_chunk() -> None:
    # regression (found by the takeover test): withdrawing everything unsent when all
    # that was sent is acknowledged left an empty first chunk, which a snapshot rejects
    send = SendStream(max_data=1 << 30)
    send.write(b"x" * 5000)
    send.next_chunk(3000, 1 << 30)
    send.on_acked(0, 3000, False)
    assert send.take_back() == 3000
    send.compact()
    check_send_stream(send, "s")
    assert send.chunks == [] and send.buffered == 0


def test_rangeset_merges_and_subtracts() -> None:
    rs = RangeSet()
    for start, end in [(10, 20), (30, 40), (20, 30), (0, 5), (50, 60)]:
        rs.add(start, end)
    assert list(rs) == [(0, 5), (10, 40), (50, 60)]
    rs.subtract(15, 55)
    assert list(rs) == [(0, 5), (10, 15), (55, 60)]
    assert 12 in rs and 15 not in rs and rs.covers(55, 60)


def _state(recv: RecvStream) -> tuple[object, ...]:
    return (recv.read_offset, recv.ready_bytes, recv.highest_offset, recv.final_size,
            dict(recv.chunks), list(recv.chunk_ranges.starts), list(recv.chunk_ranges.ends),
            recv.chunk_bytes, recv.chunk_cost, b"".join(recv.ready)[recv.ready_pos :]
            if recv.ready_head == 0 else None)


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_receive_pieces_is_receive_of_the_joined_pieces(seed: int) -> None:
    """The batch path's run of one stream through several GRO buffers comes as pieces:
    ``receive_pieces`` gives what ``receive`` of the joined bytes gives (result, error,
    the stream's state and what a read returns), in order or not, with FIN, over the
    stream's limit, after a final size, below the data received, after a reset."""
    rng = random.Random(seed)
    data = rng.randbytes(6000)
    limit = rng.choice([6000, 4000])
    streams = (_recv(limit), _recv(limit))
    for _ in range(rng.randint(0, 3)):  # a history: in order, out of order, with FIN
        start = rng.randrange(0, 5000)
        end = min(start + rng.randint(1, 1500), 6000)
        fin = end == 6000 and rng.random() < 0.3
        for recv in streams:
            try:
                recv.receive(start, data[start:end], fin)
            except (QuicError, ReassemblyFull):
                pass
    if rng.random() < 0.1:
        for recv in streams:
            recv.reset_code = 7
    if rng.random() < 0.3:
        for recv in streams:
            recv.read(rng.randint(1, 3000))
    contiguous = streams[0].read_offset + streams[0].ready_bytes
    offset = rng.choice([contiguous, contiguous, max(0, contiguous - 100),
                         min(contiguous + 700, 5000)])
    pieces = []
    pos = offset
    for _ in range(rng.randint(2, 4)):
        n = rng.randint(1, 1200)
        pieces.append(data[pos : pos + n])
        pos += n
    pieces = [p for p in pieces if p] or [b"x"]
    fin = rng.random() < 0.3
    budget = rng.choice([1 << 62, 500])
    outcomes = []
    for recv, joined in zip(streams, (True, False), strict=True):
        try:
            if joined:
                got: object = recv.receive(offset, b"".join(pieces), fin, budget)
            else:
                got = recv.receive_pieces(offset, pieces, fin, budget)
        except Exception as exc:  # noqa: BLE001 (the same error either way)
            got = (type(exc), getattr(exc, "code", None))
        outcomes.append((got, _state(recv), recv.read(), _state(recv)))
    assert outcomes[0] == outcomes[1]


def test_in_order_pieces_go_to_the_reader_without_a_copy() -> None:
    recv = _recv()
    recv.receive(0, b"abc", False)
    pieces = [b"defg", b"hij", b"klmno"]
    assert recv.receive_pieces(3, pieces, True) == 12
    assert all(any(p is q for q in recv.ready) for p in pieces)
    assert recv.read() == b"abcdefghijklmno"
    assert recv.at_eof() and recv.fin_read
