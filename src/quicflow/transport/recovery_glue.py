"""What the connection does with acknowledged and lost packets' frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..crypto.epoch import Epoch
from ..crypto.extension import EXT, python_forced
from . import pmtud, qlog
from .ack_frequency import maybe_request, on_frame_acked, on_frame_lost, on_probe
from .connection import SPACE_OF_EPOCH, Connection
from .events import StreamWritable
from .recovery import LossDetection, SentPacket
from .state import (
    ECN_CAPABLE,
    ECN_FAILED,
    R_ACK_FREQUENCY,
    R_CRYPTO,
    R_HANDSHAKE_DONE,
    R_MAX_DATA,
    R_MAX_STREAM_DATA,
    R_MAX_STREAMS,
    R_NEW_CID,
    R_NEW_TOKEN,
    R_PATH_CHALLENGE,
    R_RESET,
    R_RETIRE_CID,
    R_STOP,
    R_STREAM,
    R_STREAM_RUN,
)
from .stream_api import maybe_forget_stream

#: (globals: an enum class attribute costs about four times more)
_INITIAL, _HANDSHAKE, _ONE_RTT = Epoch.INITIAL, Epoch.HANDSHAKE, Epoch.ONE_RTT


def on_ack_frame(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if epoch == _ONE_RTT and conn.peer_params is not None:
        exponent = conn.peer_params.ack_delay_exponent
    else:
        exponent = 3
    ack_delay = (frame.ack_delay << exponent) / 1_000_000
    conn.counters.ack_frames_received += 1
    loss = conn.loss
    acked, lost = _ack_received(
        loss, epoch, frame.ranges, ack_delay, now, conn.handshake_confirmed
    )
    space = conn.spaces[SPACE_OF_EPOCH[epoch]]
    largest = frame.ranges[0][1] if frame.ranges else -1
    if largest > space.largest_acked:
        if epoch == _ONE_RTT and space.largest_acked < conn.key_phase_first_pn <= largest:
            # the first ACK of a packet sent with the current keys: the next key update
            # may start three PTOs from now (RFC 9001 §6.1, §6.5)
            conn.key_update_allowed_at = max(conn.key_update_allowed_at, now + 3 * conn.pto())
        space.largest_acked = largest
    if acked:
        conn.probes_pending = [0, 0, 0]
        if conn.ecn_state != ECN_FAILED:
            # RFC 9000 §13.4.2: the peer's ECN counts must account for the ECT(0)
            # packets it acknowledges; otherwise the path drops or bleaches the marks
            # and ECN goes off
            ecn = frame.ecn
            if ecn is None:
                conn.ecn_state = ECN_FAILED
            else:
                old = space.ecn_peer_counts
                d_ect0, d_ect1, d_ce = ecn[0] - old[0], ecn[1] - old[1], ecn[2] - old[2]
                if d_ect0 < 0 or d_ect1 < 0 or d_ce < 0:
                    pass  # a reordered, older ACK
                elif d_ect1 > 0 or d_ect0 + d_ce < len(acked):
                    conn.ecn_state = ECN_FAILED
                else:
                    space.ecn_peer_counts = [ecn[0], ecn[1], ecn[2]]
                    conn.ecn_state = ECN_CAPABLE
                    if d_ce > 0:
                        conn.cc.on_ecn_ce(acked[-1].time_sent, now)
        on_acked_packets(conn, acked)
        pm = conn.pmtud
        if pm.probe_pn >= 0 or pm.big_loss_events:
            pmtud.on_acks(conn, acked, now)
    if lost:
        on_lost_packets(conn, lost)
    if epoch == _ONE_RTT and conn.ack_freq.peer_min_us >= 0 and conn.send_queue:
        # the window moved: ask for another ACK frequency (only while stream data waits
        # to be sent: a handshake-only or idle connection asks nothing, see
        # maybe_request)
        maybe_request(conn)
    if conn.qlog is not None:
        qlog.metrics_updated(conn, now)


_AckReceived = Callable[[LossDetection, Epoch, list[tuple[int, int]], float, float, bool],
                        tuple[list[SentPacket], list[SentPacket]]]


def _pick_ack_received() -> _AckReceived:
    """``LossDetection.on_ack_received``, or its C twin for an ACK frame's common case
    (``crypto/_native_src/ack.c``: one range of whole records in any packet number
    space, nothing to declare lost; the rest goes to the method) when the extension is
    built and not forced off."""
    if EXT is None or python_forced():
        return LossDetection.on_ack_received
    EXT.ack_setup(LossDetection.on_ack_received, _ONE_RTT, _INITIAL, _HANDSHAKE)
    native: _AckReceived = EXT.ack_received
    return native


_ack_received = _pick_ack_received()

#: Epoch by value (a table lookup: calling the enum class runs enum's Python __call__)
_EPOCHS = tuple(Epoch)
#: a CRYPTO record's epoch value -> its space's index in ``conn.spaces`` (SPACE_OF_EPOCH)
_SPACE_OF_EPOCH_VALUE = tuple(SPACE_OF_EPOCH[e] for e in _EPOCHS)


def on_acked_packets(conn: Connection, packets: list[SentPacket]) -> None:
    writable: set[int] = set()
    streams = conn.streams
    # Consecutive acknowledged bytes of one stream (a bulk flight's batches, in packet
    # number order) reach the send buffer as one range: its state after one on_acked
    # of a..c is the state after a..b then b..c, and so is the sum released.
    run_sid = -1
    run_send = None
    run_start = run_end = 0
    run_fin = False
    for packet in packets:
        for record in packet.frames:
            rec: tuple[int, ...] = record  # type: ignore[assignment]
            kind = rec[0]
            if kind == R_STREAM_RUN or kind == R_STREAM:
                if kind == R_STREAM_RUN:
                    offset, length, fin = _run_piece(packet, rec)
                else:
                    offset, length, fin = rec[2], rec[3], bool(rec[4])
                sid = rec[1]
                if sid == run_sid and offset == run_end and not run_fin:
                    run_end = offset + length
                    run_fin = fin
                    continue
                if run_send is not None:
                    conn.send_buffered -= run_send.on_acked(
                        run_start, run_end - run_start, run_fin
                    )
                stream = streams.get(sid)
                run_send = stream.send if stream is not None else None
                run_sid = sid
                run_start = offset
                run_end = offset + length
                run_fin = fin
                if run_send is not None:
                    writable.add(sid)
            elif kind == R_CRYPTO:
                crypto = conn.spaces[_SPACE_OF_EPOCH_VALUE[rec[1]]].crypto_send
                if crypto is not None:  # (None: the space was discarded)
                    crypto.on_acked(rec[2], rec[3], False)
            elif kind == R_RESET:
                stream = streams.get(rec[1])
                if stream is not None and stream.send is not None:
                    stream.send.reset_acked = True
                    writable.add(rec[1])
            elif kind == R_ACK_FREQUENCY:
                on_frame_acked(conn, rec[1], rec[2])
            elif kind == R_HANDSHAKE_DONE:
                conn.handshake_done_unacked = False  # the client confirmed: key updates
            elif kind == R_PATH_CHALLENGE and conn.path_challenge:
                # The challenge arrived but no PATH_RESPONSE yet: it may be in this very
                # packet (frames after the ACK clear the flag again), or lost, and a
                # PATH_RESPONSE is never retransmitted. Ask again, with the same data.
                conn.path_challenge_pending = True
    if run_send is not None:
        conn.send_buffered -= run_send.on_acked(run_start, run_end - run_start, run_fin)
    for sid in writable:
        stream = streams.get(sid)
        if stream is None:
            continue
        conn.events.append(StreamWritable(sid))
        if stream.send is not None and stream.send.is_complete():
            maybe_forget_stream(conn, stream)


def on_lost_packets(conn: Connection, packets: list[SentPacket]) -> None:
    conn.counters.packets_lost += sum(p.count for p in packets)
    if conn.qlog is not None:
        qlog.packets_lost(conn, conn._now_hint, packets)
    resend_frames(conn, packets)
    if conn.pmtud.enabled:
        pmtud.on_losses(conn, packets, conn._now_hint)


def resend_frames(conn: Connection, packets: list[SentPacket]) -> None:
    """Queue the frames these packets carried to be sent again (QUIC retransmits
    frames, not packets); used for lost packets and for PTO probes."""
    streams = conn.streams
    for packet in packets:
        for record in packet.frames:
            rec: tuple[int, ...] = record  # type: ignore[assignment]
            kind = rec[0]
            if kind == R_STREAM or kind == R_STREAM_RUN:
                stream = streams.get(rec[1])
                if stream is not None and stream.send is not None:
                    if kind == R_STREAM_RUN:
                        stream.send.on_lost(*_run_piece(packet, rec))
                    else:
                        stream.send.on_lost(rec[2], rec[3], bool(rec[4]))
                    if rec[1] not in conn.send_queue:
                        conn.send_queue.append(rec[1])
            elif kind == R_CRYPTO:
                crypto = conn.spaces[SPACE_OF_EPOCH[_EPOCHS[rec[1]]]].crypto_send
                if crypto is not None:  # (None: the space was discarded)
                    crypto.on_lost(rec[2], rec[3], False)
            elif kind == R_MAX_DATA:
                conn.flow.pending_max_data = True
            elif kind == R_MAX_STREAM_DATA:
                if rec[1] in streams and rec[1] not in conn.pending_stream_updates:
                    conn.pending_stream_updates.append(rec[1])
            elif kind == R_MAX_STREAMS:
                (conn.bidi if rec[1] else conn.uni).pending_max_streams = True
            elif kind == R_NEW_CID:
                for entry in conn.host_cids:
                    # (one below our Retire Prior To is retired by it: not sent again,
                    # a frame with it would be invalid, RFC 9000 §19.15)
                    if entry.sequence == rec[1] and not entry.retired and (
                        entry.sequence >= conn.host_retire_prior_to
                    ):
                        entry.announced = False
            elif kind == R_RETIRE_CID:
                conn.retire_pending.append(rec[1])
            elif kind == R_HANDSHAKE_DONE:
                conn.handshake_done_pending = True
            elif kind == R_NEW_TOKEN:
                conn.new_token_pending = True
            elif kind == R_ACK_FREQUENCY:
                on_frame_lost(conn, rec[1])
            elif kind == R_PATH_CHALLENGE:
                if conn.path_challenge:  # not yet answered: challenge the path again
                    conn.path_challenge_pending = True
            elif kind == R_RESET:
                stream = streams.get(rec[1])
                if stream is not None and stream.send is not None and not stream.send.reset_acked:
                    stream.send.reset_pending = True
                    if rec[1] not in conn.send_queue:
                        conn.send_queue.append(rec[1])
            elif kind == R_STOP:
                stream = streams.get(rec[1])
                recv = stream.recv if stream is not None else None
                if recv is not None and recv.final_size is None:
                    recv.stop_sending_pending = True
                    if rec[1] not in conn.send_queue:
                        conn.send_queue.append(rec[1])


def _run_piece(packet: SentPacket, rec: tuple[int, ...]) -> tuple[int, int, bool]:
    """The stream bytes (offset, length, fin) that a piece of a batch record carried."""
    _, _, start, per_packet, total, fin = rec
    base = packet.base_pn if packet.base_pn >= 0 else packet.pn
    first = start + (packet.pn - base) * per_packet
    end = min(start + (packet.pn - base + packet.count) * per_packet, start + total)
    return first, end - first, bool(fin) and end == start + total


def on_loss_timeout(conn: Connection, now: float) -> None:
    lost, probe_epoch = conn.loss.on_timeout(now)
    if lost:
        on_lost_packets(conn, lost)
    if probe_epoch is not None:
        index = SPACE_OF_EPOCH[probe_epoch]
        conn.probes_pending[index] = 2
        if probe_epoch != _ONE_RTT:
            requeue_epoch(conn, probe_epoch)
            if (probe_epoch == _INITIAL
                    and conn.loss.spaces[1].ack_eliciting_in_flight
                    and conn.send_protectors[_HANDSHAKE] is not None):
                # RFC 9002 §6.2.4: also probe the other spaces with data in flight (the
                # Handshake data coalesces with the Initial probe); otherwise a server
                # whose whole first flight was lost resends its certificate only at
                # the Handshake PTO, one backoff later
                conn.probes_pending[1] = max(conn.probes_pending[1], 1)
                requeue_epoch(conn, _HANDSHAKE)
        else:
            on_probe(conn)  # (an IMMEDIATE_ACK with the probe, if we asked for fewer)
            # RFC 9002 §6.2.4: probes SHOULD carry data. Without new data a probe would
            # be a bare PING, which a peer may never acknowledge (one that waits for our
            # HANDSHAKE_DONE probes Handshake only): resend what the oldest
            # ack-eliciting packet in flight carried (not the oldest packet: that may be
            # an ACK-only one, never acknowledged, with nothing to resend). It stays in
            # flight; an ACK for either copy is fine.
            oldest = conn.loss.oldest_ack_eliciting(_ONE_RTT)
            if oldest is not None:
                resend_frames(conn, [oldest.piece(oldest.pn, oldest.pn)])


def requeue_epoch(conn: Connection, epoch: Epoch) -> None:
    """Queue every unacknowledged CRYPTO byte of ``epoch`` again (PTO, Retry)."""
    space = conn.spaces[SPACE_OF_EPOCH[epoch]]
    crypto = space.crypto_send
    if crypto is not None and crypto.next_offset > crypto.acked_offset:
        crypto.on_lost(crypto.acked_offset, crypto.next_offset - crypto.acked_offset, False)
