"""The receiver's batch path: a run of short-header packets of one connection.

The offload engine opens the whole run in one call; packets whose payload is one STREAM
frame (optionally followed by PADDING) go straight into the stream, everything else takes
the general per-frame path. ACK and idle-timer bookkeeping happens once per run.
"""

from __future__ import annotations

from ..crypto.epoch import Epoch
from ..tls.alerts import TlsAlert
from .connection import Address, Connection
from .errors import CRYPTO_ERROR, FLOW_CONTROL_ERROR, QuicError
from .events import StreamReadable
from .receive import _check_stateless_reset, _effective_idle, _on_peer_key_update
from .receive import _process_frames as process_frames
from .state import CLOSING, DRAINING

_ECN_INDEX = {2: 0, 1: 1, 3: 2}


_VARINT_MASK = (0x3F, 0x3FFF, 0, 0x3FFFFFFF, 0, 0, 0, 0x3FFFFFFFFFFFFFFF)
_from_bytes = int.from_bytes


def _stream_frame(payload: bytes) -> tuple[int, int, int, int, bool] | None:
    """(stream_id, offset, data_start, data_end, fin) when ``payload`` is exactly one
    STREAM frame plus optional PADDING; None otherwise."""
    ftype = payload[0]
    if ftype & 0xF8 != 0x08:
        return None
    n = len(payload)
    if n < 2:
        return None
    size = 1 << (payload[1] >> 6)
    pos = 1 + size
    if pos > n:
        return None
    sid = _from_bytes(payload[1:pos], "big") & _VARINT_MASK[size - 1]
    offset = 0
    if ftype & 0x04:
        if pos >= n:
            return None
        size = 1 << (payload[pos] >> 6)
        if pos + size > n:
            return None
        offset = _from_bytes(payload[pos : pos + size], "big") & _VARINT_MASK[size - 1]
        pos += size
    if ftype & 0x02:
        if pos >= n:
            return None
        size = 1 << (payload[pos] >> 6)
        if pos + size > n:
            return None
        end = pos + size + (_from_bytes(payload[pos : pos + size], "big") & _VARINT_MASK[size - 1])
        pos += size
        if end > n:
            return None
        if end < n and payload.count(0, end) != n - end:
            return None  # more frames follow: general path
    else:
        end = n
    return sid, offset, pos, end, bool(ftype & 0x01)


def receive_short_run(
    conn: Connection,
    buf: bytes | memoryview,
    packets: list[tuple[int, int, bytes]],
    addr: Address,
    now: float,
    ecn: int = 0,
) -> None:
    """Take a run of short-header datagrams ``(offset, length, dcid)`` from ``buf``."""
    conn._now_hint = now
    if conn.terminated or conn.state == DRAINING:
        return
    counters = conn.counters
    counters.datagrams_received += len(packets)
    if not conn.one_rtt_ready:
        counters.packets_dropped += len(packets)
        counters.dropped_no_keys += len(packets)
        return
    for _, length, _ in packets:
        counters.bytes_received += length
    results = conn.engine.open(buf, packets)
    space = conn.spaces[2]
    received = space.received
    streams = conn.streams
    flow = conn.flow
    readable: list[int] = []
    eliciting = 0
    accepted = 0
    ecn_index = _ECN_INDEX.get(ecn & 3, -1)
    try:
        for index, result in enumerate(results):
            if result is None:
                counters.engine_open_failures += 1
                counters.packets_dropped += 1
                counters.dropped_undecryptable += 1
                offset, length, _ = packets[index]
                _check_stateless_reset(conn, bytes(buf[offset : offset + length]))
                continue
            pn = result.pn
            if result.phase_changed:
                _on_peer_key_update(conn)
            if pn <= space.largest_received and pn in received:
                counters.duplicate_packets += 1
                continue
            payload = result.payload
            parsed = _stream_frame(payload) if payload else None
            stream = streams.get(parsed[0]) if parsed is not None else None
            recv = stream.recv if stream is not None else None
            if parsed is not None and recv is not None:
                sid, offset, start, end, fin = parsed
                grown = recv.receive(offset, payload[start:end], fin)
                if grown:
                    flow.data_received += grown
                    if flow.data_received > flow.max_data:
                        raise QuicError(FLOW_CONTROL_ERROR, "connection flow control exceeded")
                if not readable or readable[-1] != sid:
                    readable.append(sid)
                is_eliciting = True
            else:
                is_eliciting = process_frames(conn, payload, Epoch.ONE_RTT, now)
                if conn.state >= CLOSING:
                    break
            accepted += 1
            if pn < space.largest_received or (received and pn > space.largest_received + 1):
                space.ack_immediately = True
            received.add(pn, pn + 1)
            if pn > space.largest_received:
                space.largest_received = pn
                space.largest_received_time = now
            if is_eliciting:
                eliciting += 1
    except QuicError as exc:
        conn.close_with_error(exc)
    except TlsAlert as exc:
        conn.close(CRYPTO_ERROR + exc.description, str(exc), application=False)
    if not accepted:
        return
    counters.packets_received += accepted
    if len(received) > 64:
        received.shift_below(received.starts[-32])
    if ecn_index >= 0:
        space.ecn_counts[ecn_index] += accepted
    space.ack_pending = True
    if eliciting:
        space.ack_eliciting_pending += eliciting
        if space.ack_eliciting_pending >= 2:
            space.ack_immediately = True
        elif space.ack_deadline is None:
            space.ack_deadline = now + conn.configuration.max_ack_delay
    conn.idle_deadline = now + _effective_idle(conn)
    conn.last_ack_eliciting_sent_after_receive = False
    if conn.state == CLOSING:
        conn.close_pending = True
    seen = set()
    for sid in readable:
        if sid not in seen:
            seen.add(sid)
            conn.events.append(StreamReadable(sid))
