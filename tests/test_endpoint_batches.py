"""Sans-I/O: a GRO batch costs one connection lookup per run of same-DCID segments.

The segments are real: a server connection writes bulk stream data, the endpoint builds
its datagrams (``Endpoint.build_datagrams``), and the test concatenates them into the
shape a GRO receive produces — one buffer plus the segment size, every segment of that
size except perhaps the last — and hands it to the client's ``Endpoint.receive_batch``.
"""

from __future__ import annotations

import random

import pytest

from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.connection import Connection
from quicflow.transport.streams import RecvStream

from .support.memory_pair import SERVER_ADDR, MemoryPair

N = 20


def _established(pair: MemoryPair) -> None:
    def ready() -> bool:
        return len(pair.server_conns) == len(pair.clients) and all(
            c.handshake_confirmed for c in (*pair.clients, *pair.server_conns)
        )

    pair.run(ready)


def _warm_up(pair: MemoryPair, server: Connection, client: Connection) -> None:
    """A first transfer on its own stream, so the sender's window has grown by itself."""
    sid = server.open_stream()
    data = random.Random(99).randbytes(400_000)
    server.send_stream_data(sid, data, end_stream=True)
    got = bytearray()

    def done() -> bool:
        if sid in client.streams:
            got.extend(client.read_stream(sid))
        return len(got) == len(data) and client.stream_at_eof(sid)

    pair.run(done)
    assert bytes(got) == data


def _bulk_datagrams(
    endpoint: Endpoint, conn: Connection, now: float, count: int | None
) -> list[bytes]:
    """The datagrams the connection builds (nothing is delivered back): at least
    ``count`` of them, or (``count`` None) all it has to send."""
    out: list[bytes] = []
    t = now
    idle = 0
    for _ in range(200):
        buf, bounds = endpoint.build_datagrams(conn, t)
        start = 0
        for end in bounds:
            out.append(bytes(buf[start:end]))
            start = end
        if count is not None and len(out) >= count:
            break
        idle = 0 if bounds else idle + 1
        if count is None and idle >= 5:
            break
        t += 0.001  # let the pacer refill
    if count is not None:
        assert len(out) >= count, f"the connection built only {len(out)} datagrams"
    return out


def _gro_buffer(segments: list[bytes]) -> tuple[bytes, int]:
    size = len(segments[0])
    assert all(len(s) == size for s in segments[:-1]), [len(s) for s in segments]
    assert len(segments[-1]) <= size
    return b"".join(segments), size


def _one_download(
    seed: int, data_seed: int
) -> tuple[MemoryPair, Connection, Connection, int, bytes, list[bytes]]:
    """An established, warmed-up pair whose server has built the first N datagrams of
    one stream (``sid``) of 2 N x 1200 random bytes (``random.Random(data_seed)``), FIN
    set: ``(pair, server, client, sid, data, segments)``."""
    pair = MemoryPair(seed=seed)
    _established(pair)
    server, client = pair.server_conns[0], pair.client
    _warm_up(pair, server, client)
    sid = server.open_stream()
    data = random.Random(data_seed).randbytes(N * 1200 * 2)
    server.send_stream_data(sid, data, end_stream=True)
    return pair, server, client, sid, data, _bulk_datagrams(pair.server, server, pair.now, N)[:N]


def _deliver(ep: Endpoint, buffers: list[tuple[bytes, int]], now: float,
             together: bool) -> list[Connection]:
    """The GRO buffers to ``ep``: in one ``receive_batches`` call (``together``) or one
    ``receive_batch`` call each; the connections they touched."""
    if together:
        return ep.receive_batches(buffers, SERVER_ADDR, now)
    touched: list[Connection] = []
    for buf, seg in buffers:
        touched += ep.receive_batch(buf, seg, SERVER_ADDR, now)
    return touched


def _readable(conn: Connection, sid: int) -> bytes:
    return conn.read_stream(sid) if sid in conn.streams else b""


def test_gro_batch_of_one_connection_costs_one_lookup() -> None:
    pair, server, client, sid, data, segments = _one_download(11, 5)
    assert all(not s[0] & 0x80 for s in segments), "expected 1-RTT (short header) packets"
    buf, seg_size = _gro_buffer(segments)
    assert seg_size == server.max_datagram_size

    ep = pair.client_ep
    lookups = ep.counters.lookups
    segs = ep.counters.segments_received
    packets = client.counters.packets_received
    touched = ep.receive_batch(buf, seg_size, SERVER_ADDR, pair.now)

    assert ep.counters.lookups - lookups == 1
    assert ep.counters.segments_received - segs == N
    assert touched == [client]
    assert client.counters.packets_received - packets == N
    assert client.counters.packets_dropped == 0
    assert client.counters.duplicate_packets == 0
    # The bytes of all N segments are in the stream, in order: every segment carried
    # about a datagram's worth of stream data (header, frame header and AEAD tag aside).
    got = _readable(client, sid)
    assert got == data[: len(got)]
    assert len(got) >= N * (seg_size - 60), (len(got), N * seg_size)

    # The rest of the transfer goes on normally and ends intact.
    rest = bytearray(got)

    def done() -> bool:
        rest.extend(_readable(client, sid))
        return client.stream_at_eof(sid)

    pair.run(done)
    assert bytes(rest) == data


def test_gro_batch_with_a_shorter_last_segment() -> None:
    pair = MemoryPair(seed=12)
    _established(pair)
    server, client = pair.server_conns[0], pair.client
    _warm_up(pair, server, client)
    sid = server.open_stream()
    # N - 1 full datagrams and a short one carrying the end of the stream (a datagram
    # carries about max_datagram_size - 50 bytes of stream data)
    per_datagram = server.max_datagram_size - 50
    data = random.Random(6).randbytes((N - 1) * per_datagram + 300)
    server.send_stream_data(sid, data, end_stream=True)
    segments = _bulk_datagrams(pair.server, server, pair.now, None)
    assert len(segments) >= N - 1
    assert len(segments[-1]) < len(segments[0])
    buf, seg_size = _gro_buffer(segments)
    ep = pair.client_ep
    lookups = ep.counters.lookups
    received = client.counters.bytes_received
    ep.receive_batch(buf, seg_size, SERVER_ADDR, pair.now)
    assert ep.counters.lookups - lookups == 1
    # the run's byte count is exact with the shorter last segment
    assert client.counters.bytes_received - received == sum(map(len, segments))
    assert client.read_stream(sid) == data
    assert client.stream_at_eof(sid)


def test_interleaved_connections_cost_one_lookup_per_run() -> None:
    pair = MemoryPair(seed=13)
    pair.add_client()
    _established(pair)
    ep = pair.client_ep
    # Map each server connection to its client (by the CIDs the client endpoint knows).
    peers: list[tuple[Connection, Connection]] = []
    for client in pair.clients:
        server = next(
            s
            for s in pair.server_conns
            if s.peer_cid in ep.connections and ep.connections[s.peer_cid] is client
        )
        peers.append((server, client))
    (sa, ca), (sb, cb) = peers
    assert ca is not cb
    for server, client in peers:
        _warm_up(pair, server, client)

    streams = {}
    payloads = {}
    built = {}
    for name, (server, _) in zip("ab", peers, strict=True):
        sid = server.open_stream()
        payloads[name] = random.Random(ord(name)).randbytes(N * 1200 * 2)
        server.send_stream_data(sid, payloads[name], end_stream=True)
        streams[name] = sid
        built[name] = _bulk_datagrams(pair.server, server, pair.now, 12)[:12]

    # Runs: a a a a | b b b | a a a | b b b b b | a a a a a  -> 5 runs, 20 segments
    a, b = iter(built["a"]), iter(built["b"])
    shape = [(a, 4), (b, 3), (a, 3), (b, 5), (a, 5)]
    segments = [next(it) for it, n in shape for _ in range(n)]
    assert len(segments) == N
    buf, seg_size = _gro_buffer(segments)

    lookups = ep.counters.lookups
    segs = ep.counters.segments_received
    got_a, got_b = ca.counters.packets_received, cb.counters.packets_received
    bytes_a, bytes_b = ca.counters.bytes_received, cb.counters.bytes_received
    touched = ep.receive_batch(buf, seg_size, SERVER_ADDR, pair.now)
    # each connection counts exactly the bytes of its own runs
    assert ca.counters.bytes_received - bytes_a == sum(len(s) for s in built["a"])
    assert cb.counters.bytes_received - bytes_b == sum(len(s) for s in built["b"][:8])
    assert ep.counters.lookups - lookups == len(shape)
    assert ep.counters.segments_received - segs == N
    assert set(map(id, touched)) == {id(ca), id(cb)}
    assert ca.counters.packets_received - got_a == 12
    assert cb.counters.packets_received - got_b == 8
    for name, client, n in (("a", ca, 12), ("b", cb, 8)):
        sid = streams[name]
        got = _readable(client, sid)
        assert got == payloads[name][: len(got)]
        assert len(got) >= n * (seg_size - 60)
        assert client.counters.packets_dropped == 0


def test_runs_of_one_receive_round_give_one_readable_event() -> None:
    """Two GRO batches of one stream read in the same round: one StreamReadable (one
    wake-up of the stream's reader), not one per batch."""
    from quicflow.transport.events import StreamReadable

    pair, server, client, sid, data, segments = _one_download(11, 6)
    client.pop_events()
    ep = pair.client_ep
    for part in (segments[: N // 2], segments[N // 2 :]):
        buf, seg_size = _gro_buffer(part)
        assert ep.receive_batch(buf, seg_size, SERVER_ADDR, pair.now) == [client]
    readable = [e for e in client.pop_events() if isinstance(e, StreamReadable)]
    assert [e.stream_id for e in readable] == [sid]
    got = _readable(client, sid)
    assert got == data[: len(got)] and len(got) >= N * (seg_size - 60)


def test_a_run_goes_on_through_the_buffers_of_one_round() -> None:
    """Three GRO buffers of one connection read back to back (``receive_batches``): one
    lookup for all of them, every packet taken, the data intact; the connection's state
    is the one three ``receive_batch`` calls give (ranges, counters, events)."""
    states = []
    for together in (False, True):
        pair, server, client, sid, data, segments = _one_download(14, 8)
        buffers = [_gro_buffer(part) for part in (segments[:7], segments[7:14], segments[14:])]
        client.pop_events()
        ep = pair.client_ep
        lookups = ep.counters.lookups
        packets = client.counters.packets_received
        touched = _deliver(ep, buffers, pair.now, together)
        assert set(map(id, touched)) == {id(client)}
        assert ep.counters.lookups - lookups == (1 if together else 3)
        assert client.counters.packets_received - packets == N
        space = client.spaces[2]
        events = [type(e).__name__ for e in client.pop_events()]
        got = _readable(client, sid)
        assert got == data[: len(got)] and len(got) >= N * (1200 - 60)
        states.append((list(space.received.starts), list(space.received.ends),
                       space.largest_received, space.ack_eliciting_pending,
                       space.ack_immediately, client.counters.bytes_received,
                       client.counters.datagrams_received, events, got))
    assert states[0] == states[1]


def test_buffers_of_two_connections_in_one_round() -> None:
    """A round whose buffers alternate between two connections, one buffer starting
    with the other's segments: each connection gets exactly its own packets, one lookup
    per run (a run ends where the other connection's segments begin)."""
    pair = MemoryPair(seed=15)
    pair.add_client()
    _established(pair)
    ep = pair.client_ep
    peers = []
    for client in pair.clients:
        server = next(s for s in pair.server_conns
                      if s.peer_cid in ep.connections and ep.connections[s.peer_cid] is client)
        peers.append((server, client))
    for server, client in peers:
        _warm_up(pair, server, client)
    built = {}
    for name, (server, _) in zip("ab", peers, strict=True):
        sid = server.open_stream()
        server.send_stream_data(sid, random.Random(ord(name)).randbytes(N * 2400), True)
        built[name] = _bulk_datagrams(pair.server, server, pair.now, 12)[:12]
    a, b = built["a"], built["b"]
    # buffers: [a a a a] [a a b b] [b b b] [a a a]  -> runs: a(6) b(5) a(3)
    buffers = [_gro_buffer(a[:4]), _gro_buffer(a[4:6] + b[:2]), _gro_buffer(b[2:5]),
               _gro_buffer(a[6:9])]
    (_, ca), (_, cb) = peers
    lookups = ep.counters.lookups
    got_a, got_b = ca.counters.packets_received, cb.counters.packets_received
    touched = ep.receive_batches(buffers, SERVER_ADDR, pair.now)
    assert set(map(id, touched)) == {id(ca), id(cb)}
    assert ep.counters.lookups - lookups == 3
    assert ca.counters.packets_received - got_a == 9
    assert cb.counters.packets_received - got_b == 5
    assert ca.counters.packets_dropped == cb.counters.packets_dropped == 0


def _counting_stream_receives(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times data went into a receiving stream (``receive`` or
    ``receive_pieces``), with the pieces each time."""
    calls: list[int] = []
    inside: list[bool] = []  # (receive_pieces may hand its pieces to receive, joined)
    receive, receive_pieces = RecvStream.receive, RecvStream.receive_pieces

    def one(self: RecvStream, offset: int, data: bytes, fin: bool, budget: int = 1 << 62) -> int:
        if not inside:
            calls.append(1)
        return receive(self, offset, data, fin, budget)

    def pieces(self: RecvStream, offset: int, data: list[bytes], fin: bool,
               budget: int = 1 << 62) -> int:
        calls.append(len(data))
        inside.append(True)
        try:
            return receive_pieces(self, offset, data, fin, budget)
        finally:
            inside.pop()

    monkeypatch.setattr(RecvStream, "receive", one)
    monkeypatch.setattr(RecvStream, "receive_pieces", pieces)
    return calls


@pytest.mark.parametrize("lost", [None, 7, 13, 0])
def test_a_run_of_one_stream_through_the_buffers_is_one_stream_receive(
    lost: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's run of one stream through three GRO buffers goes into the stream once,
    as the buffers' pieces (not once per buffer); where a packet is missing at a
    buffer's edge the run is cut there. Either way the connection's state is what three
    ``receive_batch`` calls give (ranges, largest, ACK state, counters, events, data)."""
    states = []
    for together in (False, True):
        pair, server, client, sid, data, segments = _one_download(16, 9)
        parts = [segments[:7], segments[7:14], segments[14:]]
        if lost is not None:
            parts = [[s for s in part if s is not segments[lost]] for part in parts]
        buffers = [_gro_buffer(part) for part in parts if part]
        client.pop_events()
        ep = pair.client_ep
        calls = _counting_stream_receives(monkeypatch)
        touched = _deliver(ep, buffers, pair.now, together)
        monkeypatch.undo()
        assert set(map(id, touched)) == {id(client)}
        expected = {None: [3], 7: [1, 2], 13: [2, 1], 0: [3]}[lost] if together else [1, 1, 1]
        assert calls == expected
        space = client.spaces[2]
        events = [type(e).__name__ for e in client.pop_events()]
        recv = client.streams[sid].recv
        assert recv is not None
        stored = (recv.highest_offset, recv.ready_bytes, recv.chunk_bytes,
                  list(recv.chunk_ranges.starts))
        got = _readable(client, sid)
        states.append((list(space.received.starts), list(space.received.ends),
                       space.largest_received, space.ack_eliciting_pending,
                       space.ack_immediately, client.counters.packets_received,
                       client.counters.bytes_received, events, stored, got))
    assert states[0] == states[1]
