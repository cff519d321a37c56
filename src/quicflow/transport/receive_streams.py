"""The frame handlers for streams and flow control (STREAM, RESET_STREAM, STOP_SENDING,
MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS, DATA_BLOCKED, STREAM_DATA_BLOCKED, STREAMS_BLOCKED).

Each takes ``(conn, frame, epoch, now)`` like every entry of ``receive._HANDLERS``; a
violation raises :class:`QuicError` with the RFC's code (the caller names the frame).
"""

from __future__ import annotations

from typing import Any

from ..crypto.epoch import Epoch
from .ack_frequency import on_stream_end
from .connection import Connection
from .errors import FLOW_CONTROL_ERROR, FRAME_ENCODING_ERROR, QuicError
from .events import (
    StopSendingReceived,
    StreamReadable,
    StreamReset,
    StreamsAvailable,
    StreamWritable,
)


def on_stream(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    sid = frame.stream_id
    conn.check_stream_direction(sid, receiving=True)
    stream = conn.get_or_create_peer_stream(sid)
    if stream is None or stream.recv is None:
        return
    recv = stream.recv
    flow = conn.flow
    if frame.fin:
        on_stream_end(conn)
    cost = recv.chunk_cost
    grown = recv.receive(frame.offset, frame.data, frame.fin,
                         flow.max_data - flow.data_consumed - flow.reassembly_cost)
    if recv.chunk_cost != cost:
        flow.reassembly_cost += recv.chunk_cost - cost
    if grown:
        flow.data_received += grown
        if flow.data_received > flow.max_data:
            raise QuicError(FLOW_CONTROL_ERROR, "connection flow control limit exceeded")
    if recv.readable or recv.at_eof():
        conn.events.append(StreamReadable(sid))


def on_reset_stream(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    sid = frame.stream_id
    conn.check_stream_direction(sid, receiving=True)
    stream = conn.get_or_create_peer_stream(sid)
    if stream is None or stream.recv is None:
        return
    first = stream.recv.reset_code is None
    cost = stream.recv.chunk_cost
    grown = stream.recv.on_reset(frame.error_code, frame.final_size)
    conn.flow.reassembly_cost -= cost  # on_reset dropped every stored piece
    conn.flow.data_received += grown
    if conn.flow.data_received > conn.flow.max_data:
        raise QuicError(FLOW_CONTROL_ERROR, "connection flow control limit exceeded")
    if first:
        conn.events.append(StreamReset(sid, frame.error_code))
        conn.events.append(StreamReadable(sid))


def on_stop_sending(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    sid = frame.stream_id
    conn.check_stream_direction(sid, receiving=False)
    stream = conn.get_or_create_peer_stream(sid)
    if stream is None or stream.send is None:
        return
    if stream.send.reset_code is None and not stream.send.is_complete():
        conn.reset_stream(sid, frame.error_code)
        conn.events.append(StopSendingReceived(sid, frame.error_code))


def on_max_data(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if frame.maximum > conn.flow.peer_max_data:
        conn.flow.peer_max_data = frame.maximum
        requeue_sendable(conn)
        for sid in conn.streams:
            conn.events.append(StreamWritable(sid))


def requeue_sendable(conn: Connection) -> None:
    """The connection's credit or the streams' limits grew: every stream with something
    to send is in the send queue again. A stream that waits for credit leaves the queue
    (send._fill_streams at credit 0, or a stream at its own limit), so the streams behind
    it are not walked past it for every packet built while it waits."""
    queue = conn.send_queue
    queued = set(queue)
    for sid, stream in conn.streams.items():
        send = stream.send
        if send is not None and sid not in queued and send.has_data_to_send():
            queue.append(sid)


def on_max_stream_data(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    sid = frame.stream_id
    conn.check_stream_direction(sid, receiving=False)
    stream = conn.get_or_create_peer_stream(sid)
    if stream is None or stream.send is None:
        return
    if frame.maximum > stream.send.max_data:
        stream.send.max_data = frame.maximum
        if sid not in conn.send_queue and stream.send.has_data_to_send():
            conn.send_queue.append(sid)
        conn.events.append(StreamWritable(sid))


def on_max_streams(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    limits = conn.bidi if frame.bidi else conn.uni
    if frame.maximum > limits.peer_max:
        limits.peer_max = frame.maximum
        conn.events.append(StreamsAvailable())


def on_data_blocked(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    flow = conn.flow
    conn.counters.data_blocked_received += 1
    if frame.limit == flow.max_data:
        # At our current limit: most often the frame rides with the data up to it, before
        # the application could read it, and that cannot be told from an application that
        # holds the peer back. Noted; the next window update decides
        # (stream_api.update_connection_window: did the application read soon after?).
        flow.peer_blocked_at = frame.limit
        flow.peer_blocked_time = now
        return
    if frame.limit > flow.max_data:
        return
    # The peer waited at a connection limit we had already raised (RFC 9000 §19.12:
    # input to tuning flow control): the application read half a window before the
    # peer's blocked signal reached us, so it keeps up and the window ran out within a
    # round trip: too small for the rate. (At our current limit the application has not
    # read half the window yet: it, not the window, holds the peer back, and a larger
    # window would only buffer more.) Without it a window grows only with the rate of
    # updates: with many connections sharing one busy receiver, the ones whose window
    # happened to double got a larger share of every round, so their updates came
    # faster and their windows doubled again, while others stayed blocked at the
    # initial window for seconds (issue 11, 64 x 64 MiB: Jain's index under 0.98).
    # Doubled within window_max (a peer repeating the frame gets no more); the larger
    # limit goes out with the next update, when the application has read half the window.
    if flow.window < flow.window_max:
        flow.window = min(flow.window * 2, flow.window_max)
        conn.counters.data_blocked_grew += 1


def on_stream_data_blocked(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    conn.check_stream_direction(frame.stream_id, receiving=True)
    stream = conn.get_or_create_peer_stream(frame.stream_id)
    recv = stream.recv if stream is not None else None
    if recv is None or frame.limit != recv.max_data or recv.final_size is not None:
        return
    # The peer has more to send and waits for our current limit: the window is smaller
    # than the rate needs (autotuning only sees the intervals between our updates, and
    # a sender that stalls on the limit keeps them long). Double it, within window_max;
    # the larger limit goes out with the next update, when the application has read
    # half the window (never more unread data than the window allows).
    if recv.window < recv.window_max:
        recv.window = min(recv.window * 2, recv.window_max)


def on_streams_blocked(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if frame.limit > (1 << 60):
        raise QuicError(FRAME_ENCODING_ERROR, "STREAMS_BLOCKED over 2^60")
