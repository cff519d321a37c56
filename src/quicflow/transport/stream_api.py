"""The stream API of a :class:`~quicflow.transport.connection.Connection`.

Opening, writing, reading, resetting and forgetting streams, the connection-level
receive window they feed, DATAGRAM frames, and the creation of peer streams for
incoming frames. Plain functions over a connection; ``Connection`` binds the public
ones as methods (``conn.open_stream()``, ``conn.read_stream(sid)``, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.tparams import TransportParameters
from .errors import APPLICATION_ERROR, STREAM_LIMIT_ERROR, STREAM_STATE_ERROR, QuicError
from .events import StreamOpened, StreamWritable
from .state import CLOSING, StreamLimits
from .streams import RecvStream, SendStream, Stream

if TYPE_CHECKING:
    from .connection import Connection


class StreamLimitReached(Exception):
    """No stream of that type can be opened until the peer raises its limit."""


def stream_limits(conn: Connection, stream_id: int) -> StreamLimits:
    return conn.uni if stream_id & 2 else conn.bidi


def open_stream(conn: Connection, bidirectional: bool = True) -> int:
    """Open a local stream and return its id; raises StreamLimitReached."""
    if conn.state >= CLOSING:
        raise QuicError(APPLICATION_ERROR, "connection is closed")
    limits = conn.bidi if bidirectional else conn.uni
    if limits.opened_local >= limits.peer_max:
        if limits.blocked_sent_at != limits.peer_max:
            limits.blocked_pending = True
        raise StreamLimitReached(
            f"peer allows {limits.peer_max} {'bidi' if bidirectional else 'uni'} streams"
        )
    stream_id = (limits.opened_local << 2) | (0 if conn.is_client else 1)
    if not bidirectional:
        stream_id |= 2
    limits.opened_local += 1
    create_stream(conn, stream_id, local=True)
    return stream_id


def create_stream(conn: Connection, stream_id: int, local: bool) -> Stream:
    cfg = conn.configuration
    params = conn.peer_params or conn.remembered_params or TransportParameters()
    uni = bool(stream_id & 2)
    send: SendStream | None = None
    recv: RecvStream | None = None
    if local or not uni:
        if uni:
            peer_limit = params.initial_max_stream_data_uni
        elif local:
            peer_limit = params.initial_max_stream_data_bidi_remote
        else:
            peer_limit = params.initial_max_stream_data_bidi_local
        send = SendStream(max_data=peer_limit)
    if not local or not uni:
        window = cfg.max_stream_data
        recv = RecvStream(
            max_data=window,
            window=window,
            window_max=max(window, cfg.max_stream_data_window),
        )
    stream = Stream(stream_id=stream_id, send=send, recv=recv, local=local)
    conn.streams[stream_id] = stream
    return stream


def existing_stream(conn: Connection, stream_id: int) -> Stream:
    stream = conn.streams.get(stream_id)
    if stream is None:
        raise ValueError(f"stream {stream_id} does not exist (or is finished)")
    return stream


def send_stream_data(
    conn: Connection, stream_id: int, data: bytes, end_stream: bool = False
) -> None:
    if conn.state >= CLOSING:
        raise QuicError(APPLICATION_ERROR, "connection is closed")
    send = existing_stream(conn, stream_id).send
    if send is None:
        raise ValueError(f"stream {stream_id} is receive-only")
    send.write(data, end_stream)
    conn.send_buffered += len(data)
    if stream_id not in conn.send_queue:
        conn.send_queue.append(stream_id)


def send_datagram(conn: Connection, data: bytes) -> None:
    """Queue ``data`` as one DATAGRAM frame (RFC 9221): unreliable, never
    retransmitted. Raises ValueError when the peer does not accept DATAGRAM frames
    or ``data`` cannot fit in one (the peer's limit and our packet size). When the
    queue (``max_datagram_queue``) is full, the oldest queued one is dropped."""
    if conn.state >= CLOSING:
        raise QuicError(APPLICATION_ERROR, "connection is closed")
    limit = conn.peer_params.max_datagram_frame_size if conn.peer_params else 0
    if not limit:
        raise ValueError("the peer does not accept DATAGRAM frames")
    frame = 1 + (1 if len(data) < 64 else 2 if len(data) < 16384 else 4) + len(data)
    room = conn.max_datagram_size - (1 + len(conn.peer_cid) + 4 + 16)
    if frame > min(limit, room):
        raise ValueError(f"datagram of {len(data)} bytes does not fit in a DATAGRAM frame "
                         f"(at most {min(limit, room)} bytes with its header)")
    queue = conn.datagrams_pending
    if len(queue) >= max(1, conn.configuration.max_datagram_queue):
        queue.pop(0)
        conn.counters.datagram_frames_dropped += 1
    queue.append(bytes(data))


def take_back_unsent(conn: Connection, stream_id: int) -> int:
    """Withdraw the bytes written on ``stream_id`` but never sent; returns the offset
    where writing continues (before a capture, to keep the snapshot small)."""
    send = existing_stream(conn, stream_id).send
    if send is None:
        raise ValueError(f"stream {stream_id} is receive-only")
    written = send.write_offset
    offset = send.take_back()
    conn.send_buffered -= written - offset  # no longer held: out of the send budget
    return offset


def stream_buffered(conn: Connection, stream_id: int) -> int:
    stream = conn.streams.get(stream_id)
    if stream is None or stream.send is None:
        return 0
    return stream.send.buffered


def read_stream(
    conn: Connection, stream_id: int, max_bytes: int = -1, now: float | None = None
) -> bytes:
    """Read received bytes; b"" with :meth:`stream_at_eof` true means the end.

    ``now`` is the application's time of the read (the clock the connection is driven
    with): window updates are timed with it. Without it, the time of the connection's
    last receive or build stands in, which is late for an application that reads long
    after the data came."""
    stream = conn.streams.get(stream_id)
    if stream is None or stream.recv is None:
        return b""
    recv = stream.recv
    data = recv.read(max_bytes)
    if data:
        when = conn._now_hint if now is None else now
        conn.flow.data_consumed += len(data)
        if recv.should_update_window():
            recv.new_limit(when, conn.rtt.smoothed_rtt)
            if stream_id not in conn.pending_stream_updates:
                conn.pending_stream_updates.append(stream_id)
        flow = conn.flow
        if flow.max_data - flow.data_consumed <= flow.window // 2:
            update_connection_window(conn, when)
    maybe_forget_stream(conn, stream)
    return data


def update_connection_window(conn: Connection, now: float) -> None:
    """The application has read half the connection window: raise our limit to a
    window past what it has read (MAX_DATA, RFC 9000 §4.2), first doubling the window
    (within ``max_data_window``) when it is too small for the rate.

    Too small when updates come within 2 srtt of each other (the rate fills a window
    that fast), or when the peer said it was blocked at the limit this update replaces
    (DATA_BLOCKED, RFC 9000 §19.12) and the application read up to here within 2 srtt
    of that signal: it keeps up, so the window, not the application, held the peer back
    (issue 11: connections of one busy receiver whose windows did not grow stayed
    blocked for seconds). An application that read later than that held the peer back
    itself; its window stays (a larger one would only buffer more unread data)."""
    flow = conn.flow
    srtt2 = 2 * conn.rtt.smoothed_rtt
    fast_updates = bool(flow.last_update_time) and now - flow.last_update_time < srtt2
    kept_up = flow.peer_blocked_at == flow.max_data and now - flow.peer_blocked_time < srtt2
    if (fast_updates or kept_up) and flow.window < flow.window_max:
        flow.window = min(flow.window * 2, flow.window_max)
        if kept_up and not fast_updates:  # grown because of the signal
            conn.counters.data_blocked_grew += 1
    flow.peer_blocked_at = -1
    flow.last_update_time = now
    flow.max_data = flow.data_consumed + flow.window
    flow.pending_max_data = True


def stream_at_eof(conn: Connection, stream_id: int) -> bool:
    stream = conn.streams.get(stream_id)
    if stream is None:
        return True
    recv = stream.recv
    return recv is None or recv.at_eof() and recv.readable == 0 or recv.reset_code is not None


def stream_complete(conn: Connection, stream_id: int) -> bool:
    """Every byte of the peer's stream has arrived, up to its final size (what is
    left is reading it: the reader gets its end without waiting again)."""
    stream = conn.streams.get(stream_id)
    recv = None if stream is None else stream.recv
    return recv is not None and recv.final_size is not None and recv.at_eof()


def read_owes_credit(conn: Connection, stream_id: int) -> bool:
    """Reading all the stream has ready would raise one of our limits: a MAX_STREAM_DATA
    or MAX_DATA frame would be owed then (``read_stream``'s rules, found without a read)."""
    stream = conn.streams.get(stream_id)
    recv = None if stream is None else stream.recv
    if recv is None:
        return False
    ready = recv.ready_bytes
    if recv.final_size is None and (
            recv.max_data - (recv.read_offset + ready) <= recv.window // 2):
        return True
    flow = conn.flow
    return flow.max_data - (flow.data_consumed + ready) <= flow.window // 2


def stream_waits(conn: Connection, stream_id: int) -> bool:
    """Nothing to read on the stream now and more may come: no data, no final size,
    no reset (what ``read_stream`` giving b"" while ``stream_at_eof`` is false means,
    found without a read)."""
    stream = conn.streams.get(stream_id)
    if stream is None:
        return False
    recv = stream.recv
    return (recv is not None and not recv.ready_bytes and recv.final_size is None
            and recv.reset_code is None)


def reset_stream(conn: Connection, stream_id: int, error_code: int) -> None:
    send = existing_stream(conn, stream_id).send
    if send is None:
        raise ValueError(f"stream {stream_id} is receive-only")
    conn.send_buffered -= send.reset(error_code)
    if stream_id not in conn.send_queue:
        conn.send_queue.append(stream_id)


def stop_sending(conn: Connection, stream_id: int, error_code: int) -> None:
    recv = existing_stream(conn, stream_id).recv
    if recv is None:
        raise ValueError(f"stream {stream_id} is send-only")
    if recv.stop_sending_code is None and recv.final_size is None:
        recv.stop_sending_code = error_code
        recv.stop_sending_pending = True
        if stream_id not in conn.send_queue:
            conn.send_queue.append(stream_id)


def maybe_forget_stream(conn: Connection, stream: Stream) -> None:
    send, recv = stream.send, stream.recv
    if send is not None and not send.is_complete():
        return
    if recv is not None and not (recv.fin_read or recv.reset_code is not None):
        return
    if recv is not None and recv.stop_sending_pending:
        return
    del conn.streams[stream.stream_id]
    if not stream.local:
        limits = stream_limits(conn, stream.stream_id)
        limits.closed_remote += 1
        new_max = limits.closed_remote + limits.window
        if new_max - limits.max_remote >= max(1, limits.window // 4):
            limits.max_remote = new_max
            limits.pending_max_streams = True


def stream_ids(conn: Connection) -> list[int]:
    return list(conn.streams)


def notify_writable(conn: Connection, stream_id: int) -> None:
    conn.events.append(StreamWritable(stream_id))


def check_stream_direction(conn: Connection, stream_id: int, receiving: bool) -> None:
    """Raise STREAM_STATE_ERROR for frames on a stream in the wrong direction."""
    local = bool(stream_id & 1) != conn.is_client
    uni = bool(stream_id & 2)
    if uni and local == receiving:
        raise QuicError(STREAM_STATE_ERROR, f"stream {stream_id} is wrong direction")


def get_or_create_peer_stream(conn: Connection, stream_id: int) -> Stream | None:
    """The stream for an incoming frame, creating peer streams up to it.

    Returns None for a stream that was finished and forgotten.
    """
    stream = conn.streams.get(stream_id)
    if stream is not None:
        return stream
    local = bool(stream_id & 1) != conn.is_client
    index = stream_id >> 2
    limits = stream_limits(conn, stream_id)
    if local:
        if index >= limits.opened_local:
            raise QuicError(STREAM_STATE_ERROR, f"stream {stream_id} not opened")
        return None
    if index >= limits.max_remote:
        raise QuicError(STREAM_LIMIT_ERROR, f"stream {stream_id} over the limit")
    if index < limits.opened_remote:
        return None
    base = stream_id & 3
    for i in range(limits.opened_remote, index + 1):
        sid = (i << 2) | base
        create_stream(conn, sid, local=False)
        conn.events.append(StreamOpened(sid))
    limits.opened_remote = index + 1
    return conn.streams[stream_id]
