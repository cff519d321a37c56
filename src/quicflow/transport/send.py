"""Sending: fill datagrams with packets; 1-RTT packets are sealed by the offload engine.

Each call builds plaintext short-header packets into one buffer with a descriptor per
packet, and the engine seals them all in one ``seal`` call (DESIGN.md, "Crypto offload").
"""

from __future__ import annotations

from typing import Any

from ..crypto.epoch import Epoch
from ..crypto.extension import EXT, python_forced
from ..wire import frames as F
from ..wire.packet import (
    HANDSHAKE,
    INITIAL,
    ZERO_RTT,
    encode_packet_number,
    push_short_packet,
)
from ..wire.varint import push_varint, varint_len
from . import qlog
from .ack_frequency import encode_pending
from .ack_send import ack_sent as _ack_sent
from .ack_send import elicit as _elicit
from .ack_send import encode_ack as _encode_ack
from .aead_limits import may_send
from .bulk import build_bulk, bulk_applies
from .close_send import close_datagrams as _close_datagrams
from .congestion import CongestionControl
from .connection import Connection
from .idle import effective_idle
from .pmtud import build_probe, probe_due
from .receive import _discard_epoch, issue_pending_cids
from .recovery import LossDetection, new_sent_packet
from .state import (
    CLOSING,
    R_ACK_FREQUENCY,
    R_CRYPTO,
    R_DATA_BLOCKED,
    R_HANDSHAKE_DONE,
    R_MAX_DATA,
    R_MAX_STREAM_DATA,
    R_MAX_STREAMS,
    R_NEW_CID,
    R_NEW_TOKEN,
    R_PATH_CHALLENGE,
    R_PING,
    R_RESET,
    R_RETIRE_CID,
    R_STOP,
    R_STREAM,
    R_STREAM_BLOCKED,
    R_STREAMS_BLOCKED,
    PacketSpace,
)

TAG_LEN = 16
MAX_DATAGRAMS_PER_CALL = 64
_EPOCHS = (Epoch.INITIAL, Epoch.ZERO_RTT, Epoch.HANDSHAKE, Epoch.ONE_RTT)
_ONE_RTT_ONLY = (Epoch.ONE_RTT,)
_SPACE = {Epoch.INITIAL: 0, Epoch.ZERO_RTT: 2, Epoch.HANDSHAKE: 1, Epoch.ONE_RTT: 2}
_LONG_TYPE = {Epoch.INITIAL: INITIAL, Epoch.ZERO_RTT: ZERO_RTT, Epoch.HANDSHAKE: HANDSHAKE}
#: epochs whose packets carry application data (congestion-controlled and paced)
_APP = (Epoch.ZERO_RTT, Epoch.ONE_RTT)
_HANDSHAKE_EPOCHS = (Epoch.INITIAL, Epoch.HANDSHAKE)
_INITIAL, _ZERO_RTT, _ONE_RTT = Epoch.INITIAL, Epoch.ZERO_RTT, Epoch.ONE_RTT
#: wire.packet.push_short_packet in C (None: not built, or the pure-Python code forced;
#: the C call returns None for what it leaves to the reference)
_PUSH_SHORT_C: Any = (getattr(EXT, "push_short_packet", None)
                      if EXT is not None and not python_forced() else None)


def datagrams_to_send(conn: Connection, now: float) -> list[bytes]:
    """Build up to MAX_DATAGRAMS_PER_CALL datagrams for ``conn.peer_address``."""
    buf, bounds = build_datagrams(conn, now)
    out: list[bytes] = []
    prev = 0
    view = memoryview(buf)
    for end in bounds:
        out.append(bytes(view[prev:end]))
        prev = end
    return out


def build_datagrams(
    conn: Connection, now: float, max_datagrams: int = MAX_DATAGRAMS_PER_CALL
) -> tuple[bytearray, list[int]]:
    """Datagrams back to back in one buffer, and the end offset of each.

    Runs of equal-size datagrams (the last may be shorter) are what a GSO send takes.
    """
    conn._now_hint = now
    buf = bytearray()
    bounds: list[int] = []
    if conn.terminated:
        return buf, bounds
    if conn.state >= CLOSING:
        if conn.close_pending and conn.state == CLOSING:
            conn.close_pending = False
            for datagram in _close_datagrams(conn, now):
                buf += datagram
                bounds.append(len(buf))
        return buf, bounds
    if conn.spaces[2].next_pn + max_datagrams >= conn.key_limit_pn and not may_send(
            conn, now, max_datagrams):
        return buf, bounds  # the send keys' confidentiality limit (aead_limits.py)
    seal: list[tuple[int, int, int, int, bytes]] = []
    if conn.pmtud.next_at <= now and not conn.loss.cc.recovery_credit and probe_due(
            conn, now) and _probe_fits(conn) and build_probe(conn, now, buf, seal):
        # a path MTU probe that is due goes first while the window has room for it (a
        # bulk run would fill it), unless a recovery period that just began has its
        # lost data to send first (``recovery_credit``); larger than the rest, it heads
        # a GSO send (with at most one shorter datagram after it)
        bounds.append(len(buf))
    budget = conn.amplification_credit()
    mds = conn.max_datagram_size
    count = len(bounds)
    end = len(buf)
    while count < max_datagrams:
        if budget >= 1 << 61 and conn.send_queue and conn.qlog is None and bulk_applies(conn):
            built = build_bulk(conn, now, buf, bounds, seal, max_datagrams - count)
            count, end = len(bounds), len(buf)
            if built < 0:
                break  # paced: the rest goes as one burst at conn.pacer_deadline
            if built > 0 and conn.pacer_deadline is not None:
                break  # the pacer bounded that run: the next one goes at the deadline
            cc = conn.loss.cc
            if cc.cwnd - cc.bytes_in_flight < mds and not cc.recovery_credit:
                # the window is full, and bulk_applies found nothing owed that goes
                # without it (an ACK, a probe): the general path would build nothing.
                # (issue 11: a turn that ends at the window, ~5,000 per GiB at 256
                # connections, made that empty build each time)
                break
            if built > 0:
                continue
        room = mds if mds < budget else budget
        if conn.probes_pending[2] and mds > 1200 and conn.pmtud.enabled:
            room = min(room, 1200)  # PTO probes fit any path: black hole detection
        if room < 48:
            break
        size = _build_datagram(conn, now, buf, room, seal)
        if not size:
            break
        last = size < 0  # (nothing else waits: a next call would build nothing)
        if last:
            size = -size
        end += size
        bounds.append(end)
        count += 1
        budget -= size
        if not conn.address_validated:
            conn.bytes_sent_unvalidated += size
        counters = conn.counters
        counters.datagrams_sent += 1
        counters.bytes_sent += size
        if last:
            break
    if conn.pmtud.next_at <= now and probe_due(conn, now):
        if not _probe_fits(conn):
            # the window is full: look again in a round trip (ACKs open it); the
            # connection's timer would otherwise keep firing at the past deadline
            srtt = conn.loss.rtt.smoothed_rtt
            conn.pmtud.next_at = now + (srtt if srtt > 0.001 else 0.001)
        elif build_probe(conn, now, buf, seal):
            bounds.append(len(buf))  # (or last, in room the datagrams before left)
    if seal:
        conn.engine.seal(buf, seal)
    return buf, bounds


def _probe_fits(conn: Connection) -> bool:
    """Whether a path MTU probe may go now: within the congestion window (RFC 9002 §7:
    nothing beyond it but PTO probes and the one packet of a new recovery period), or
    alone on an empty path (a probe larger than the smallest window would wait forever)."""
    cc = conn.loss.cc
    return cc.bytes_in_flight == 0 or cc.available() >= conn.pmtud.candidate


def _build_datagram(
    conn: Connection,
    now: float,
    buf: bytearray,
    room: int,
    seal: list[tuple[int, int, int, int, bytes]],
) -> int:
    """Append one datagram's packets to ``buf``; its size (0: nothing to send; negative:
    nothing else waits to be sent, so a next call would build nothing: an established
    connection's ACK alone, or packets after which every epoch they came from owes
    nothing (no probe, no ACK or ACK repeat, and no CRYPTO data or, in 1-RTT, none of
    ``_app_frames_waiting``'s triggers) while every other epoch had nothing to write).

    An epoch with nothing to write is skipped before any packet is started: no ACK is
    due, no probe, and (Initial/Handshake) no CRYPTO data or (1-RTT) none of the
    triggers ``_app_frames_waiting`` lists; ``_fill_payload`` would return False for
    it without changing anything (the usual second call after a flight, and most
    calls for a connection that only received)."""
    packets: list[tuple[Epoch, int, int, bytearray, list[tuple[int, ...]], bool]] = []
    left = room
    has_initial = False
    ack_eliciting_initial = False
    one_rtt_ready = conn.one_rtt_ready
    protectors = conn.send_protectors
    spaces = conn.spaces
    probes = conn.probes_pending
    peer_cid = conn.peer_cid
    long_overhead = 0  # of a Handshake packet, without its pn (computed once needed)
    # 1-RTT keys, Initial and Handshake discarded: the loop would skip all other epochs
    established = one_rtt_ready and spaces[0].discarded and spaces[1].discarded
    alone = False  # (the last packet's: an ACK alone)
    # every epoch seen skipped for having nothing to write, or wrote all it owed (not
    # 0-RTT): a next call would build nothing (build_datagrams then stops)
    drained = True
    for epoch in _ONE_RTT_ONLY if established else _EPOCHS:
        # what decides whether a packet of this epoch goes (see _fill_payload): an ACK
        # is due (ack-eliciting packets are waiting and the epoch, a reordering or the
        # ACK delay asks for it), a PTO probe, or something ack-eliciting waits
        if epoch is _ONE_RTT:
            if not one_rtt_ready:
                continue
            space = spaces[2]
            if space.discarded:
                continue
            repeat_due = space.ack_repeat_at is not None and now >= space.ack_repeat_at
            ack_due = repeat_due or (
                space.ack_pending and space.ack_eliciting_pending > 0 and (
                    space.ack_immediately
                    or (space.ack_deadline is not None and now >= space.ack_deadline)))
            probe = probes[2] > 0
            if not probe and not _app_frames_waiting(conn):
                if not ack_due:
                    continue
                alone = True  # the ACK alone: _fill_payload's other writers write nothing
                drained = False  # (returned negative below in any case)
            else:
                alone = False
        elif protectors[epoch] is None:
            continue
        elif epoch is _ZERO_RTT:
            if one_rtt_ready:
                continue  # (client) 1-RTT from now on
            space = spaces[2]
            if space.discarded:
                continue
            repeat_due = ack_due = alone = drained = False  # no ACK in 0-RTT (RFC 9000 §12.4)
            probe = probes[2] > 0
        else:
            index = 0 if epoch is _INITIAL else 1
            space = spaces[index]
            if space.discarded:
                continue
            repeat_due = alone = False
            ack_due = space.ack_pending and space.ack_eliciting_pending > 0
            probe = probes[index] > 0
            if not ack_due and not probe:
                crypto = space.crypto_send  # an Initial or Handshake packet: CRYPTO only
                # (_crypto_to_send inline: a flight's second call finds none)
                if crypto is None or not (crypto.next_offset < crypto.write_offset
                                          or crypto.lost.starts or crypto.fin_lost):
                    continue
        pn = space.next_pn
        largest_acked = space.largest_acked
        # encode_packet_number's length: 1 byte while at most 128 packets are unacked
        if (pn - largest_acked if largest_acked >= 0 else pn + 1) <= 128:
            pn_len = 1
        else:
            _, pn_len = encode_packet_number(pn, largest_acked if largest_acked >= 0
                                             else None)
        if epoch is _ONE_RTT:
            overhead = 1 + len(peer_cid) + pn_len + TAG_LEN
        else:
            if not long_overhead:
                long_overhead = 1 + 4 + 2 + len(peer_cid) + len(conn.initial_scid) + 2 + TAG_LEN
            overhead = long_overhead + pn_len
            if epoch is _INITIAL:
                token_len = len(conn.token)
                overhead += varint_len(token_len) + token_len
        capacity = left - overhead
        if capacity < 8:
            drained = False
            break
        payload = bytearray()
        records: list[tuple[int, ...]] = []
        if alone:
            eliciting = _ack_alone(conn, space, payload, records, now)
        else:
            eliciting = _fill_payload(conn, epoch, space, payload, capacity, records, now,
                                      ack_due, repeat_due, probe)
        plen = len(payload)
        if not plen:
            drained = False
            continue
        packets.append((epoch, pn, pn_len, payload, records, eliciting))
        if drained:  # what the writers of this epoch left owed after the packet
            if epoch is _ONE_RTT:  # (the last epoch; no ACK repeat may come due)
                drained = not (probes[2] or space.ack_pending or space.ack_repeat_at is not None
                               or _app_frames_waiting(conn))
            else:
                crypto = space.crypto_send
                drained = not (probes[index] or space.ack_pending
                               or (crypto is not None and crypto.has_data_to_send()))
        space.next_pn = pn + 1
        left -= overhead + plen
        if epoch is _INITIAL:
            has_initial = True
            ack_eliciting_initial = ack_eliciting_initial or eliciting
    if not packets:
        return 0
    # padding: client Initial datagrams and ack-eliciting server Initial datagrams
    # fill 1200 bytes (RFC 9000 §14.1)
    if has_initial and (conn.is_client or ack_eliciting_initial):
        target = room if room < 1200 else 1200
        used = room - left
        if used < target:
            packets[-1][3].extend(bytes(target - used))
    qlog_on = conn.qlog is not None
    push_c = _PUSH_SHORT_C
    total = 0
    for epoch, pn, pn_len, payload, records, eliciting in packets:
        plen = len(payload)
        # header protection needs 4 bytes of pn+payload for its sample
        if pn_len + plen < 4:
            payload.extend(bytes(4 - pn_len - plen))
            plen = 4 - pn_len
        if epoch is _ONE_RTT:
            start = len(buf)  # header, payload, tag room; the engine seals it below
            hlen = (push_c is not None and push_c(buf, peer_cid, pn, pn_len, payload)
                    ) or push_short_packet(buf, peer_cid, pn, pn_len, payload)
            seal.append((start, hlen, plen, pn, conn.seal_key))
            size = hlen + plen + TAG_LEN
        else:
            protector = protectors[epoch]
            assert protector is not None
            # header, payload and sealing in one call (C: written in place in buf)
            size = protector.seal_long(
                buf, _LONG_TYPE[epoch], conn.version, peer_cid, conn.initial_scid,
                conn.token if epoch is _INITIAL else b"", payload, pn, pn_len,
            )
        total += size
        if qlog_on:
            qlog.packet_sent(conn, now, epoch, pn, payload, size)
        _on_packet_sent(conn, epoch, pn, size, eliciting, records, now)
    if conn.is_client and spaces[1].next_pn > 0 and not spaces[0].discarded:
        # RFC 9001 §4.9.1: a client discards Initial keys when it first sends Handshake
        _discard_epoch(conn, _INITIAL)
    return -total if drained or (established and alone) else total


def on_packet_sent_python(
    conn: Connection,
    epoch: Epoch,
    pn: int,
    size: int,
    ack_eliciting: bool,
    records: list[tuple[int, ...]],
    now: float,
) -> None:
    """What the per-packet send path records for a packet it built: counters, the
    SentPacket for loss detection, the pacer's tokens and (the first ack-eliciting
    packet after a receive) the idle deadline.

    The reference of ``_on_packet_sent``, which is its C twin
    (``crypto/_native_src/sent.c``) when the extension is built and not forced off: a
    change here needs the same change there (tests/test_sent_native.py compares them)."""
    counters = conn.counters
    counters.packets_sent += 1
    if epoch is _ZERO_RTT:
        counters.zero_rtt_sent += 1
    # in flight = ack-eliciting here: we never send PADDING-only packets; the fields
    # by position (pn, time_sent, size, ack_eliciting, in_flight, epoch, frames: the
    # caller's fresh list, not used after): keywords cost twice as much
    loss = conn.loss
    loss.on_packet_sent(new_sent_packet(pn, now, size, ack_eliciting, ack_eliciting, epoch,
                                        records))  # type: ignore[arg-type]
    if ack_eliciting:
        conn.pacer.consume(now, size, loss.rtt, loss.cc.cwnd)
        if not conn.last_ack_eliciting_sent_after_receive:
            conn.idle_deadline = now + effective_idle(conn)
            conn.last_ack_eliciting_sent_after_receive = True


def _pick_on_packet_sent() -> Any:
    native = getattr(EXT, "packet_sent", None) if EXT is not None else None
    if native is None or python_forced():
        return on_packet_sent_python
    EXT.sent_setup(on_packet_sent_python, new_sent_packet, _ZERO_RTT,
                   LossDetection.on_packet_sent, CongestionControl.on_sent, effective_idle)
    return native


#: ``on_packet_sent_python``, or its C twin
_on_packet_sent = _pick_on_packet_sent()


def _fill_payload(
    conn: Connection,
    epoch: Epoch,
    space: PacketSpace,
    payload: bytearray,
    capacity: int,
    records: list[tuple[int, ...]],
    now: float,
    ack_due: bool,
    repeat_due: bool,
    probe: bool,
) -> bool:
    """Write frames; returns whether the packet is ack-eliciting.

    An ACK goes alone only when one is due (``ack_due``: ack-eliciting packets are
    waiting and the epoch, a reordering or the ACK delay asks for it; ``repeat_due``:
    an ACK-only packet is repeated); otherwise it only rides along with other frames, so
    two peers never acknowledge each other's ACKs forever, and in 1-RTT only while an
    ack-eliciting packet waits for it (``space.ack_pending``: the peer's ACK-only
    packets alone make none pending, ack_frequency.after_eliciting).
    ``_build_datagram`` calls this only when an ACK is due, a probe (``probe``) or
    something ack-eliciting waits (else the ACK would be written, then dropped).
    """
    loss = conn.loss
    cc = loss.cc
    cc_ok = probe or epoch not in _APP or cc.available() >= conn.max_datagram_size
    credit = not cc_ok and cc.recovery_credit  # (RFC 9002 §7.3.2; congestion.py)
    if credit:
        cc_ok = True
    if cc_ok and epoch in _APP and not probe:
        if conn.pacer.budget(now, loss.rtt, cc.cwnd) < conn.max_datagram_size:
            conn.pacer_deadline = conn.pacer.next_send_time(now, conn.max_datagram_size,
                                                            loss.rtt, cc.cwnd)
            cc_ok = False
        elif credit:
            cc.recovery_credit = False
    if not cc_ok and not ack_due:
        return False
    ack_end = 0
    if epoch != _ZERO_RTT and (space.ack_pending or repeat_due
            or ((epoch in _HANDSHAKE_EPOCHS or probe) and space.received.starts)) and (
                ack_due or cc_ok):
        # Initial and Handshake packets and probes always carry an ACK of what arrived
        # (dropped below if nothing else goes in): a lost ACK would otherwise leave the
        # peer without an RTT sample for the whole handshake (its PTOs stay at 1 s);
        # a client's 0-RTT packets never carry one (RFC 9000 §12.4)
        _encode_ack(conn, space, payload, now, epoch)
        ack_end = len(payload)
    if not cc_ok:  # (then an ACK is due: what was written goes)
        if ack_end:
            conn.counters.ack_frames_sent += 1
        _ack_sent(space)
        if epoch == _ONE_RTT:
            _schedule_ack_repeat(conn, space, False, now)
        return False
    start_len = ack_end
    limit = capacity
    # CRYPTO
    crypto = space.crypto_send
    assert crypto is not None  # only a discarded space has none (build_datagrams skips it)
    if probe and epoch in _HANDSHAKE_EPOCHS and not crypto.has_data_to_send():
        # the second probe datagram of a PTO carries the unacknowledged handshake data
        # too, not just a PING (RFC 9002 §6.2.4: probes SHOULD carry data)
        if crypto.next_offset > crypto.acked_offset:
            crypto.on_lost(crypto.acked_offset, crypto.next_offset - crypto.acked_offset,
                           False)
    while epoch != _ZERO_RTT:
        room = limit - len(payload) - 1 - 8 - 4
        offset = crypto.next_offset
        if not crypto.lost.starts and not crypto.fin_lost and not crypto.fin_written:
            # new data only (a flight's first send): what next_chunk would hand out, as
            # one slice of the stream's one chunk when it holds the range (the usual
            # case: TLS's writes are appended to one trailing chunk)
            end = crypto.write_offset
            if end > crypto.max_data:
                end = crypto.max_data
            if offset >= end or room <= 0:
                break
            if end - offset > room:
                end = offset + room
            crypto.next_offset = end
            ends = crypto.chunk_ends
            if len(ends) == 1:
                chunk = crypto.chunks[0]
                at = offset - (ends[0] - len(chunk))
                data = chunk[at : at + end - offset]
            else:
                data = crypto._slice(offset, end)
            # the last frame: either all new data is in (the next turn would find offset
            # >= end) or it took all the room (the next would find room <= 0, the frame's
            # header being at least 3 bytes)
            last = True
        else:
            if room <= 0 or not crypto.has_data_to_send():
                break
            got = crypto.next_chunk(room, 1 << 62)
            if got is None:
                break
            offset, data, _, _ = got
            last = False
        n = len(data)
        payload.append(F.CRYPTO)  # the CRYPTO frame, as F.encode_frame writes it
        if offset < 0x40:  # (a flight's first frame: offset 0, 1- or 2-byte length)
            payload.append(offset)
        else:
            push_varint(payload, offset)
        if n < 0x40:
            payload.append(n)
        elif n < 0x4000:
            payload += (n | 0x4000).to_bytes(2, "big")
        else:
            push_varint(payload, n)
        payload += data
        records.append((R_CRYPTO, int(epoch), offset, n))
        if last:
            break
    path_frames = False
    if epoch == _ONE_RTT:
        path_frames = _fill_control(conn, payload, limit, records)
        if conn.datagrams_pending:
            _fill_datagrams(conn, payload, limit)
    if conn.send_queue and epoch in _APP:  # (none queued: _fill_streams writes nothing)
        _fill_streams(conn, payload, limit, records)
    if path_frames and len(payload) < limit:
        # RFC 9000 §8.2.1, §8.2.2: a datagram with PATH_CHALLENGE or PATH_RESPONSE is
        # expanded to at least 1200 bytes, within the anti-amplification limit (the
        # room build_datagrams gave is at most the credit): padded to the room
        payload.extend(bytes(limit - len(payload)))
    eliciting = len(payload) > start_len
    if probe and not eliciting:
        payload.append(F.PING)
        records.append((R_PING,))
        eliciting = True
    if eliciting and probe:
        conn.probes_pending[_SPACE[epoch]] -= 1
    if not eliciting and not ack_due:
        del payload[:]  # nothing but an ACK that is not due: send nothing
        return False
    if ack_end and not eliciting and epoch is _ONE_RTT:
        eliciting = _elicit(conn, payload, records, now)
    if ack_end:
        _ack_written(conn, space, epoch, eliciting, now)
    return eliciting


def _ack_alone(conn: Connection, space: PacketSpace, payload: bytearray,
               records: list[tuple[int, ...]], now: float) -> bool:
    """The 1-RTT packet ``_fill_payload`` writes when an ACK is due and nothing else
    waits (``_app_frames_waiting`` false, no probe): the ACK frame alone (and the PING
    of ``ack_send.elicit`` now and then), without the steps that write nothing for it (an ACK
    that is due goes whatever the congestion window and the pacer say; the CRYPTO,
    control, DATAGRAM and STREAM writers). The pacer is not asked for a deadline: with
    nothing waiting it would only wake the connection to send nothing. The usual build
    of a connection that receives. Returns whether the packet is ack-eliciting."""
    _encode_ack(conn, space, payload, now, _ONE_RTT)
    eliciting = _elicit(conn, payload, records, now)
    _ack_written(conn, space, _ONE_RTT, eliciting, now)
    return eliciting


def _ack_written(conn: Connection, space: PacketSpace, epoch: Epoch, eliciting: bool,
                 now: float) -> None:
    """An ACK frame went into a packet of ``epoch`` (``eliciting``: with frames that
    ask for an ACK back): counted, the space's owed-ACK state cleared, and a 1-RTT
    ACK-only packet's repeat scheduled."""
    conn.counters.ack_frames_sent += 1
    _ack_sent(space)
    if epoch == _ONE_RTT:
        _schedule_ack_repeat(conn, space, eliciting, now)


#: An ACK-only packet is sent again up to this many times, one PTO and then two PTOs
#: later (at most 1 s apart), while nothing new arrives. ACK frames are otherwise never
#: resent: when the one ACK of a peer's PTO probe is lost, the peer backs off again,
#: and a peer that sends one probe per PTO and doubles without a cap (aioquic) was
#: silent for 30 s and more at 30 % loss each way (our client's idle timeout ended
#: such transfers). A repeated ACK is not ack-eliciting, so it never draws an answer.
ACK_REPEATS = 2


def _schedule_ack_repeat(conn: Connection, space: PacketSpace, eliciting: bool,
                         now: float) -> None:
    if eliciting or space.ack_repeats >= ACK_REPEATS:
        space.ack_repeat_at = None  # an ack-eliciting packet is resent by our own PTO
        return
    space.ack_repeat_at = now + min(conn.pto() * (1 << space.ack_repeats), 1.0)
    space.ack_repeats += 1


def _app_frames_waiting(conn: Connection) -> bool:
    """Whether a 1-RTT packet built now would carry a frame besides an ACK: what
    _fill_control, _fill_datagrams and _fill_streams write, and CRYPTO data (True when
    one of their triggers is set, even if that writer would then write nothing)."""
    if (
        conn.send_queue
        or conn.datagrams_pending
        or conn.handshake_done_pending
        or conn.key_update_ping
        or (conn.new_token_pending and conn.handshake_confirmed)  # (_fill_control's test)
        or conn.path_challenge_pending
        or conn.path_challenges_received
        or conn.pending_stream_updates
        or conn.retire_pending
        or conn.host_cids_pending
        or conn.flow.pending_max_data
        or conn.ack_freq.pending
        or conn.ack_freq.immediate_pending
    ):
        return True
    crypto = conn.spaces[2].crypto_send
    if crypto is not None and (crypto.next_offset < crypto.write_offset
                               or crypto.lost.starts or crypto.fin_lost):
        return True  # (its has_data_to_send: a CRYPTO stream has no FIN, no reset)
    bidi, uni = conn.bidi, conn.uni
    if (bidi.pending_max_streams or uni.pending_max_streams or bidi.blocked_pending
            or uni.blocked_pending):
        return True
    for entry in conn.host_cids:
        if not entry.announced and not entry.retired and entry.sequence > 0 and (
            entry.sequence >= conn.host_retire_prior_to  # (below: retired with it)
        ):
            return True
    return False


def _fill_control(
    conn: Connection, payload: bytearray, limit: int, records: list[tuple[int, ...]]
) -> bool:
    """Control frames into ``payload``; returns whether a PATH_CHALLENGE or
    PATH_RESPONSE is among them (its datagram is padded)."""
    if limit - len(payload) < 64:
        return False
    if conn.key_update_ping:
        payload.append(F.PING)
        records.append((R_PING,))
        conn.key_update_ping = False
    if conn.handshake_done_pending:
        payload.append(F.HANDSHAKE_DONE)
        records.append((R_HANDSHAKE_DONE,))
        conn.handshake_done_pending = False
    ack_freq = conn.ack_freq
    if ack_freq.pending or ack_freq.immediate_pending:
        sequence, delay_us = encode_pending(conn, payload)
        if sequence >= 0:
            records.append((R_ACK_FREQUENCY, sequence, delay_us))
    if conn.new_token_pending and conn.handshake_confirmed and conn.new_token and (
        limit - len(payload) > len(conn.new_token) + 16
    ):
        payload.append(F.NEW_TOKEN)  # (the frame written directly: the token is not empty)
        push_varint(payload, len(conn.new_token))
        payload += conn.new_token
        records.append((R_NEW_TOKEN,))
        conn.new_token_pending = False
    path_frames = False
    if conn.path_challenge_pending and conn.path_challenge:
        F.encode_frame(F.PathChallenge(data=conn.path_challenge), payload)
        records.append((R_PATH_CHALLENGE,))
        conn.path_challenge_pending = False
        path_frames = True
    while conn.path_challenges_received and limit - len(payload) > 16:
        data = conn.path_challenges_received.pop(0)
        F.encode_frame(F.PathResponse(data=data), payload)
        path_frames = True
    flow = conn.flow
    if flow.pending_max_data:
        F.encode_frame(F.MaxData(maximum=flow.max_data), payload)
        records.append((R_MAX_DATA,))
        flow.pending_max_data = False
    bidi_limits, uni_limits = conn.bidi, conn.uni
    for bidi, limits in ((True, bidi_limits), (False, uni_limits)) if (
            bidi_limits.pending_max_streams or uni_limits.pending_max_streams) else ():
        if limits.pending_max_streams:
            F.encode_frame(F.MaxStreams(bidi=bidi, maximum=limits.max_remote), payload)
            records.append((R_MAX_STREAMS, int(bidi)))
            limits.pending_max_streams = False
    if conn.host_cids_pending:
        issue_pending_cids(conn)  # announced just below
    while conn.pending_stream_updates and limit - len(payload) > 24:
        sid = conn.pending_stream_updates.pop()
        stream = conn.streams.get(sid)
        if stream is None or stream.recv is None or stream.recv.final_size is not None:
            continue
        F.encode_frame(F.MaxStreamData(stream_id=sid, maximum=stream.recv.max_data), payload)
        records.append((R_MAX_STREAM_DATA, sid))
    for entry in conn.host_cids:
        if not entry.announced and not entry.retired and entry.sequence > 0 and (
            entry.sequence >= conn.host_retire_prior_to  # (below: retired with it)
        ):
            if limit - len(payload) < 48:
                break
            # the NEW_CONNECTION_ID frame as F.encode_frame writes it, with its checks,
            # without the frame object (retire_prior_to <= sequence: the condition above)
            cid, token = entry.cid, entry.reset_token
            if not 0 < len(cid) <= 20 or len(token) != 16:
                raise ValueError("NEW_CONNECTION_ID: cid of 1..20 bytes, 16-byte token")
            payload.append(F.NEW_CONNECTION_ID)
            push_varint(payload, entry.sequence)
            push_varint(payload, conn.host_retire_prior_to)
            payload.append(len(cid))
            payload += cid
            payload += token
            entry.announced = True
            records.append((R_NEW_CID, entry.sequence))
    for bidi, limits in ((True, bidi_limits), (False, uni_limits)) if (
            bidi_limits.blocked_pending or uni_limits.blocked_pending) else ():
        if limits.blocked_pending:
            F.encode_frame(F.StreamsBlocked(bidi=bidi, limit=limits.peer_max), payload)
            records.append((R_STREAMS_BLOCKED, int(bidi)))
            limits.blocked_sent_at = limits.peer_max
            limits.blocked_pending = False
    while conn.retire_pending and limit - len(payload) > 10:
        seq = conn.retire_pending.pop(0)
        F.encode_frame(F.RetireConnectionId(sequence=seq), payload)
        records.append((R_RETIRE_CID, seq))
    return path_frames


def _fill_datagrams(conn: Connection, payload: bytearray, limit: int) -> None:
    """DATAGRAM frames, oldest first, while they fit (no record: never retransmitted)."""
    queue = conn.datagrams_pending
    while queue and limit - len(payload) >= len(queue[0]) + 5:
        F.encode_frame(F.Datagram(data=queue.pop(0)), payload)
        conn.counters.datagram_frames_sent += 1


def _fill_streams(
    conn: Connection, payload: bytearray, limit: int, records: list[tuple[int, ...]]
) -> None:
    queue = conn.send_queue
    flow = conn.flow
    i = 0
    while i < len(queue):
        room = limit - len(payload)
        if room < 24:
            return
        sid = queue[i]
        stream = conn.streams.get(sid)
        if stream is None:
            queue.pop(i)
            continue
        send, recv = stream.send, stream.recv
        if recv is not None and recv.stop_sending_pending:
            F.encode_frame(F.StopSending(stream_id=sid, error_code=recv.stop_sending_code or 0),
                           payload)
            records.append((R_STOP, sid))
            recv.stop_sending_pending = False
            continue
        if send is None:
            queue.pop(i)
            continue
        if send.reset_pending:
            F.encode_frame(
                F.ResetStream(stream_id=sid, error_code=send.reset_code or 0,
                              final_size=send.next_offset),
                payload,
            )
            records.append((R_RESET, sid))
            send.reset_pending = False
            queue.pop(i)
            continue
        credit = flow.peer_max_data - flow.data_sent
        sent_any = False
        exhausted = False  # the stream has nothing more that may go now (not: no room)
        while True:
            room = limit - len(payload)
            header_max = 1 + varint_len(sid) + varint_len(send.next_offset + room) + 2
            if room - header_max <= 0:
                break
            chunk = send.next_chunk(room - header_max, credit)
            if chunk is None:
                exhausted = True
                break
            offset, data, fin, new_bytes = chunk
            flow.data_sent += new_bytes
            credit -= new_bytes
            _push_stream_frame(payload, sid, offset, data, fin)
            records.append((R_STREAM, sid, offset, len(data), int(fin)))
            sent_any = True
        if not send.has_data_to_send():
            if send.is_flow_blocked() and send.blocked_sent_at != send.max_data:
                F.encode_frame(F.StreamDataBlocked(stream_id=sid, limit=send.max_data), payload)
                records.append((R_STREAM_BLOCKED, sid))
                send.blocked_sent_at = send.max_data
            queue.pop(i)
            continue
        if credit <= 0:
            if flow.blocked_sent_at != flow.peer_max_data:
                F.encode_frame(F.DataBlocked(limit=flow.peer_max_data), payload)
                records.append((R_DATA_BLOCKED,))
                flow.blocked_sent_at = flow.peer_max_data
            # No new byte of any stream may go, but what needs no credit still may:
            # lost bytes (below what was sent), a FIN alone, RESET_STREAM, STOP_SENDING
            # of the streams queued after this one. Stopping here stalled a connection
            # whose lost bytes were queued behind a stream waiting for MAX_DATA while
            # the peer, its window full of the bytes after the gap, waited for them.
            # A stream with nothing else leaves the queue until the credit grows
            # (receive_streams.requeue_sendable), as one blocked by its own limit does
            # until MAX_STREAM_DATA: the streams behind are not walked past it again
            # for every packet built while the credit is 0.
            if exhausted:
                queue.pop(i)
            else:
                i += 1  # (the packet is full: the rest of its lost bytes go next)
            continue
        if sent_any:
            # the packet is full: rotate this stream to the back for fairness
            queue.append(queue.pop(i))
            return
        i += 1


def _push_stream_frame(
    payload: bytearray, sid: int, offset: int, data: bytes, fin: bool
) -> None:
    ftype = 0x0A | (0x04 if offset else 0) | (0x01 if fin else 0)
    payload.append(ftype)
    push_varint(payload, sid)
    if offset:
        push_varint(payload, offset)
    push_varint(payload, len(data))
    payload += data
