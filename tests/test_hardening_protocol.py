"""A hostile or unlucky peer against the sans-I/O core (issue 10, items 1, 3, 4, 5, 7
and 11): valid, protected packets built with the project's own wire and crypto modules
(tests/support/forge.py) carrying what a well-behaved peer never sends.
"""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.errors import (
    CONNECTION_ID_LIMIT_ERROR,
    FLOW_CONTROL_ERROR,
    STREAM_LIMIT_ERROR,
    TRANSPORT_PARAMETER_ERROR,
)
from quicflow.transport.events import ConnectionTerminated
from quicflow.transport.receive import _discard_epoch
from quicflow.wire import frames as F

from .support.forge import encode_frames, forge
from .support.memory_pair import SERVER_ADDR, MemoryPair


def _established(**kw: object) -> tuple[MemoryPair, Connection, Connection]:
    pair = MemoryPair(**kw)  # type: ignore[arg-type]
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    _settle(pair)  # let the last ACKs (and path MTU probes) settle
    return pair, pair.client, pair.server_conns[0]


def _settle(pair: MemoryPair) -> None:
    """Move datagrams until nothing moves, without letting timers (idle!) fire."""
    while pair.step():
        pair.now += 0.0002


def _inject(pair: MemoryPair, conn: Connection, epoch: Epoch, frames: list[F.Frame],
            **kw: int) -> None:
    pair.server.receive(forge(conn, epoch, encode_frames(frames), **kw), pair.client_addr,
                        pair.now)


def _close_seen_by_client(pair: MemoryPair) -> ConnectionTerminated:
    """Run until the client got the server's CONNECTION_CLOSE; returns that event."""
    events: list[object] = []

    def closed() -> bool:
        events.extend(pair.client.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    pair.run(closed, max_time=pair.now + 10)
    return next(e for e in events if isinstance(e, ConnectionTerminated))


# ---------------------------------------------------------------------- item 5


def test_repeated_out_of_order_stream_frame_does_not_grow_the_server() -> None:
    pair, client, server = _established()
    sid = client.open_stream()
    piece = random.Random(1).randbytes(1000)
    _inject(pair, client, Epoch.ONE_RTT, [F.Stream(sid, 300_000, piece)])
    tracemalloc.start()
    try:
        for _ in range(2000):
            _inject(pair, client, Epoch.ONE_RTT, [F.Stream(sid, 300_000, piece)])
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 500_000  # was 2 MB and growing: 1000 bytes stored per packet
    recv = server.streams[sid].recv
    assert recv is not None
    assert recv.out_of_order_bytes == 1000 and recv.out_of_order_pieces == 1
    assert server.flow.reassembly_cost == 1024
    assert not server.is_closed


def test_tiny_out_of_order_frames_are_bounded_per_connection_and_not_acked() -> None:
    """1-byte frames two bytes apart on many streams: the pieces the server keeps are
    bounded by its connection window (each charged 1 KiB), the rest is dropped without
    an ACK (so an honest peer would resend), and the connection survives."""
    pair, client, server = _established()
    sids = [client.open_stream() for _ in range(6)]  # 6 x 1 MiB windows > 4 MiB
    frames_per_packet = 100
    for sid in sids:
        for first in range(2, 6000, 2 * frames_per_packet):
            frames = [F.Stream(sid, off, b"x") for off in
                      range(first, first + 2 * frames_per_packet, 2)]
            _inject(pair, client, Epoch.ONE_RTT, frames)
    pieces = sum(s.recv.out_of_order_pieces for s in server.streams.values() if s.recv)
    window = server.flow.max_data - server.flow.data_consumed
    assert window // 1024 - 16 <= pieces <= window // 1024  # the connection budget binds
    assert server.flow.reassembly_cost == pieces * 1024
    assert server.counters.dropped_reassembly_full > 0
    assert not server.is_closed
    # honest data on another stream still arrives intact
    data = random.Random(2).randbytes(200_000)
    honest = client.open_stream()
    client.send_stream_data(honest, data, end_stream=True)
    got = bytearray()

    def done() -> bool:
        got.extend(server.read_stream(honest))
        return len(got) == len(data) and server.stream_at_eof(honest)

    pair.run(done)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_duplicate_initial_crypto_before_handshake_is_stored_once_and_not_kept_alive() -> None:
    """Initial keys are public: a spoofed client repeats an out-of-order CRYPTO frame.
    The server stores it once and the repeats do not restart its idle timer."""
    pair = MemoryPair()
    client = pair.client
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)  # the real first flight
    server = pair.server_conns[0]
    piece = random.Random(3).randbytes(900)
    pair.now += 0.001
    _inject(pair, client, Epoch.INITIAL, [F.Crypto(20_000, piece)], pad_to=1200)
    deadline = server.idle_deadline  # new data (once) keeps the handshake alive
    tracemalloc.start()
    try:
        for _ in range(3000):
            pair.now += 0.001
            _inject(pair, client, Epoch.INITIAL, [F.Crypto(20_000, piece)], pad_to=1200)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 500_000  # was 2.7 MB and growing
    assert server.idle_deadline == deadline
    recv = server.spaces[0].crypto_recv
    assert recv.out_of_order_bytes == 900 and recv.out_of_order_pieces == 1


# ---------------------------------------------------------------------- item 7


def test_path_challenge_flood_is_answered_with_bounded_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pair, client, server = _established()
    last = b""
    for n in range(200):
        challenges = [F.PathChallenge(random.Random(n * 1000 + i).randbytes(8))
                      for i in range(130)]
        last = challenges[-1].data
        _inject(pair, client, Epoch.ONE_RTT, challenges)
        assert len(server.path_challenges_received) <= 4
    answers = pair.server.datagrams_to_send(server, pair.now)
    assert server.path_challenges_received == []
    # the latest challenge is answered: look at what the client decrypts
    from quicflow.transport import receive as R

    seen: list[bytes] = []
    original = R._process_frames

    def spy(conn: Connection, payload: bytes, epoch: Epoch, now: float,
            frames: list[F.Frame] | None = None) -> bool:
        seen.extend(f.data for f in F.parse_frames(payload) if isinstance(f, F.PathResponse))
        return original(conn, payload, epoch, now, frames)

    monkeypatch.setattr(R, "_process_frames", spy)
    for d in answers:
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    assert last in seen and len(seen) <= 4


# ---------------------------------------------------------------------- item 11 (frame type)


def test_stream_limit_error_names_the_stream_frame() -> None:
    pair, client, server = _established()
    over = (server.bidi.max_remote << 2) | 0  # the first bidi stream over the limit
    _inject(pair, client, Epoch.ONE_RTT, [F.Stream(over, 0, b"x")])
    assert server.close_error is not None
    code, frame_type, _, app = server.close_error
    assert (code, app) == (STREAM_LIMIT_ERROR, False) and 0x08 <= frame_type <= 0x0F
    term = _close_seen_by_client(pair)
    assert term.error_code == STREAM_LIMIT_ERROR and 0x08 <= (term.frame_type or 0) <= 0x0F


def test_stream_flow_control_error_names_the_stream_frame() -> None:
    pair, client, server = _established()
    sid = client.open_stream()
    limit = server.configuration.max_stream_data
    _inject(pair, client, Epoch.ONE_RTT, [F.Stream(sid, limit, b"x")])
    term = _close_seen_by_client(pair)
    assert term.error_code == FLOW_CONTROL_ERROR and 0x08 <= (term.frame_type or 0) <= 0x0F


def test_connection_flow_control_error_names_the_stream_frame() -> None:
    pair, client, server = _established()
    limit = server.flow.max_data
    per = server.configuration.max_stream_data
    frames = []
    total = 0
    while total <= limit:
        sid = client.open_stream()
        frames.append(F.Stream(sid, per - 1, b"x"))
        total += per
    for i in range(0, len(frames), 20):
        _inject(pair, client, Epoch.ONE_RTT, frames[i : i + 20])
    term = _close_seen_by_client(pair)
    assert term.error_code == FLOW_CONTROL_ERROR and 0x08 <= (term.frame_type or 0) <= 0x0F


def test_reset_stream_over_flow_control_names_reset_stream() -> None:
    pair, client, server = _established()
    sid = client.open_stream()
    _inject(pair, client, Epoch.ONE_RTT,
            [F.ResetStream(sid, 1, server.configuration.max_stream_data + 1)])
    term = _close_seen_by_client(pair)
    assert (term.error_code, term.frame_type) == (FLOW_CONTROL_ERROR, 0x04)


def test_connection_id_limit_error_names_new_connection_id() -> None:
    pair, client, server = _established()
    frames = [F.NewConnectionId(seq, 0, bytes([seq]) * 8, bytes([seq]) * 16)
              for seq in range(100, 120)]
    _inject(pair, client, Epoch.ONE_RTT, frames)
    term = _close_seen_by_client(pair)
    assert (term.error_code, term.frame_type) == (CONNECTION_ID_LIMIT_ERROR, 0x18)


# ---------------------------------------------------------------------- item 4


def test_client_without_initial_source_connection_id_is_refused() -> None:
    """RFC 9000 §7.3: a missing initial_source_connection_id is a
    TRANSPORT_PARAMETER_ERROR (a wrong one already was)."""
    from quicflow.tls.session import TlsSession
    from quicflow.transport.streams import SendStream
    from quicflow.wire.tparams import encode_transport_parameters

    pair = MemoryPair()
    client = pair.client
    params = client._local_transport_parameters()
    params.initial_source_connection_id = None
    tls = TlsSession(client._tls_config("localhost"), encode_transport_parameters(params))
    tls.start()
    client.tls = tls
    client.spaces[0].crypto_send = SendStream(max_data=1 << 62)
    for _, data in tls.pop_output():
        client.spaces[0].crypto_send.write(data)
    events: list[object] = []

    def closed() -> bool:
        events.extend(client.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    pair.run(closed)
    term = next(e for e in events if isinstance(e, ConnectionTerminated))
    assert (term.error_code, term.by_peer) == (TRANSPORT_PARAMETER_ERROR, True)
    assert not pair.server_conns or not pair.server_conns[0].handshake_complete or (
        pair.server_conns[0].close_error is not None
    )


# ---------------------------------------------------------------------- item 1


def _drop_first_client_handshake(pair: MemoryPair) -> list[int]:
    """Make the up link drop the client's first datagram once its handshake is
    complete: the one that holds its Finished. Returns a list that gets one entry."""
    dropped: list[int] = []
    original = pair.up.carry

    def carry(datagrams: list[bytes]) -> list[bytes]:
        out = []
        for d in datagrams:
            if not dropped and pair.client.handshake_complete:
                assert pair.client.spaces[1].next_pn <= 1  # its first Handshake packet
                dropped.append(len(out))
                continue
            out.append(d)
        return original(out)

    pair.up.carry = carry  # type: ignore[method-assign]
    return dropped


def test_server_does_not_ack_one_rtt_before_its_handshake_completes() -> None:
    """The client's Finished is lost while its 1-RTT data goes through. RFC 9001 §5.7:
    the server must not process (nor acknowledge) 1-RTT packets before its handshake
    completes. A client that (as RFC 9001 §4.1.2 allows, like quic-go) takes an ACK of
    1-RTT as handshake confirmation drops its Handshake keys and would never resend
    Finished: the connection must still complete and the data arrive intact."""
    pair = MemoryPair(seed=5)
    dropped = _drop_first_client_handshake(pair)
    client = pair.client
    data = random.Random(9).randbytes(300_000)
    sid_box: list[int] = []
    acked_early: list[bool] = []

    def quic_go_like() -> None:
        if not client.handshake_confirmed and client.spaces[2].largest_acked >= 0:
            server = pair.server_conns[0] if pair.server_conns else None
            acked_early.append(server is not None and not server.handshake_complete)
            client.handshake_confirmed = True
            _discard_epoch(client, Epoch.HANDSHAKE)

    got = bytearray()

    def done() -> bool:
        quic_go_like()
        if client.handshake_complete and not sid_box:
            sid_box.append(client.open_stream())
            client.send_stream_data(sid_box[0], data, end_stream=True)
        if not pair.server_conns or not sid_box:
            return False
        server = pair.server_conns[0]
        got.extend(server.read_stream(sid_box[0]))
        return server.handshake_complete and server.stream_at_eof(sid_box[0])

    pair.run(done, max_time=20.0)
    assert dropped, "the client's Handshake datagram was never dropped"
    assert not any(acked_early), "the server acknowledged 1-RTT before its handshake"
    assert client.spaces[1].next_pn >= 2  # the client sent its Finished again
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    server = pair.server_conns[0]
    assert server.counters.one_rtt_before_handshake > 0


# ---------------------------------------------------------------------- item 3


def test_early_key_update_waits_three_pto_instead_of_failing() -> None:
    pair, client, server = _established(seed=12)
    client.initiate_key_update()
    first = client.open_stream()
    client.send_stream_data(first, b"after the first update", end_stream=True)
    pair.run(lambda: server.key_updates_received == 1 and client.key_updates_received == 1
             and not client.key_update_pending)
    answered_at = pair.now
    phase = client.key_phase
    client.initiate_key_update()  # too early: not an error, it waits
    assert client.key_phase == phase
    pto = client.pto()
    sid = client.open_stream()
    data = random.Random(4).randbytes(50_000)
    client.send_stream_data(sid, data, end_stream=True)
    got = bytearray()
    changed_at: list[float] = []
    late = client.open_stream()

    def done() -> bool:
        if client.key_phase != phase and not changed_at:
            changed_at.append(pair.now)
            client.send_stream_data(late, b"with the next keys", end_stream=True)
        got.extend(server.read_stream(sid))
        return bool(changed_at) and server.stream_at_eof(sid) and (
            server.key_updates_received == 2 and server.read_stream(late) != b"")

    pair.run(done, max_time=pair.now + 30)
    assert changed_at[0] >= answered_at + 3 * pto * 0.99
    assert got == data
    assert client.key_phase == server.key_phase == phase ^ 1


# ---------------------------------------------------------------------- a peer that never reads


def test_server_app_that_never_reads_holds_at_most_its_window() -> None:
    """The client sends on 64 streams to a server whose application never reads: what
    the server buffers stays within the connection window it advertised."""
    pair, client, server = _established()
    data = bytes(1 << 20)
    sids = [client.open_stream() for _ in range(64)]
    for sid in sids:
        client.send_stream_data(sid, data)

    def blocked() -> bool:
        return client.flow.data_sent >= client.flow.peer_max_data

    pair.run(blocked, max_time=pair.now + 30)
    _settle(pair)
    held = sum(s.recv.readable + s.recv.out_of_order_bytes
               for s in server.streams.values() if s.recv is not None)
    assert 0 < held <= server.configuration.max_data == server.flow.max_data
    assert not server.is_closed and not client.is_closed


def test_early_one_rtt_is_held_bounded_unacknowledged_then_processed() -> None:
    """1-RTT packets that reach the server before its handshake completes: a few are
    held (bounded in number and bytes), none is acknowledged or acted on, and the held
    ones are processed once the handshake completes."""
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_complete)
    client = pair.client
    server = pair.server_conns[0]
    assert not server.handshake_complete
    sid = client.open_stream()
    for i in range(50):
        _inject(pair, client, Epoch.ONE_RTT, [F.Stream(sid, i * 100, bytes([i]) * 100)])
    assert len(server.early_one_rtt) == 4
    assert server.counters.one_rtt_before_handshake == 50
    assert not server.spaces[2].received and not server.spaces[2].ack_pending
    assert sid not in server.streams
    pair.run(lambda: server.handshake_complete)
    assert server.early_one_rtt == []
    recv = server.streams[sid].recv
    assert recv is not None and recv.read() == b"".join(bytes([i]) * 100 for i in range(4))
