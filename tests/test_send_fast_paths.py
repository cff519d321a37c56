"""The send path's shortcuts write what the general code writes.

- ACK frames are written straight from the packet space's RangeSet: the same bytes as
  ``encode_frame(Ack(...))`` (newest 32 ranges, ECN counts, ACK delay exponent), by the
  Python code and by its C twin (which leaves what it does not take to the Python code:
  the same error and the same bytes written before it).
- A server's first flight is one datagram (Initial + Handshake, 1200 bytes) built
  without starting a 1-RTT packet: NEW_TOKEN waits for confirmation.
- NEW_CONNECTION_ID frames are written without frame objects: the encoder's bytes and
  checks; ``Pacer.consume`` at an unchanged time skips the refill, same tokens.
- A one-datagram ``send_batch`` (the usual handshake datagram) goes out in one syscall
  with send_basic's counters, and an error on it is handled as send_basic handles it.
"""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.extension import EXT
from quicflow.datapath.socket import UdpTransport
from quicflow.transport.ack_send import encode_ack_python
from quicflow.transport.congestion import Pacer
from quicflow.transport.events import NewTokenReceived
from quicflow.transport.rangeset import RangeSet
from quicflow.transport.send import _encode_ack
from quicflow.transport.state import R_CRYPTO, PacketSpace
from quicflow.wire import frames as F
from tests.support.memory_pair import SERVER_ADDR, MemoryPair

if EXT is not None:  # (done at import unless QUICFLOW_ENGINE=python: compared here anyway)
    EXT.ack_frame_setup(encode_ack_python, Epoch.ONE_RTT)
#: the ACK frame writers: the Python code and its C twin
_ACK_WRITERS = [encode_ack_python] + ([EXT.ack_frame] if EXT is not None else [])


def _reference_ack(space: PacketSpace, now: float, exponent: int) -> bytes:
    """The ACK frame as the frame encoder writes it (what send.py wrote before)."""
    received = space.received
    ranges = [(received.starts[i], received.ends[i] - 1)
              for i in range(len(received.starts) - 1, max(-1, len(received.starts) - 33), -1)]
    delay_us = int((now - space.largest_received_time) * 1_000_000)
    ecn = tuple(space.ecn_counts) if any(space.ecn_counts) else None
    out = bytearray()
    F.encode_frame(F.Ack(ranges=ranges, ack_delay=max(0, delay_us) >> exponent,
                         ecn=ecn), out)  # type: ignore[arg-type]
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 300)), min_size=1,
                  max_size=45),
    first=st.integers(0, 1 << 40),
    ecn=st.lists(st.integers(0, 1 << 33), min_size=3, max_size=3)
    | st.just([0, 0, 0]),
    delay=st.floats(-0.01, 30.0),
    one_rtt=st.booleans(),
    exponent=st.integers(0, 20),
)
def test_ack_frame_matches_the_frame_encoder(
    gaps: list[tuple[int, int]], first: int, ecn: list[int], delay: float, one_rtt: bool,
    exponent: int,
) -> None:
    space = PacketSpace()
    received = RangeSet()
    pn = first
    for gap, length in gaps:
        received.add(pn, pn + length)
        pn += length + gap
    space.received = received
    space.ecn_counts = list(ecn)
    now = 100.0
    space.largest_received_time = now - delay
    conn = SimpleNamespace(configuration=SimpleNamespace(ack_delay_exponent=exponent))
    epoch = Epoch.ONE_RTT if one_rtt else Epoch.HANDSHAKE
    for write in [_encode_ack, *_ACK_WRITERS]:  # (what send.py uses, then each)
        out = bytearray(b"\x01")  # written after what the payload already holds
        write(conn, space, out, now, epoch)
        assert bytes(out[1:]) == _reference_ack(space, now, exponent if one_rtt else 3)
    frames = F.parse_frames(bytes(out[1:]))
    ack = frames[0]
    assert isinstance(ack, F.Ack)
    assert ack.ranges[0][1] == received.ends[-1] - 1  # the largest packet first
    assert len(ack.ranges) == min(32, len(received.starts))


@pytest.mark.parametrize("case", ["empty", "negative ecn", "nan delay", "huge pn", "gap",
                                  "int time"])
def test_ack_frame_refusals_are_the_python_codes(case: str) -> None:
    """What the Python code refuses (or writes from other types) comes out the same from
    the C twin: the same exception after the same bytes, or the same bytes."""
    outcome = []
    for write in _ACK_WRITERS:
        space = PacketSpace()
        space.received.add(3, 9)
        space.largest_received_time = 99.0
        if case == "empty":
            space.received = RangeSet()
        elif case == "negative ecn":
            space.ecn_counts = [1, -1, 0]
        elif case == "nan delay":
            space.largest_received_time = float("nan")
        elif case == "huge pn":
            space.received.add(1 << 62, (1 << 62) + 1)
        elif case == "gap":
            space.received.starts.insert(0, 0)  # (a range set broken by hand: overlap)
            space.received.ends.insert(0, 7)
        else:
            space.largest_received_time = 99  # type: ignore[assignment]
        conn = SimpleNamespace(configuration=SimpleNamespace(ack_delay_exponent=3))
        out = bytearray(b"\x01")
        try:
            write(conn, space, out, 100.0, Epoch.ONE_RTT)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the same error either way
            outcome.append((type(exc), str(exc), bytes(out)))
        else:
            outcome.append((None, "", bytes(out)))
    assert len(outcome) == len(_ACK_WRITERS)
    assert all(o == outcome[0] for o in outcome)


def test_server_flight_is_one_datagram_and_new_token_still_arrives() -> None:
    pair = MemoryPair()
    client = pair.client
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    (conn,) = pair.server_conns
    flight = pair.server.datagrams_to_send(conn, pair.now)
    # Initial (ServerHello) + Handshake (EE..Finished) coalesced and padded, no 1-RTT
    # packet: nothing may go in one before the handshake is confirmed
    assert [len(d) for d in flight] == [1200]
    assert conn.counters.packets_sent == 2
    assert conn.new_token_pending  # waits for confirmation
    for d in flight:
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    pair.run(lambda: client.handshake_confirmed)
    pair.run(lambda: not conn.new_token_pending and not conn.spaces[2].ack_pending)
    events = client.pop_events()
    assert any(isinstance(e, NewTokenReceived) for e in events)


def _receive_one(rx: UdpTransport) -> bytes:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        batch = rx.recv_batch(8)
        if batch:
            return bytes(batch[0][0])
        time.sleep(0.001)
    raise AssertionError("nothing arrived")


def test_one_datagram_send_counts_one_syscall() -> None:
    with (
        UdpTransport.open("127.0.0.1", 0, backend="basic") as rx,
        UdpTransport.open("127.0.0.1", 0) as tx,
    ):
        first = bytearray(b"a" * 1200)
        assert tx.send_batch(first, 1200, rx.local_address)  # sets the ECN codepoint
        assert _receive_one(rx) == bytes(first)
        before = (tx.counters.syscalls_send, tx.counters.datagrams_sent,
                  tx.counters.bytes_sent)
        data = bytearray(b"b" * 700)
        assert tx.send_batch(data, 1200, rx.local_address)
        assert _receive_one(rx) == bytes(data)
        after = (tx.counters.syscalls_send, tx.counters.datagrams_sent,
                 tx.counters.bytes_sent)
        assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (
            1, 1, 700)


def test_connected_send_to_a_closed_port_is_counted_and_skipped() -> None:
    # A connected socket gets ECONNREFUSED on the send after the ICMP port unreachable:
    # that datagram is counted in send_errors and skipped (send_basic's rule), the
    # batch is not held back, and the next send goes out.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", closed_port))
    with UdpTransport(sock, backend="basic") as tx:
        assert tx.send_batch(b"x" * 100, 100, None)
        results = []
        deadline = time.monotonic() + 5.0
        while tx.counters.send_errors == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # the ICMP error arrives
            results.append(tx.send_batch(b"y" * 100, 100, None))
        assert tx.counters.send_errors == 1
        assert all(results)  # never held back in the pending queue
        assert not tx.has_pending()


def _new_cid_reference(conn: object) -> bytes:
    """The NEW_CONNECTION_ID frames of the unannounced CIDs as the frame encoder writes
    them (what _fill_control wrote before)."""
    out = bytearray()
    for entry in conn.host_cids:  # type: ignore[attr-defined]
        if not entry.announced and not entry.retired and entry.sequence > 0 and (
                entry.sequence >= conn.host_retire_prior_to):  # type: ignore[attr-defined]
            F.encode_frame(F.NewConnectionId(
                sequence=entry.sequence,
                retire_prior_to=conn.host_retire_prior_to,  # type: ignore[attr-defined]
                cid=entry.cid, reset_token=entry.reset_token), out)
    return bytes(out)


def test_new_connection_id_frames_match_the_frame_encoder() -> None:
    from quicflow.transport.send import _fill_control

    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    (conn,) = pair.server_conns
    pair.run(lambda: len(conn.host_cids) > 2
             and all(e.announced for e in conn.host_cids[1:]))
    # the client holds every CID the server announced, with its reset token
    held = {c.cid: c.reset_token for c in pair.client.peer_cids}
    assert len(conn.host_cids) > 2
    for entry in conn.host_cids[1:]:
        assert held[entry.cid] == entry.reset_token
    for retire_prior_to in (0, 2):
        conn.host_retire_prior_to = retire_prior_to
        for entry in conn.host_cids:
            entry.announced = False
        expected = _new_cid_reference(conn)
        payload = bytearray(b"\x01")
        records: list[tuple[int, ...]] = []
        _fill_control(conn, payload, 1200, records)
        assert bytes(payload[1:]) == expected and expected
        assert [r[1] for r in records] == [
            e.sequence for e in conn.host_cids if e.sequence >= max(1, retire_prior_to)]
    # a CID the encoder refuses is refused the same way (a 16-byte token, 1..20 bytes)
    conn.host_cids[-1].announced = False
    conn.host_cids[-1].reset_token = b"short"
    with pytest.raises(ValueError):
        _fill_control(conn, bytearray(), 1200, [])


def _reference_consume(pacer: Pacer, now: float, size: int, srtt: float,
                       cwnd: int) -> None:
    """Pacer.consume before its same-time shortcut: refill, then take ``size``."""
    rate = pacer.multiplier * cwnd / srtt if srtt > 0.0 else 0.0
    pacer._refill(now, rate, pacer.capacity(rate, cwnd))
    pacer.tokens -= size


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.sampled_from([0.0, 0.0, 1e-5, 3e-4, 0.01, -1e-4]),
                             st.integers(1, 64 * 1500), st.sampled_from([0.0, 0.001, 0.3]),
                             st.integers(1200, 1 << 24)), min_size=1, max_size=30),
    interval=st.sampled_from([0.0, 0.002]),
)
def test_pacer_consume_matches_the_refill_reference(
    steps: list[tuple[float, int, float, int]], interval: float,
) -> None:
    fast = Pacer(burst_interval=interval, max_burst_datagrams=256, granularity=0.001,
                 run_datagrams=64)
    slow = Pacer(burst_interval=interval, max_burst_datagrams=256, granularity=0.001,
                 run_datagrams=64)
    now = 1.0
    for dt, size, srtt, cwnd in steps:
        now += dt
        fast.consume(now, size, srtt, cwnd)
        _reference_consume(slow, now, size, srtt, cwnd)
        assert (fast.tokens, fast.last_time) == (slow.tokens, slow.last_time)


@given(pn=st.integers(0, 1 << 40), behind=st.integers(-5, 400), none=st.booleans())
def test_one_byte_packet_numbers_up_to_128_unacknowledged(
    pn: int, behind: int, none: bool,
) -> None:
    """The send path writes a 1-byte packet number without calling
    encode_packet_number while at most 128 packets are unacknowledged (RFC 9000 A.2)."""
    from quicflow.wire.packet import encode_packet_number

    largest = None if none else pn - behind
    if largest is not None and largest < 0:
        largest = None
    unacked = pn + 1 if largest is None else pn - largest
    if unacked <= 128:
        assert encode_packet_number(pn, largest)[1] == 1


def test_packet_bookkeeping_matches_the_loss_detector() -> None:
    """_on_packet_sent records a packet as LossDetection.on_packet_sent does, with its
    checks: a packet number not above the last one is refused."""
    from quicflow.transport.recovery import SentPacket
    from quicflow.transport.send import _on_packet_sent

    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    (conn,) = pair.server_conns
    twin = MemoryPair()
    twin.run(lambda: twin.client.handshake_confirmed and bool(twin.server_conns))
    (other,) = twin.server_conns
    now = pair.now + 0.5
    before = (conn.loss.cc.bytes_in_flight, conn.loss.packets_sent,
              other.loss.cc.bytes_in_flight, other.loss.packets_sent)
    for eliciting in (True, False, True):
        pn = conn.spaces[2].next_pn
        conn.spaces[2].next_pn += 1
        other_pn = other.spaces[2].next_pn
        other.spaces[2].next_pn += 1
        _on_packet_sent(conn, Epoch.ONE_RTT, pn, 300, eliciting, [], now)
        other.loss.on_packet_sent(SentPacket(other_pn, now, 300, eliciting, eliciting,
                                             Epoch.ONE_RTT, []))
        if eliciting:
            other.pacer.consume(now, 300, other.loss.rtt, other.loss.cc.cwnd)
    a, b = conn.loss.spaces[2], other.loss.spaces[2]
    assert (a.largest_sent, a.ack_eliciting_in_flight, a.last_ack_eliciting_time,
            sorted(a.sent)[-3:]) == (b.largest_sent, b.ack_eliciting_in_flight,
                                     b.last_ack_eliciting_time, sorted(b.sent)[-3:])
    assert (conn.loss.cc.bytes_in_flight - before[0], conn.loss.packets_sent - before[1]) \
        == (other.loss.cc.bytes_in_flight - before[2], other.loss.packets_sent - before[3]) \
        == (600, 3)
    assert conn.pacer.tokens == other.pacer.tokens
    assert conn.loss.timer_anchor == other.loss.timer_anchor == now
    with pytest.raises(ValueError):
        _on_packet_sent(conn, Epoch.ONE_RTT, a.largest_sent, 300, True, [], now)
    with pytest.raises(ValueError):
        _on_packet_sent(conn, Epoch.HANDSHAKE, 99, 300, True, [], now)  # discarded


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 20000), min_size=1, max_size=3),
       capacity=st.sampled_from([60, 1100, 1 << 15]))
def test_crypto_frames_match_the_frame_encoder(sizes: list[int], capacity: int) -> None:
    """CRYPTO frames written inline (1- and 2-byte varints) are the encoder's bytes, for
    lengths and offsets of every varint size, and carry the stream's bytes in order."""
    from quicflow.transport.send import _fill_payload

    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed)
    conn = pair.client
    space = conn.spaces[2]
    crypto = space.crypto_send
    assert crypto is not None
    data = bytes(i % 251 for i in range(sum(sizes)))
    start = crypto.next_offset
    crypto.write(data)
    got = bytearray()
    while crypto.has_data_to_send():
        conn.probes_pending[2] = 1  # (a probe: no congestion or pacing check)
        payload = bytearray()
        records: list[tuple[int, ...]] = []
        _fill_payload(conn, Epoch.ONE_RTT, space, payload, capacity, records, pair.now,
                      False, False, True)
        expected = bytearray()
        for frame in F.parse_frames(bytes(payload)):
            F.encode_frame(frame, expected)
            if isinstance(frame, F.Crypto):
                assert frame.offset == start + len(got)
                got += frame.data
        assert bytes(payload) == bytes(expected)
    assert bytes(got) == data


@settings(max_examples=25, deadline=None)
@given(writes=st.lists(st.sampled_from([1, 90, 700, 3000, 70000]), min_size=1, max_size=4),
       capacity=st.sampled_from([60, 1100, 1 << 15]),
       lose=st.tuples(st.integers(0, 1 << 17), st.integers(1, 5000)))
def test_crypto_frames_from_several_chunks_and_after_a_loss(
    writes: list[int], capacity: int, lose: tuple[int, int]
) -> None:
    """CRYPTO data written in several writes (a large one is a chunk of its own) goes out
    in order, each byte at its offset, as next_chunk would cut it; after a loss the
    lost range goes out again (first) with the same bytes, and nothing else."""
    from quicflow.transport.send import _fill_payload

    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed)
    conn = pair.client
    space = conn.spaces[2]
    crypto = space.crypto_send
    assert crypto is not None
    start = crypto.next_offset
    data = bytes((i * 7) % 251 for i in range(sum(writes)))
    pos = 0
    for n in writes:
        crypto.write(data[pos : pos + n])
        pos += n

    def send_all() -> list[tuple[int, bytes]]:
        sent = []
        while crypto.has_data_to_send():
            conn.probes_pending[2] = 1  # (a probe: no congestion or pacing check)
            payload = bytearray()
            records: list[tuple[int, ...]] = []
            _fill_payload(conn, Epoch.ONE_RTT, space, payload, capacity, records,
                          pair.now, False, False, True)
            frames = [f for f in F.parse_frames(bytes(payload)) if isinstance(f, F.Crypto)]
            assert frames, "a packet without the CRYPTO data that waits"
            assert [(r[2], r[3]) for r in records if r[0] == R_CRYPTO] == [
                (f.offset, len(f.data)) for f in frames]
            sent += [(f.offset, bytes(f.data)) for f in frames]
        return sent

    first = send_all()
    assert first[0][0] == start
    assert b"".join(d for _, d in first) == data
    assert all(a[0] + len(a[1]) == b[0] for a, b in zip(first, first[1:], strict=False))
    assert crypto.next_offset == start + len(data)
    lo = start + min(lose[0], len(data) - 1)
    hi = min(lo + lose[1], start + len(data))
    crypto.on_lost(lo, hi - lo, False)
    again = send_all()
    assert again[0][0] == lo and b"".join(d for _, d in again) == data[lo - start : hi - start]
    assert not crypto.has_data_to_send() and crypto.next_offset == start + len(data)
