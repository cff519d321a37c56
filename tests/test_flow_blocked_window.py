"""A sender held by the receiver's stream limit says so (STREAM_DATA_BLOCKED, RFC 9000
§4.1) also on the bulk send path, and the receiver takes it as a sign that its window
is too small for the rate: it doubles the window (within ``max_stream_data_window``); the
larger limit goes out only with the next update, once the application reads. The same
for the connection's window and DATA_BLOCKED (within ``max_data_window``)."""

from __future__ import annotations

import hashlib

from quicflow.tls.certs import generate_self_signed
from quicflow.transport.config import Configuration
from tests.support.memory_pair import MemoryPair

KIB = 1024
_CERT = generate_self_signed(["localhost"])


def _pair() -> MemoryPair:
    cert, key = _CERT
    server = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                           max_stream_data=64 * KIB, max_stream_data_window=4096 * KIB)
    client = Configuration(alpn_protocols=["perf"], verify_peer=False)
    return MemoryPair(server_config=server, client_config=client)


def test_blocked_sender_signals_and_the_receiver_grows_its_window() -> None:
    pair = _pair()
    pair.run(lambda: pair.client.handshake_confirmed)
    data = hashlib.sha256(b"w").digest() * (4 * 1024 * KIB // 32)  # 4 MiB
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, data, end_stream=True)
    server = pair.server_conns[0]

    def received() -> int:
        stream = server.streams.get(sid)
        return 0 if stream is None or stream.recv is None else stream.recv.highest_offset

    # the server's application reads nothing yet: the client stops at 64 KiB
    pair.run(lambda: received() >= 64 * KIB)
    for _ in range(20):
        pair.step()
    send = pair.client.streams[sid].send
    recv = server.streams[sid].recv
    assert send is not None and recv is not None
    assert send.max_data == 64 * KIB and send.blocked_sent_at == 64 * KIB  # it said so
    assert recv.window == 128 * KIB  # doubled by the STREAM_DATA_BLOCKED
    assert recv.max_data == 64 * KIB  # but nothing advertised without room made for it

    got = bytearray()
    pair.run(lambda: bool(got.extend(server.read_stream(sid))) or len(got) == len(data))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert recv.window > 128 * KIB  # grew further on later blocks, within the maximum
    assert recv.window <= 4096 * KIB


def test_repeated_blocked_frames_never_grow_the_window_past_its_maximum() -> None:
    """A peer repeating STREAM_DATA_BLOCKED at our limit (hostile, or stuck) doubles the
    window at most up to ``max_stream_data_window``, and never raises the limit it may
    send to: that still waits for the application to read."""
    from quicflow.crypto.epoch import Epoch
    from quicflow.transport.receive_streams import on_stream_data_blocked
    from quicflow.wire.frames import StreamDataBlocked

    pair = _pair()
    pair.run(lambda: pair.client.handshake_confirmed)
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, b"x" * 1000)
    server = pair.server_conns[0]
    pair.run(lambda: sid in server.streams)
    recv = server.streams[sid].recv
    assert recv is not None
    limit = recv.max_data
    for _ in range(100):
        on_stream_data_blocked(server, StreamDataBlocked(sid, limit), Epoch.ONE_RTT, pair.now)
    assert recv.window == 4096 * KIB  # doubled up to the maximum, not past it
    assert recv.max_data == limit  # nothing more the peer may send before we read
    on_stream_data_blocked(server, StreamDataBlocked(sid, limit + 1), Epoch.ONE_RTT, pair.now)
    assert recv.window == 4096 * KIB


def _conn_limited_pair() -> MemoryPair:
    """The server's connection window (64 KiB, at most 4 MiB) binds before its stream
    window does."""
    cert, key = _CERT
    server = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                           max_data=64 * KIB, max_data_window=4096 * KIB,
                           max_stream_data=1024 * KIB, max_stream_data_window=4096 * KIB)
    client = Configuration(alpn_protocols=["perf"], verify_peer=False)
    return MemoryPair(server_config=server, client_config=client)



def _sent_up_to_the_limit(size: int, seed: bytes) -> tuple[MemoryPair, int, bytes]:
    """A client sending ``size`` bytes on one stream to a server whose connection limit
    is 64 KiB, run until the server has received up to that limit; its application has
    read nothing."""
    pair = _conn_limited_pair()
    pair.run(lambda: pair.client.handshake_confirmed)
    data = hashlib.sha256(seed).digest() * (size // 32)
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, data, end_stream=True)
    flow = pair.server_conns[0].flow
    pair.run(lambda: flow.data_received >= 64 * KIB)  # the application reads nothing yet
    return pair, sid, data

def test_a_slow_application_does_not_grow_the_connection_window() -> None:
    """The client waits at the server's connection limit and says so (DATA_BLOCKED, RFC
    9000 §4.1) while the server's application reads nothing: the frame names the limit
    still current, so the application, not the window, holds the sender back, and the
    window stays as it is (a larger one would only buffer more unread data). Once the
    application reads, everything arrives intact."""
    pair, sid, data = _sent_up_to_the_limit(2 * 1024 * KIB, b"c")
    server = pair.server_conns[0]
    flow = server.flow
    for _ in range(20):
        pair.step()
    assert pair.client.flow.blocked_sent_at == 64 * KIB  # the client said so
    assert flow.window == 64 * KIB and flow.max_data == 64 * KIB

    got = bytearray()
    pair.run(lambda: bool(got.extend(server.read_stream(sid))) or len(got) == len(data))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_data_blocked_at_a_limit_already_raised_grows_the_connection_window() -> None:
    """DATA_BLOCKED at a limit below our current one: the application had read half a
    window before the peer's signal arrived, so the window ran out within a round trip
    and doubles (issue 11: with 64 connections on one busy receiver, those whose window
    did not grow with the rate of updates stayed blocked at the initial window for
    seconds while the others finished: Jain's index under 0.98). Repeats double it at
    most up to ``max_data_window`` and never raise the limit the peer may send to; at
    our current limit or above it, nothing changes."""
    from quicflow.crypto.epoch import Epoch
    from quicflow.transport.receive_streams import on_data_blocked
    from quicflow.wire.frames import DataBlocked

    pair = _conn_limited_pair()
    pair.run(lambda: pair.client.handshake_confirmed)
    server = pair.server_conns[0]
    flow = server.flow
    limit = flow.max_data
    for at in (limit, limit + 1):
        on_data_blocked(server, DataBlocked(at), Epoch.ONE_RTT, pair.now)
    assert flow.window == 64 * KIB
    on_data_blocked(server, DataBlocked(limit - 1000), Epoch.ONE_RTT, pair.now)
    assert flow.window == 128 * KIB
    for _ in range(100):
        on_data_blocked(server, DataBlocked(limit - 1000), Epoch.ONE_RTT, pair.now)
    assert flow.window == 4096 * KIB  # doubled up to the maximum, not past it
    assert flow.max_data == limit  # nothing more the peer may send before we read


def _blocked_at_the_current_limit() -> tuple[MemoryPair, int, bytes]:
    """A connection-limited download whose sender waits at the server's current
    connection limit (64 KiB) and said so, the server's application having read
    nothing yet; the DATA_BLOCKED rode in with the last data, at ``pair.now``."""
    pair, sid, data = _sent_up_to_the_limit(1024 * KIB, b"k")
    server = pair.server_conns[0]
    flow = server.flow
    for _ in range(20):
        if server.counters.data_blocked_received:
            break
        pair.step()
    assert flow.data_received == flow.max_data == 64 * KIB and flow.window == 64 * KIB
    assert flow.peer_blocked_at == 64 * KIB  # noted, not acted on yet
    return pair, sid, data


def _read_all(pair: MemoryPair, sid: int, data: bytes, first: bytes) -> None:
    server = pair.server_conns[0]
    got = bytearray(first)
    pair.run(lambda: bool(got.extend(server.read_stream(sid, -1, pair.now)))
             or len(got) == len(data))
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_a_reader_that_keeps_up_grows_the_window_at_its_next_update() -> None:
    """DATA_BLOCKED at our current limit, and the application reads within 2 srtt of
    that signal (its own clock, handed in): the window held the sender back, not the
    application, so the update that replaces the limit doubles the window first
    (issue 11: the frame usually rides with the data up to the limit, before the reader
    could read it)."""
    pair, sid, data = _blocked_at_the_current_limit()
    server = pair.server_conns[0]
    flow = server.flow
    soon = pair.now + server.rtt.smoothed_rtt / 2
    first = server.read_stream(sid, 40 * KIB, soon)
    assert len(first) == 40 * KIB  # half a window read
    assert flow.window == 128 * KIB
    assert flow.max_data == 40 * KIB + 128 * KIB and flow.pending_max_data
    assert server.counters.data_blocked_grew == 1
    assert flow.peer_blocked_at == -1  # decided once
    _read_all(pair, sid, data, first)
    assert flow.window <= 4096 * KIB


def test_a_reader_that_reads_late_keeps_its_window() -> None:
    """The same signal, but the application reads long after it (here 0.5 s, with no
    datagram in between, so the connection's own last time is still the signal's): it
    held the sender back itself, the window stays and the update only moves the limit.
    Without the reader's time, the connection's stale time made it look prompt."""
    pair, sid, data = _blocked_at_the_current_limit()
    server = pair.server_conns[0]
    flow = server.flow
    late = pair.now + 0.5
    assert 0.5 > 2 * server.rtt.smoothed_rtt
    first = server.read_stream(sid, 40 * KIB, late)
    assert len(first) == 40 * KIB
    assert flow.window == 64 * KIB
    assert flow.max_data == 40 * KIB + 64 * KIB and flow.pending_max_data
    assert server.counters.data_blocked_grew == 0
    assert flow.peer_blocked_at == -1
    _read_all(pair, sid, data, first)


def test_the_blocked_signal_survives_a_snapshot() -> None:
    """The noted signal is plain data in the connection snapshot (its time shifted with
    the others on restore); a record of the older layout, without it, restores with
    "no signal"."""
    from quicflow.transport.snapshot import CODEC, shift_times
    from quicflow.transport.state import FlowControl

    pair, _, _ = _blocked_at_the_current_limit()
    flow = pair.server_conns[0].flow
    record = CODEC.to_json(flow)
    copy = CODEC.from_json(record, 0)
    assert type(copy) is FlowControl
    assert (copy.peer_blocked_at, copy.peer_blocked_time) == (64 * KIB, flow.peer_blocked_time)
    shift_times(copy, 10.0)
    assert copy.peer_blocked_time == flow.peer_blocked_time + 10.0
    for name in ("peer_blocked_at", "peer_blocked_time"):
        del record["f"][name]
    old = CODEC.from_json(record, 0)
    assert (old.peer_blocked_at, old.peer_blocked_time) == (-1, 0.0)
    assert old.max_data == flow.max_data
    shift_times(old, 10.0)
    assert old.peer_blocked_time == 0.0  # "never" stays never


def test_a_late_reader_on_loopback_keeps_its_connection_window() -> None:
    """End to end over real sockets (the stream reader hands the event loop's time to
    the transport): a client whose application reads only long after the server said it
    was blocked at the client's connection limit (64 KiB) keeps that window (a slow
    application buffers no more), and the download arrives intact."""
    import asyncio

    import quicflow
    from tests.support import echo_proto
    from tests.support.quic_helpers import client_config, run, server_config

    size, seed = 512 * KIB, 5

    async def main() -> tuple[int, int, int, bytes]:
        server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                      configuration=server_config())
        try:
            config = client_config(max_data=64 * KIB, max_data_window=4096 * KIB,
                                   max_stream_data=1024 * KIB)
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=config) as conn:
                reader, writer = await conn.create_stream()
                writer.write(echo_proto.request_header(size, seed))
                writer.write_eof()
                c = conn.conn
                while not c.counters.data_blocked_received:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.5)  # the application is busy elsewhere
                assert 2 * c.rtt.smoothed_rtt < 0.5
                got = bytearray(await reader.read(40 * KIB))  # past half the window
                window, grew = c.flow.window, c.counters.data_blocked_grew
                while chunk := await reader.read(echo_proto.CHUNK):
                    got += chunk
                return window, grew, c.counters.data_blocked_received, bytes(got)
        finally:
            server.close()

    window, grew, received, got = run(main(), 60)
    assert window == 64 * KIB and grew == 0 and received >= 1
    assert got[echo_proto.RESPONSE_HEADER_LEN:] == echo_proto.payload(seed, size)
