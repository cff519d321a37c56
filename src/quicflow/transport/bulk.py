"""The bulk-transfer fast path of the sender.

When a connection is past its handshake and has nothing to send but new data of one
stream, each datagram is one full-size short-header packet carrying one STREAM frame.
This loop builds a whole run of them with per-batch, not per-packet, checks: congestion
window, pacing budget and flow control are read once; the offload engine frames and seals
the run in one call (``seal_stream_run``) straight from the stream's send buffer.

``build_bulk`` is the native engine's C twin of ``build_bulk_python`` when the extension
is there (``crypto/_native_src/bulk.c``: the same decisions and state, one call instead
of ~25 Python frames per send turn); the Python function is the reference, and the C one
hands it every case it does not take (another engine, a run reaching the end of a send
buffer chunk, unexpected field types) before changing anything.
"""

from __future__ import annotations

from collections.abc import Callable

from ..crypto import native
from ..crypto.epoch import Epoch
from ..crypto.extension import EXT, python_forced
from ..wire.packet import encode_packet_number
from .connection import Connection
from .idle import effective_idle
from .recovery import SentPacket
from .state import R_STREAM_RUN
from .streams import SendStream

TAG_LEN = 16
_ONE_RTT = Epoch.ONE_RTT  # (a global: an enum class attribute costs about four times more)


def bulk_applies(conn: Connection) -> bool:
    """True when only stream data of the first queued stream waits to be sent."""
    spaces = conn.spaces
    if not (conn.handshake_confirmed and spaces[0].discarded and spaces[1].discarded):
        return False
    app = spaces[2]
    if (
        (app.ack_pending and app.ack_eliciting_pending)  # an ACK is owed: general path
        or (app.ack_repeat_at is not None and conn._now_hint >= app.ack_repeat_at)
        or conn.handshake_done_pending
        or conn.key_update_ping
        or conn.new_token_pending
        or conn.host_cids_pending
        or conn.datagrams_pending
        or conn.flow.pending_max_data
        or conn.ack_freq.pending
        or conn.ack_freq.immediate_pending
        or conn.pending_stream_updates
        or conn.path_challenges_received
        or conn.path_challenge_pending
        or conn.retire_pending
        or conn.probes_pending[2]
        or conn.bidi.pending_max_streams
        or conn.uni.pending_max_streams
        or conn.bidi.blocked_pending
        or conn.uni.blocked_pending
        or not conn.send_queue
    ):
        return False
    for entry in conn.host_cids:
        if not entry.announced and entry.sequence > 0:
            return False
    stream = conn.streams.get(conn.send_queue[0])
    if stream is None or stream.send is None:
        return False
    send = stream.send
    # (send.lost.starts: RangeSet.__bool__'s test without its Python frame, per build)
    if send.lost.starts or send.fin_lost or send.reset_code is not None:
        return False
    recv = stream.recv
    return recv is None or not recv.stop_sending_pending


def build_bulk_python(
    conn: Connection,
    now: float,
    buf: bytearray,
    bounds: list[int],
    seal: list[tuple[int, int, int, int, bytes]],
    max_count: int,
) -> int:
    """Append up to ``max_count`` one-packet datagrams of the first queued stream.

    Returns how many were built (0: the caller takes the general path; -1: the pacer
    holds the data back until ``conn.pacer_deadline``, send nothing more now).
    """
    mds = conn.max_datagram_size
    loss = conn.loss
    cc = loss.cc
    cwnd_room = cc.cwnd - cc.bytes_in_flight
    if cwnd_room < mds:
        return 0
    sid = conn.send_queue[0]
    stream = conn.streams[sid]
    send = stream.send
    assert send is not None
    flow = conn.flow
    start = send.next_offset
    end, want = _run_want(conn, send, cwnd_room, max_count)
    if not want:
        return 0
    rtt = loss.rtt
    pacer_room, later = conn.pacer.run_budget(now, rtt, cc.cwnd, want)
    if later is not None:
        conn.pacer_deadline = later  # a burst's worth of budget by then: the timer sends
        return -1
    # the burst a deadline waited for goes now: a deadline left behind would wake the
    # timer later for nothing (issue 11: 200 empty timer turns per GiB at 256 x 4 MiB)
    conn.pacer_deadline = None
    count = min(max_count, cwnd_room // mds, max(1, pacer_room // mds))
    space = conn.spaces[2]
    pn = space.next_pn
    _, pn_len = encode_packet_number(
        pn + count, space.largest_acked if space.largest_acked >= 0 else None
    )
    dcid = conn.peer_cid
    header_len = 1 + len(dcid) + pn_len
    # varint lengths (RFC 9000 §16), without encoding them
    sid_len = 1 if sid < 0x40 else 2 if sid < 0x4000 else 4 if sid < 0x40000000 else 8
    capacity = mds - header_len - TAG_LEN
    # Every frame carries its offset with the same varint length (non-minimal encodings
    # are allowed, RFC 9000 §16), so every full packet has the same size: one GSO run.
    off_len = 1 if end < 0x40 else 2 if end < 0x4000 else 4 if end < 0x40000000 else 8
    frame_head = 1 + sid_len + off_len + 2
    data_cap = capacity - frame_head
    if data_cap <= 0:
        return 0
    # all packets are `unit` bytes but the last of each engine call, which may be shorter
    unit = header_len + frame_head + data_cap + TAG_LEN
    total = 0
    done = 0
    while True:
        # The engine frames and seals a run of packets in one call (nothing for the
        # ``seal`` list: the general path's packets keep going there). It takes one
        # buffer: a run that reaches the end of a chunk of the send buffer goes on with
        # the next chunk in another call, within the same count (one shorter packet).
        chunk, at, chunk_end = send.chunk_at(start)
        run_end = end if end <= chunk_end else chunk_end
        packet_start = len(buf)
        built = conn.engine.seal_stream_run(
            buf, conn.seal_key, pn, pn_len, sid, chunk, at, at + run_end - start, start,
            off_len, data_cap, count - done, send.fin_written and run_end == send.write_offset,
            dcid,
        )
        if not built:  # cannot happen (count > done, data waits); nothing was appended
            break
        offset = min(run_end, start + built * data_cap)
        fin = send.fin_written and offset == send.write_offset
        if fin:
            send.fin_sent = True  # it rode on the last packet: no FIN-only frame after it
        size = len(buf) - packet_start
        if built > 1:
            bounds.extend(range(packet_start + unit, packet_start + built * unit, unit))
        bounds.append(len(buf))
        # one record per call: packet numbers pn.., stream bytes start..offset
        loss.on_packet_sent(
            SentPacket(pn, now, size, True, True, _ONE_RTT,
                       [(R_STREAM_RUN, sid, start, data_cap, offset - start, int(fin))],
                       built, unit)
        )
        pn += built
        space.next_pn = pn
        flow.data_sent += offset - start
        send.next_offset = offset
        total += size
        done += built
        start = offset
        if offset < run_end or offset >= end or done >= count:
            break
    if not done:
        return 0
    if not send.has_data_to_send() and not (
        send.is_flow_blocked() and send.blocked_sent_at != send.max_data
    ):
        # (a stream that just ran into the peer's limit stays queued: the general path
        # sends its STREAM_DATA_BLOCKED, RFC 9000 §4.1, and then drops it)
        conn.send_queue.pop(0)
    conn.pacer.consume(now, total, rtt, cc.cwnd)
    counters = conn.counters
    counters.packets_sent += done
    counters.datagrams_sent += done
    counters.bytes_sent += total
    if not conn.last_ack_eliciting_sent_after_receive:
        conn.idle_deadline = now + effective_idle(conn)
        conn.last_ack_eliciting_sent_after_receive = True
    if pacer_room - total < max_count * mds and done == count and conn.send_queue and (
            conn.send_queue[0] == sid):  # (a budget left for a whole run: the next goes)
        _pace_after_run(conn, now, send, max_count - done or max_count)
    return done


def _pace_after_run(conn: Connection, now: float, send: SendStream, max_count: int) -> None:
    """A run was built and its stream has more: ask the pacer now, at the same ``now``,
    what the next call would (the same window, flow control and stream) and keep a
    deadline it gives in ``conn.pacer_deadline``, so the caller stops here instead of
    making that call (and a whole empty build when the run filled the batch) only to be
    held back (issue 11: about 11 k such calls per GiB at 256 connections)."""
    loss = conn.loss
    cc = loss.cc
    cwnd_room = cc.cwnd - cc.bytes_in_flight
    if cwnd_room < conn.max_datagram_size:
        return  # the window holds the rest back: the general path says what goes
    _, want = _run_want(conn, send, cwnd_room, max_count)
    if want:
        _, later = conn.pacer.run_budget(now, loss.rtt, cc.cwnd, want)
        if later is not None:
            conn.pacer_deadline = later


def _run_want(conn: Connection, send: SendStream, cwnd_room: int, max_count: int
              ) -> tuple[int, int]:
    """Where the stream bytes a run may take end (flow control) and the bytes that run
    would take on the wire, at most the window room and ``max_count`` datagrams (0:
    no stream byte may go)."""
    flow = conn.flow
    start = send.next_offset
    end = min(send.write_offset, send.max_data, start + flow.peer_max_data - flow.data_sent)
    if end <= start:
        return end, 0
    mds = conn.max_datagram_size
    return end, min(cwnd_room, max_count * mds, (end - start) + (end - start) // 1024 * 64 + mds)


_Build = Callable[[Connection, float, bytearray, list[int],
                   list[tuple[int, int, int, int, bytes]], int], int]


def _pick_build_bulk() -> _Build:
    """The C twin when the native engine loaded (and is not forced off), else Python."""
    if EXT is None or python_forced():
        return build_bulk_python
    EXT.bulk_setup(build_bulk_python, SentPacket, effective_idle, R_STREAM_RUN, _ONE_RTT,
                   native.NativeOffloadEngine)
    built: _Build = EXT.build_bulk
    return built


build_bulk = _pick_build_bulk()
