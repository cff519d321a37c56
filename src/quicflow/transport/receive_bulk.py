"""The receiver's batch path: a run of short-header packets of one connection.

The offload engine opens the whole run in one call (``open_run``) and coalesces consecutive
packets whose payload is one STREAM frame (optionally followed by PADDING) of one stream,
contiguous in offset, into one entry: that goes into the stream with one ``receive`` and
into the ACK ranges as one packet-number range. Everything else takes the general
per-frame path. ACK and idle-timer bookkeeping happens once per run.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import Any

from ..crypto.epoch import Epoch
from ..crypto.offload import OffloadEngine
from ..tls.alerts import TlsAlert
from .ack_frequency import (
    after_eliciting,
    after_newest,
    on_ce,
    on_stream_end,
    out_of_order,
    silence_limit,
)
from .aead_limits import on_open_failure
from .closing import answer_in_closing
from .connection import Address, Connection
from .errors import FLOW_CONTROL_ERROR, PROTOCOL_VIOLATION, QuicError
from .events import StreamReadable
from .idle import effective_idle
from .pathprobe import after_one_rtt_packet, from_probed_address
from .rangeset import RangeSet
from .receive import _check_stateless_reset, close_for_bug, hold_early_one_rtt
from .receive import _process_frames as process_frames
from .receive_keys import on_peer_key_update
from .state import CLOSING, DRAINING, ESTABLISHED, RECEIVED_RANGES, forget_old_ranges
from .streams import ReassemblyFull, RecvStream

_ECN_INDEX = {2: 0, 1: 1, 3: 2}
_ONE_RTT = Epoch.ONE_RTT  # (a global: an enum class attribute costs about four times more)


def _overlap(received: RangeSet, start: int, end: int) -> int:
    """How many of ``[start, end)`` are already in ``received``."""
    ends = received.ends
    if not ends or start >= ends[-1]:
        return 0
    starts = received.starts
    total = 0
    i = bisect_right(ends, start)
    while i < len(starts) and starts[i] < end:
        total += min(end, ends[i]) - max(start, starts[i])
        i += 1
    return total


#: a run's datagrams in one buffer: ``(buffer, [(offset, length, dcid), ...])``
RunPart = tuple["bytes | memoryview", Sequence[tuple[int, int, bytes]]]


def _joined_entries(
    engine: OffloadEngine, parts: Sequence[RunPart]
) -> Iterator[tuple[tuple[Any, ...], bytes | memoryview, Sequence[tuple[int, int, bytes]]]]:
    """The engine's ``open_run`` entries of each part, in order, as ``(entry, buffer,
    packets)``, except that the STREAM entry that ends one buffer and the one that opens
    the next are one entry when they continue each other (consecutive packet numbers,
    the same stream, contiguous offsets, no FIN before), as ``open_run`` joins packets
    within a buffer: a download's round of one stream is one entry, not one per GRO
    buffer (issue 11: ~21 k entries per GiB at 256 connections, each a stream receive
    and a range add). A joined entry's data is the list of the buffers' pieces (for
    ``RecvStream.receive_pieces``). A buffer is opened before the entry that ends the
    buffer before it is taken (that entry is STREAM data only)."""
    held: tuple[Any, ...] | None = None  # a STREAM entry that ended the buffer before
    held_at: tuple[Any, ...] = ()  # (its buffer, its packets)
    held_end = 0  # its end offset
    pieces: list[bytes] | None = None  # its data, when joined
    for buf, packets in parts:
        entries = engine.open_run(buf, packets)
        start = 0
        if held is not None:
            first = entries[0] if entries else None
            if (first is not None and first[0] == 0 and first[3] == held[3]
                    and first[1] == held[1] + held[2] and first[4] == held_end
                    and first[5]):
                data = first[5]
                if pieces is None:
                    pieces = [held[5]]
                pieces.append(data)
                held_end += len(data)
                held = (0, held[1], held[2] + first[2], held[3], held[4], pieces, first[6])
                if len(entries) == 1 and not first[6]:
                    continue  # it may go on in the next buffer
                start = 1
            yield held, held_at[0], held_at[1]
            held = None
            pieces = None
        last = len(entries) - 1
        for i in range(start, last + 1):
            entry = entries[i]
            if i == last and entry[0] == 0 and not entry[6] and entry[5]:
                held, held_at, held_end = entry, (buf, packets), entry[4] + len(entry[5])
            else:
                yield entry, buf, packets
    if held is not None:
        yield held, held_at[0], held_at[1]


def receive_short_run(
    conn: Connection,
    buf: bytes | memoryview,
    packets: list[tuple[int, int, bytes]],
    addr: Address,
    now: float,
    ecn: int = 0,
) -> None:
    """Take a run of short-header datagrams ``(offset, length, dcid)`` from ``buf``: one
    after the other, without gaps (a GRO batch's segments, or datagrams joined)."""
    receive_short_runs(conn, ((buf, packets),), addr, now, ecn)


def receive_short_runs(
    conn: Connection,
    parts: Sequence[RunPart],
    addr: Address,
    now: float,
    ecn: int = 0,
) -> None:
    """Take a run of short-header datagrams that spans several buffers (the GRO buffers
    of one receive round that continue each other): one engine call per buffer, the
    per-run bookkeeping (ACK state, idle timer, path, events) once for all of them,
    as if the buffers had been one."""
    conn._now_hint = now
    if conn.terminated or conn.state == DRAINING:
        return
    if conn.qlog is not None:  # packet by packet, so that each is logged with its frames
        from .receive import receive_datagram

        for buf, packets in parts:
            for offset, length, _ in packets:
                receive_datagram(conn, bytes(buf[offset : offset + length]), addr, now, ecn)
        return
    counters = conn.counters
    count = 0
    size = 0
    for _, packets in parts:
        count += len(packets)
        last = packets[-1]
        size += last[0] + last[1] - packets[0][0]  # back to back: no per-datagram sum
    if conn.is_client and addr != conn.peer_address and not from_probed_address(conn, addr):
        counters.packets_dropped += count  # RFC 9000 §9: not from the server we talk to
        counters.dropped_unknown_address += count
        return
    counters.datagrams_received += count
    silence = silence_limit(conn)
    ack_freq = conn.ack_freq
    if not conn.one_rtt_ready:
        counters.packets_dropped += count
        counters.dropped_no_keys += count
        return
    counters.bytes_received += size
    if not conn.handshake_complete and not conn.is_client:  # RFC 9001 §5.7
        for buf, packets in parts:
            for offset, length, _ in packets:
                hold_early_one_rtt(conn, bytes(buf[offset : offset + length]), addr, ecn)
        return
    space = conn.spaces[2]
    largest_before = space.largest_received
    received = space.received
    challenges_before = len(conn.path_challenges_received)
    state_before = conn.state  # closing already: its packets are counted and answered
    all_probing = True  # only probing frames in the run (RFC 9000 §9.1)
    streams = conn.streams
    flow = conn.flow
    readable: list[int] = []
    eliciting = 0
    accepted = 0
    ecn_index = _ECN_INDEX.get(ecn & 3, -1)
    entry: tuple[Any, ...] = ()
    # the stream of the STREAM entry before (a run's entries are mostly of one stream):
    # the receiving half, looked up once for them; not across a general packet
    last_sid = -1
    last_recv: RecvStream | None = None
    try:
        for entry, buf, packets in _joined_entries(conn.engine, parts):
            kind = entry[0]
            if kind == 0:  # (0, first_pn, count, stream_id, offset, data, fin)
                _, pn, count, sid, offset, data, fin = entry
                end_pn = pn + count
                duplicates = 0
                if pn <= space.largest_received:
                    duplicates = _overlap(received, pn, end_pn)
                    if pn < space.received_floor:  # (forgotten: may have been taken)
                        duplicates += min(end_pn, space.received_floor) - pn
                if sid == last_sid:  # (the usual: the entry before's stream)
                    recv = last_recv
                elif conn.state >= CLOSING:  # answered only: its data is not taken
                    recv = None  # (RFC 9000 §10.2.1; receive._frames_in_closing)
                else:
                    stream = streams.get(sid)
                    recv = stream.recv if stream is not None else None
                    if recv is None:
                        conn.check_stream_direction(sid, receiving=True)
                        stream = conn.get_or_create_peer_stream(sid)
                        recv = stream.recv if stream is not None else None
                    if recv is not None:
                        last_sid, last_recv = sid, recv
                if recv is not None:
                    cost = recv.chunk_cost
                    budget = flow.max_data - flow.data_consumed - flow.reassembly_cost
                    try:
                        grown = (recv.receive(offset, data, fin, budget)
                                 if type(data) is not list
                                 else recv.receive_pieces(offset, data, fin, budget))
                    except ReassemblyFull:  # dropped unacknowledged: sent again
                        counters.packets_dropped += count
                        counters.dropped_reassembly_full += count
                        continue
                    if recv.chunk_cost != cost:
                        flow.reassembly_cost += recv.chunk_cost - cost
                    if grown:
                        flow.data_received += grown
                        if flow.data_received > flow.max_data:
                            raise QuicError(FLOW_CONTROL_ERROR,
                                            "connection flow control exceeded")
                    if not readable or readable[-1] != sid:
                        readable.append(sid)
                if duplicates:
                    counters.duplicate_packets += duplicates
                    count -= duplicates
                    if not count:
                        continue
                accepted += count
                eliciting += count
                all_probing = False
                largest = space.largest_received
                # (the gap test first: the set's __bool__ is a Python call per entry)
                if pn < largest or (pn > largest + 1 and received):
                    out_of_order(conn, space, pn, largest)
                received.add(max(pn, space.received_floor), end_pn)
                if end_pn - 1 > largest:
                    if now - space.largest_received_time > silence:
                        space.ack_immediately = True  # after a silence: PTO probes
                    space.largest_received = end_pn - 1
                    space.largest_received_time = now
                    if ack_freq.gap_pn >= 0:
                        after_newest(conn, space, end_pn - 1)
                if fin:
                    on_stream_end(conn)
                continue
            if kind == 3:  # (3, pn): opened with reserved header bits set (RFC 9000 §17.3.1)
                raise QuicError(PROTOCOL_VIOLATION, "reserved header bits set")
            if kind == 2:  # (2, index): did not open
                counters.engine_open_failures += 1
                counters.packets_dropped += 1
                counters.dropped_undecryptable += 1
                offset, length, _ = packets[entry[1]]
                _check_stateless_reset(conn, bytes(buf[offset : offset + length]))
                if on_open_failure(conn):
                    break  # (RFC 9001 §6.6: no more packets are processed)
                last_sid = -1  # (a reset ends the connection and its streams)
                continue
            _, pn, payload, phase_changed = entry  # (1, pn, payload, phase_changed)
            last_sid = -1  # its frames may reset or end a stream: looked up again
            if phase_changed:
                on_peer_key_update(conn)
            if pn <= space.largest_received and (pn in received
                                                 or pn < space.received_floor):
                counters.duplicate_packets += 1
                continue
            try:
                is_eliciting = process_frames(conn, payload, _ONE_RTT, now)
            except ReassemblyFull:  # dropped unacknowledged: sent again
                counters.packets_dropped += 1
                counters.dropped_reassembly_full += 1
                continue
            if conn.state >= CLOSING and conn.state != state_before:
                break  # this packet closed the connection
            accepted += 1
            all_probing = all_probing and conn.last_packet_probing
            if pn < space.largest_received or (pn > space.largest_received + 1 and received):
                out_of_order(conn, space, pn, space.largest_received)
            received.add(pn, pn + 1)
            if pn > space.largest_received:
                if now - space.largest_received_time > silence:
                    space.ack_immediately = True  # after a silence: PTO probes
                space.largest_received = pn
                space.largest_received_time = now
                if ack_freq.gap_pn >= 0:
                    after_newest(conn, space, pn)
            if is_eliciting:
                eliciting += 1
    except QuicError as exc:
        if not exc.frame_type and entry and entry[0] == 0:  # coalesced STREAM frames
            exc.frame_type = 0x0A | (0x04 if entry[4] else 0) | (0x01 if entry[6] else 0)
        conn.close_with_error(exc)
    except TlsAlert as exc:
        conn.close(exc.quic_error_code, str(exc), application=False)
    except Exception as exc:  # noqa: BLE001 - a bug of ours: see close_for_bug
        close_for_bug(conn, exc)
    if not accepted:
        return
    conn.last_packet_probing = all_probing
    newest = space.largest_received > largest_before
    if addr != conn.peer_address or not conn.address_validated:
        # the newest packets from a new address move a server there; probes from
        # another address are answered there (pathprobe.py)
        moved = addr != conn.peer_address and not all_probing and newest
        after_one_rtt_packet(conn, addr, newest, size, challenges_before)
        if not conn.address_validated and not moved:
            conn.bytes_received_unvalidated += size
    elif newest and not all_probing:
        conn.last_non_probing_pn = space.largest_received
    if conn.host_cids_deferred and conn.state == ESTABLISHED:
        conn.host_cids_deferred = False  # the client is there: our spare CIDs go out
        conn.host_cids_pending = True
    counters.packets_received += accepted
    if len(received.starts) > RECEIVED_RANGES:  # (the set's __len__: a call per run)
        forget_old_ranges(space)
    if ecn_index >= 0:
        space.ecn_counts[ecn_index] += accepted
        if ecn_index == 2:
            on_ce(conn, space)
    if eliciting:
        after_eliciting(conn, space, eliciting, now)  # (which makes an ACK pending)
    conn.idle_deadline = now + effective_idle(conn)
    conn.last_ack_eliciting_sent_after_receive = False
    if conn.state == CLOSING:
        answer_in_closing(conn, now)
    events = conn.events
    if len(readable) == 1:  # (the usual run: one stream)
        sid = readable[0]
        prev = events[-1] if events else None
        # the run before, in the same receive round, said so already (nothing came
        # between): one wake-up of the stream's reader per round, not per run
        if prev is None or prev.__class__ is not StreamReadable or prev.stream_id != sid:
            events.append(StreamReadable(sid))
        return
    seen = set()
    for sid in readable:
        if sid not in seen:
            seen.add(sid)
            events.append(StreamReadable(sid))
