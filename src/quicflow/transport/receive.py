"""Receiving: datagram -> packets -> frames -> connection state."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from ..crypto.epoch import Epoch
from ..crypto.retry import verify_retry_integrity_tag
from ..crypto.suites import CipherSuite
from ..tls.alerts import UNEXPECTED_MESSAGE, TlsAlert
from ..wire import frames as F
from ..wire.errors import FrameEncodingError, TransportParameterError, WireError
from ..wire.packet import (
    HANDSHAKE,
    INITIAL,
    MIN_INITIAL_DATAGRAM,
    ONE_RTT,
    QUIC_V1,
    QUIC_V2,
    RETRY,
    VERSION_NEGOTIATION,
    ZERO_RTT,
    PacketHeader,
    retry_pseudo_packet,
)
from ..wire.varint import varint_len
from . import early_data, pathprobe, qlog
from . import receive_streams as RS
from .ack_frequency import (
    after_eliciting,
    after_newest,
    on_ack_frequency,
    on_ce,
    on_immediate_ack,
    on_peer_parameters,
    out_of_order,
    silence_limit,
)
from .aead_limits import on_open_failure
from .closing import answer_in_closing
from .congestion import initial_window
from .connection import SPACE_OF_EPOCH, Address, Connection
from .errors import (
    CONNECTION_ID_LIMIT_ERROR,
    FRAME_ENCODING_ERROR,
    INTERNAL_ERROR,
    PROTOCOL_VIOLATION,
    STREAM_STATE_ERROR,
    TRANSPORT_PARAMETER_ERROR,
    QuicError,
)
from .events import (
    DatagramReceived,
    HandshakeCompleted,
    NewTokenReceived,
)
from .frame_parse import CLASSES, NATIVE_PARSE, parse_frames
from .headers import parse_header
from .idle import effective_idle
from .peer_params import decode_peer_parameters
from .receive_keys import install_secret, on_peer_key_update, program_engine
from .recovery_glue import on_ack_frame, requeue_epoch
from .state import (
    CLOSING,
    DRAINING,
    ESTABLISHED,
    RECEIVED_RANGES,
    PacketSpace,
    PeerCid,
    forget_old_ranges,
    new_crypto_recv,
    new_peer_cid,
)
from .streams import ReassemblyFull

#: the epochs as module constants for the per-packet code (an enum class attribute costs
#: about four times a global's lookup)
EP_INITIAL, EP_0RTT, EP_HANDSHAKE, EP_1RTT = (Epoch.INITIAL, Epoch.ZERO_RTT, Epoch.HANDSHAKE,
                                              Epoch.ONE_RTT)

EPOCH_OF_TYPE = {INITIAL: Epoch.INITIAL, HANDSHAKE: Epoch.HANDSHAKE, ZERO_RTT: Epoch.ZERO_RTT}
#: ECN codepoint -> index in ``ecn_counts`` (ECT(0), ECT(1), CE); 0 (Not-ECT) is never
#: counted
_ECN_INDEX = (0, 1, 0, 2)
#: the packet number space of a long header packet type (0-RTT: the application's)
_SPACE_OF_LONG = {INITIAL: 0, HANDSHAKE: 1, ZERO_RTT: 2}

#: what open_frames parses a long-header packet's frames into (None: not in C)
_FRAME_CLASSES = CLASSES if NATIVE_PARSE is not None else None
# frames allowed in Initial and Handshake packets (RFC 9000 §12.4)
_HANDSHAKE_FRAMES = (F.Padding, F.Ping, F.Ack, F.Crypto, F.ConnectionClose)


def receive_datagram(
    conn: Connection, data: bytes, addr: Address, now: float, ecn: int = 0,
    first: PacketHeader | None = None,
) -> None:
    """Process one UDP datagram (possibly several coalesced packets). ``first``: the
    datagram's first header when the caller parsed it already (a long header: its
    fields do not depend on the CID length; the endpoint parses it to route)."""
    conn._now_hint = now
    if conn.terminated or conn.state == DRAINING:
        return
    n = len(data)
    counters = conn.counters
    if (conn.is_client and addr != conn.peer_address
            and not pathprobe.from_probed_address(conn, addr)):
        counters.packets_dropped += 1  # RFC 9000 §9: not from the server we talk to
        counters.dropped_unknown_address += 1
        return
    counters.datagrams_received += 1
    counters.bytes_received += n
    if not conn.address_validated:
        conn.bytes_received_unvalidated += n
    pos = 0
    dcid: bytes | None = None  # the first packet's
    while pos < n:
        if first is not None:
            hdr, first = first, None
        else:
            try:
                hdr = parse_header(data, pos, conn.local_cid_length)
            except WireError:
                counters.packets_dropped += 1
                counters.dropped_malformed += 1
                return
        if dcid is None:
            dcid = hdr.dcid
        elif hdr.dcid != dcid:
            # RFC 9000 §12.2: the datagram was routed by its first packet's CID; a packet
            # after it with another one (another connection's, whose keys the shared
            # engine holds) is not this connection's to open
            counters.packets_dropped += 1
            counters.dropped_other_dcid += 1
            return
        try:  # (_receive_one inline)
            _receive_packet(conn, data, pos, hdr, addr, now, ecn)
        except (QuicError, TlsAlert) as exc:
            _close_for(conn, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a bug of ours: see close_for_bug
            close_for_bug(conn, exc)
            return
        if conn.state >= CLOSING:
            return
        pos = hdr.end
    if conn.early_one_rtt and conn.handshake_complete:
        _replay_early_one_rtt(conn, now)


def _receive_one(
    conn: Connection, data: bytes, pos: int, hdr: PacketHeader, addr: Address, now: float,
    ecn: int,
) -> bool:
    """One packet; False when the connection is closing because of it (or was)."""
    try:
        _receive_packet(conn, data, pos, hdr, addr, now, ecn)
    except (QuicError, TlsAlert) as exc:
        _close_for(conn, exc)
        return False
    except Exception as exc:  # noqa: BLE001 - a bug of ours: see close_for_bug
        close_for_bug(conn, exc)
        return False
    return conn.state < CLOSING


log = logging.getLogger("quicflow.transport")


def close_for_bug(conn: Connection, exc: Exception) -> None:
    """An exception that is no protocol violation came out of taking a peer's packet: a
    bug of ours. The connection may be left half-updated (an ACK that removed lost packets
    from the sent record before their frames were queued again left a download with
    nothing in flight and nothing to resend, waiting for its idle timeout), so it closes
    with INTERNAL_ERROR (RFC 9000 §20.1) and the error is logged with its traceback; the
    other packets of the round and every other connection go on."""
    log.error("internal error taking a packet: closing the connection with INTERNAL_ERROR",
              exc_info=exc)
    conn.close(INTERNAL_ERROR, "internal error", application=False)


def _close_for(conn: Connection, exc: QuicError | TlsAlert) -> None:
    """Close for a violation found in a received packet (a TLS alert: CRYPTO's)."""
    if isinstance(exc, QuicError):
        conn.close_with_error(exc)
    else:
        conn.close(exc.quic_error_code, str(exc), application=False, frame_type=F.CRYPTO)


#: 1-RTT datagrams a server holds while its handshake is not complete (RFC 9001 §5.7
#: forbids processing them before; more than a few are dropped, unacknowledged), and the
#: bytes they may take together.
MAX_EARLY_ONE_RTT = 4
MAX_EARLY_ONE_RTT_BYTES = 16 * 1024


def hold_early_one_rtt(conn: Connection, packet: bytes, addr: Address, ecn: int) -> None:
    """A server got a 1-RTT packet before its handshake completed: keep a few for later,
    acknowledge none (a client may take an ACK of 1-RTT as handshake confirmation and
    would then never resend a lost Finished)."""
    conn.counters.one_rtt_before_handshake += 1
    held = conn.early_one_rtt
    if len(held) < MAX_EARLY_ONE_RTT and (
        sum(len(p[0]) for p in held) + len(packet) <= MAX_EARLY_ONE_RTT_BYTES
    ):
        held.append((packet, addr, ecn, conn._now_hint))
    else:
        conn.counters.packets_dropped += 1
        conn.counters.dropped_no_keys += 1


def _replay_early_one_rtt(conn: Connection, now: float) -> None:
    held, conn.early_one_rtt = conn.early_one_rtt, []
    space = conn.spaces[2]
    for packet, addr, ecn, arrived in held:
        try:
            hdr = parse_header(packet, 0, conn.local_cid_length)
        except WireError:
            continue
        largest = space.largest_received
        if not _receive_one(conn, packet, 0, hdr, addr, now, ecn):
            return
        if space.largest_received != largest:
            # the ACK delay counts from arrival: the time held for keys is ours to report
            # (RFC 9000 §13.2.5), so the client's RTT sample does not include it
            space.largest_received_time = min(now, arrived)


def _receive_packet(
    conn: Connection,
    data: bytes,
    pos: int,
    hdr: PacketHeader,
    addr: Address,
    now: float,
    ecn: int,
) -> None:
    ptype = hdr.packet_type
    if ptype == VERSION_NEGOTIATION:
        # RFC 9000 §6.2: taken only before any other packet was processed (a Retry
        # counts, and so does an earlier Version Negotiation packet), only when it echoes
        # the connection IDs of our Initial (§17.2.1) and never when it lists our
        # version: otherwise it is corrupted (a flipped bit turns a server Initial of
        # version 1 into one of version 0) or forged, and ignored.
        if not (conn.is_client and conn.peer_initial_scid is None and conn.retry_scid is None
                and not conn.version_restarted
                and hdr.scid == conn.original_dcid and hdr.dcid == conn.initial_scid
                and conn.version not in hdr.supported_versions):
            conn.counters.packets_dropped += 1
            return
        other = next((v for v in conn.configuration.versions
                      if v in hdr.supported_versions), None)
        if other is not None:
            conn.restart_in_version(other)
            return
        names = {QUIC_V1: "1", QUIC_V2: "2"}
        conn.enter_draining(0, None, "server does not support QUIC version "
                            + names.get(conn.version, hex(conn.version)))
        return
    if ptype == RETRY:
        _receive_retry(conn, data, pos, hdr)
        return
    if ptype != ONE_RTT and hdr.version != conn.version and hdr.pn_offset >= 0:
        # compatible version negotiation (RFC 9368): the server's first packet in
        # another version we offered switches the client to it
        if (conn.is_client and conn.peer_initial_scid is None and ptype == INITIAL
                and hdr.version in conn.configuration.versions):
            conn.switch_version(hdr.version)
    if hdr.pn_offset < 0 or (ptype != ONE_RTT and hdr.version != conn.version):
        conn.counters.packets_dropped += 1
        conn.counters.dropped_malformed += 1
        return
    if ptype != ONE_RTT and conn.is_client:
        if conn.peer_initial_scid is not None and hdr.scid != conn.peer_initial_scid:
            # RFC 9000 §7.2: once a server's Initial was taken, the packets of another
            # (a second server behind the same address answered too) are discarded
            conn.counters.packets_dropped += 1
            conn.counters.dropped_other_scid += 1
            return
        if hdr.token:  # RFC 9000 §17.2.2: a server's Initial carries no token
            conn.counters.packets_dropped += 1
            conn.counters.dropped_malformed += 1
            return
    elif ptype == INITIAL and len(data) < MIN_INITIAL_DATAGRAM:
        # RFC 9000 §14.1: a server discards an Initial in a datagram under 1200 bytes
        # (the endpoint does so for a first Initial; this is one of a known connection)
        conn.counters.packets_dropped += 1
        conn.counters.dropped_short_initial += 1
        return
    if ptype == ONE_RTT:
        epoch = EP_1RTT
        space = conn.spaces[2]
        if not conn.one_rtt_ready:
            conn.counters.packets_dropped += 1
            conn.counters.dropped_no_keys += 1
            return
        if not conn.handshake_complete and not conn.is_client:
            hold_early_one_rtt(conn, bytes(data[pos : hdr.end]), addr, ecn)
            return
        results = conn.engine.open(data, [(pos, hdr.end - pos, hdr.dcid)])
        result = results[0]
        if result is None:
            conn.counters.engine_open_failures += 1
            conn.counters.packets_dropped += 1
            conn.counters.dropped_undecryptable += 1
            _check_stateless_reset(conn, data[pos : hdr.end])
            on_open_failure(conn)
            return
        pn, payload, frames = result.pn, result.payload, None
        if result.header[0] & 0x18:  # RFC 9000 §17.3.1, after removing both protections
            raise QuicError(PROTOCOL_VIOLATION, "reserved header bits set")
        if result.phase_changed:
            on_peer_key_update(conn)
    else:
        epoch = EPOCH_OF_TYPE[ptype]
        protector = conn.recv_protectors[epoch]
        if protector is None:
            conn.counters.packets_dropped += 1
            conn.counters.dropped_no_keys += 1
            return
        space = conn.spaces[_SPACE_OF_LONG[ptype]]
        # header protection, AEAD and (the common case) the frames in one C call
        opened = protector.open_frames(data, pos, hdr.pn_offset, hdr.end,
                                       space.largest_received, _FRAME_CLASSES)
        if opened is None:
            conn.counters.packets_dropped += 1
            conn.counters.dropped_undecryptable += 1
            on_open_failure(conn)
            return
        if opened.__class__ is int:  # RESERVED_BITS (RFC 9000 §17.2)
            raise QuicError(PROTOCOL_VIOLATION, "reserved header bits set")
        pn, payload, frames = opened  # type: ignore[misc]
        if conn.is_client and ptype == INITIAL and conn.peer_initial_scid is None:
            conn.peer_initial_scid = hdr.scid
            conn.peer_cid = hdr.scid
        if not conn.is_client and ptype == HANDSHAKE and not conn.address_validated:
            conn.address_validated = True
    if space.discarded:
        return
    received = space.received
    largest_received = space.largest_received
    # (the largest received packet number is the set's largest: a newer one is no dup)
    if pn <= largest_received and (pn in received or pn < space.received_floor):
        conn.counters.duplicate_packets += 1
        return
    conn.counters.packets_received += 1
    if conn.qlog is not None:
        qlog.packet_received(conn, now, epoch, pn, payload, hdr.end - pos, hdr.dcid,
                             None if epoch == EP_1RTT else hdr.scid)
    if epoch == EP_0RTT:
        conn.counters.zero_rtt_received += 1
    if epoch == EP_HANDSHAKE and not conn.is_client:
        _discard_epoch(conn, EP_INITIAL)
    # (only a server's Initial packets need what CRYPTO held before, see below)
    server_initial = epoch == EP_INITIAL and not conn.is_client
    crypto_before = _crypto_held(space) if server_initial else 0
    challenges_before = len(conn.path_challenges_received) if epoch == EP_1RTT else 0
    try:
        ack_eliciting = _process_frames(conn, payload, epoch, now, frames)
    except ReassemblyFull:
        conn.counters.packets_received -= 1
        conn.counters.packets_dropped += 1
        conn.counters.dropped_reassembly_full += 1
        return  # not acknowledged: the peer sends it again
    if conn.state == DRAINING:  # its CONNECTION_CLOSE: nothing is sent from now on and
        return  # only the period's end is timed: ACK state, idle deadline never read again
    # ACK bookkeeping
    ends = received.ends
    if pn < largest_received or (ends and pn > largest_received + 1):
        out_of_order(conn, space, pn, largest_received)  # reordering or a gap
    if ends and ends[-1] == pn:
        ends[-1] = pn + 1  # the next in order: the last range grows (RangeSet.add inline)
    else:
        received.add(pn, pn + 1)
        if len(ends) > RECEIVED_RANGES:
            forget_old_ranges(space)
    newest = pn > largest_received
    if newest:
        if now - space.largest_received_time > silence_limit(conn):
            space.ack_immediately = True  # after a silence: likely PTO probes (see below)
        space.largest_received = pn
        space.largest_received_time = now
        if conn.ack_freq.gap_pn >= 0:
            after_newest(conn, space, pn)
    if epoch == EP_1RTT:
        if conn.host_cids_deferred and conn.state == ESTABLISHED:
            conn.host_cids_deferred = False  # the client is there: our spare CIDs go out
            conn.host_cids_pending = True
        if addr != conn.peer_address:  # a new path, or a probe of one (pathprobe.py)
            pathprobe.after_one_rtt_packet(conn, addr, newest, len(data), challenges_before)
        elif newest and not conn.last_packet_probing:
            conn.last_non_probing_pn = pn
    if ecn:
        space.ecn_counts[_ECN_INDEX[ecn & 3]] += 1
        if ecn & 3 == 3:
            on_ce(conn, space)
    if ack_eliciting:
        if epoch == EP_1RTT:
            after_eliciting(conn, space, 1, now)  # (which makes an ACK pending)
        else:  # Initial and Handshake packets: at once
            space.ack_pending = True
            space.ack_eliciting_pending += 1
            space.ack_repeats = 0
            space.ack_immediately = True
    elif epoch != EP_1RTT:  # (1-RTT: acknowledged by an ACK that goes for others)
        space.ack_pending = True
    if not server_initial or _crypto_held(space) > crypto_before:
        # an Initial that brings a server no new handshake data (anyone can build one)
        # does not keep the connection alive
        conn.idle_deadline = now + effective_idle(conn)
    conn.last_ack_eliciting_sent_after_receive = False
    if conn.state == CLOSING:
        answer_in_closing(conn, now)


def _frames_in_closing(conn: Connection, frames: list[Any], epoch: Epoch, now: float) -> bool:
    """A packet's frames while we close (RFC 9000 §10.2.1: a packet is only answered):
    its ACKs (the closing period looks at what the peer still has unacknowledged,
    closing.py) and a CONNECTION_CLOSE (draining, §10.2.2); nothing else is taken (no
    stream data, no new state: RFC 9001 §6.6 too, after the integrity limit)."""
    ack_eliciting = False
    for frame in frames:
        cls = type(frame)
        if cls not in _NOT_ACK_ELICITING:
            ack_eliciting = True
        elif cls is not F.Padding:
            _HANDLERS[cls](conn, frame, epoch, now)  # type: ignore[misc]
            if conn.state == DRAINING:
                break
    conn.last_packet_probing = False
    return ack_eliciting


def _crypto_held(space: PacketSpace) -> int:
    """CRYPTO bytes the space has received so far (0 once it is discarded)."""
    recv = space.crypto_recv
    if recv is None:  # discarded
        return 0
    return recv.read_offset + recv.ready_bytes + recv.chunk_bytes


def reset_token_matches(conn: Connection, token: bytes) -> bool:
    """Whether ``token`` (a datagram's last 16 bytes) is the stateless reset token of a
    peer CID we use: the current one, or the one a path probe sends with. RFC 9000
    §10.3.1: never the token of a CID not used (or retired), and compared without leaking
    its value (constant time, every candidate compared)."""
    probe = conn.probe
    probe_seq = probe.cid_seq if probe is not None else -1
    current = conn.peer_cid_seq
    found = False
    for entry in conn.peer_cids:
        if entry.reset_token is not None and (entry.sequence == current
                                              or entry.sequence == probe_seq):
            found |= hmac.compare_digest(entry.reset_token, token)
    return found


def _check_stateless_reset(conn: Connection, packet: bytes) -> None:
    if len(packet) < 21:
        return
    if reset_token_matches(conn, bytes(packet[-16:])):
        conn.enter_draining(0, None, "stateless reset")
        conn._terminate()


def _receive_retry(conn: Connection, data: bytes, pos: int, hdr: PacketHeader) -> None:
    if not conn.is_client or conn.peer_initial_scid is not None or conn.retry_scid is not None:
        conn.counters.packets_dropped += 1  # a Retry to a server, or too late: ignored
        conn.counters.dropped_bad_retry += 1
        return
    packet = bytes(data[pos : hdr.end])
    pseudo = retry_pseudo_packet(conn.original_dcid, packet[:-16])
    # RFC 9000 §17.2.5.2: a Retry must carry a token and a new CID (one equal to our
    # Initial's DCID is discarded), and verify
    if (hdr.version != conn.version or hdr.dcid != conn.initial_scid
            or not hdr.token or hdr.scid == conn.original_dcid
            or not verify_retry_integrity_tag(pseudo, packet[-16:], conn.version)):
        conn.counters.packets_dropped += 1
        conn.counters.dropped_bad_retry += 1
        return
    conn.retry_scid = hdr.scid
    conn.peer_cid = hdr.scid
    conn.token = hdr.token
    conn._install_initial_keys(hdr.scid)
    # everything sent in Initial is resent with the new keys
    space = conn.spaces[0]
    requeue_epoch(conn, EP_INITIAL)
    space.next_pn = max(space.next_pn, 1)
    early_data.on_retry(conn)
    # RFC 9002 §6.3: the first flight was neither acknowledged nor lost; congestion
    # control and loss recovery start afresh (a lost Initial halved the window before)
    conn.loss.on_retry(conn._now_hint)


def _discard_epoch(conn: Connection, epoch: Epoch) -> None:
    space = conn.spaces[SPACE_OF_EPOCH[epoch]]
    if space.discarded:
        return
    space.discarded = True
    space.ack_deadline = None
    conn.send_protectors[epoch] = None
    conn.recv_protectors[epoch] = None
    conn.loss.discard_epoch(epoch)
    # release the space's CRYPTO streams and what they still hold (a flight, reassembly
    # buffers): nothing is sent or received in a discarded space
    space.crypto_send = None
    space.crypto_recv = None


# ---------------------------------------------------------------------- frames


def _process_frames(conn: Connection, payload: bytes, epoch: Epoch, now: float,
                    frames: list[Any] | None = None) -> bool:
    """The payload's frames (``frames``: already parsed from it, by open_frames)."""
    if frames is None:
        try:
            frames = parse_frames(payload)
        except FrameEncodingError as exc:
            raise QuicError(FRAME_ENCODING_ERROR, str(exc), exc.frame_type) from None
        except WireError as exc:
            raise QuicError(FRAME_ENCODING_ERROR, str(exc)) from None
    if not frames:
        raise QuicError(PROTOCOL_VIOLATION, "packet without frames")
    if conn.state >= CLOSING:
        return _frames_in_closing(conn, frames, epoch, now)
    ack_eliciting = False
    probing = True
    probing_frames = pathprobe.PROBING_FRAMES
    # the frame types allowed in this epoch (None: all), by exact type: parse_frames
    # makes only these classes
    allowed = _ALLOWED_IN_EPOCH[epoch]
    handlers = _HANDLERS
    for frame in frames:
        cls = type(frame)
        if probing and cls not in probing_frames:
            probing = False
        if allowed is not None and cls not in allowed:
            name = "0-RTT" if epoch == EP_0RTT else epoch.name
            raise QuicError(PROTOCOL_VIOLATION, f"{cls.__name__} not allowed in {name}",
                            F.frame_type_of(frame))
        if cls not in _NOT_ACK_ELICITING:
            ack_eliciting = True
        handler = handlers[cls]
        if handler is not None:
            try:
                handler(conn, frame, epoch, now)
            except QuicError as exc:
                if not exc.frame_type:  # name the frame that broke the rule
                    exc.frame_type = F.frame_type_of(frame)
                raise
        if conn.state >= CLOSING:
            break
    conn.last_packet_probing = probing
    return ack_eliciting


def _on_crypto(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    space = conn.spaces[SPACE_OF_EPOCH[epoch]]
    recv = space.crypto_recv
    if recv is None:
        if epoch is not EP_1RTT:  # a discarded space (its packets are not opened)
            return
        # a server's application space makes its CRYPTO receive stream on demand
        recv = space.crypto_recv = new_crypto_recv()
    offset = frame.offset
    data = frame.data
    end = offset + len(data)
    if offset == recv.read_offset and not recv.ready_bytes and not recv.chunks and (
        end <= recv.max_data
    ):
        # in order with nothing held (a handshake's usual case): RecvStream.receive()
        # then read() would buffer the bytes and hand them back at once
        if end > recv.highest_offset:
            recv.highest_offset = end
        recv.read_offset = end
    else:
        try:
            recv.receive(offset, data, False)
        except QuicError:  # 0xd: CRYPTO_BUFFER_EXCEEDED
            raise QuicError(0xD, "CRYPTO data beyond the buffer") from None
        data = recv.read()
    recv.max_data = recv.read_offset + recv.window
    if not data:
        return
    tls = conn.tls
    if tls is None:  # (a server once its handshake completed, or a restored connection)
        if not conn.is_client and epoch is EP_1RTT:
            # a QUIC client has no post-handshake message to send: no KeyUpdate (RFC
            # 9001 §6), no post-handshake authentication (§4.4), no EndOfEarlyData (§8.3)
            raise TlsAlert(UNEXPECTED_MESSAGE, "TLS message from a client after its handshake")
        return
    tls.set_wall_time(now + conn.wall_offset)
    tls.receive(epoch, data)
    _after_tls(conn, now)


#: the TLS layer names epochs and suites by value: the members by table lookup (calling
#: the enum classes runs the enum module's Python ``__call__``)
_EPOCHS = {e.value: e for e in Epoch}
_SUITES = {s.value: s for s in CipherSuite}


def _after_tls(conn: Connection, now: float) -> None:
    tls = conn.tls
    assert tls is not None
    for out_epoch, out_data in tls.pop_output():
        crypto = conn.spaces[SPACE_OF_EPOCH[out_epoch]].crypto_send
        if crypto is not None:  # (TLS writes nothing for a discarded space)
            crypto.write(out_data)
    for key_epoch, is_send, suite, secret in tls.pop_secrets():
        install_secret(conn, _EPOCHS[key_epoch], is_send, _SUITES[suite], secret)
    early_data.after_tls(conn, tls)
    if not conn.peer_params and tls.peer_transport_parameters is not None:
        _apply_peer_params(conn, tls.peer_transport_parameters)
    if tls.handshake_complete and not conn.handshake_complete:
        conn.handshake_complete = True
        conn.alpn_protocol = alpn = tls.alpn_protocol
        conn.peer_certificate_ders = tls.peer_certificate_ders
        conn.state = ESTABLISHED
        conn.events.append(HandshakeCompleted(alpn, conn.session_resumed,
                                              conn.early_data_accepted))
        if not conn.is_client:
            conn.handshake_confirmed = True
            conn.handshake_done_pending = True
            conn.handshake_done_unacked = True
            _discard_epoch(conn, EP_HANDSHAKE)
            _issue_cids_up_to_peer_limit(conn)
        # a client issues its spare CIDs once confirmed (_on_handshake_done): it may not
        # migrate before (RFC 9000 §9), and one that closes at once never needs them
        # the TLS state (transcript, key schedule, messages, its configuration) has no
        # use after the handshake on a server: later CRYPTO data is dropped (a client
        # keeps it for the session tickets that come)
        if not conn.is_client:
            conn.tls = None
            conn.recv_protectors[EP_0RTT] = None


#: Each CID we issue costs memory for the connection's life (its entries in the
#: endpoint's routing maps and offload table, its reset token): 4 leave the peer three
#: spares for migration at about half the cost of 8 (RFC 9000 only asks for 2).
MAX_ISSUED_CIDS = 4


def _issue_cids_up_to_peer_limit(conn: Connection) -> None:
    """Give the peer as many CIDs as its active_connection_id_limit allows (at most 4).
    A server makes them with its first 1-RTT packet (``issue_pending_cids`` from
    send.py) after one from the client (its request, or its ACK of HANDSHAKE_DONE): they
    only reach the client in NEW_CONNECTION_ID frames, and a server whose client's first
    1-RTT packet is its close drains without making any."""
    if not conn.is_client:
        if conn.spaces[2].largest_received >= 0:
            conn.host_cids_pending = True
        else:
            conn.host_cids_deferred = True
        return
    issue_pending_cids(conn)


def issue_pending_cids(conn: Connection) -> None:
    """Issue our CIDs up to the peer's limit now (see ``_issue_cids_up_to_peer_limit``)."""
    conn.host_cids_pending = False
    limit = conn.peer_params.active_connection_id_limit if conn.peer_params else 2
    if not conn.local_cid_length:
        return  # zero-length CIDs: there is only one (RFC 9000 §5.1.1)
    target = limit if limit < MAX_ISSUED_CIDS else MAX_ISSUED_CIDS  # (min(): a slow call)
    while len(conn.host_cids) < target:
        conn.issue_host_cid()


def _apply_peer_params(conn: Connection, raw: bytes) -> None:
    try:
        params = decode_peer_parameters(raw, from_server=conn.is_client)
    except TransportParameterError as exc:
        raise QuicError(TRANSPORT_PARAMETER_ERROR, str(exc)) from None
    if conn.is_client:
        if params.original_destination_connection_id != conn.original_dcid:
            raise QuicError(TRANSPORT_PARAMETER_ERROR, "original_destination_connection_id")
        if params.retry_source_connection_id != conn.retry_scid:
            raise QuicError(TRANSPORT_PARAMETER_ERROR, "retry_source_connection_id")
        conn.peer_cids.append(new_peer_cid(0, conn.peer_cid, params.stateless_reset_token))
    else:
        conn.peer_cids.append(new_peer_cid(0, conn.peer_cid, None))
    if params.initial_source_connection_id is None:  # RFC 9000 §7.3
        raise QuicError(TRANSPORT_PARAMETER_ERROR, "initial_source_connection_id missing")
    if params.initial_source_connection_id != conn.peer_cid and (
        params.initial_source_connection_id != conn.peer_initial_scid
    ):
        raise QuicError(TRANSPORT_PARAMETER_ERROR, "initial_source_connection_id mismatch")
    _check_version_information(conn, params.version_information)
    pathprobe.on_peer_parameters(conn, params)
    on_peer_parameters(conn, params.min_ack_delay)
    conn.peer_params = params
    conn.flow.peer_max_data = params.initial_max_data
    conn.bidi.peer_max = params.initial_max_streams_bidi
    conn.uni.peer_max = params.initial_max_streams_uni
    if not conn.pmtud.enabled:  # else: 1200 until probes show more (pmtud.py)
        conn.max_datagram_size = max(1200, min(conn.configuration.max_datagram_size,
                                               params.max_udp_payload_size, conn.path_mtu_cap))
    cc = conn.loss.cc
    cc.max_datagram_size = conn.max_datagram_size
    window = initial_window(conn.max_datagram_size)
    if window > cc.cwnd:  # (max(): a slow call)
        cc.cwnd = window
    conn.pacer.max_datagram_size = conn.max_datagram_size
    conn.idle_deadline = conn._now_hint + effective_idle(conn)
    for stream in conn.streams.values():  # streams opened before the params arrived
        if stream.send is not None and stream.local:
            stream.send.max_data = (
                params.initial_max_stream_data_uni if stream.stream_id & 2
                else params.initial_max_stream_data_bidi_remote
            )
    if conn.is_client and conn.early_data_attempted:
        early_data.on_server_parameters(conn, params)
    # (0-RTT: a stream that waited at the remembered limits goes on under the new ones)
    RS.requeue_sendable(conn)


VERSION_NEGOTIATION_ERROR = 0x11  # RFC 9368 §4


def _check_version_information(conn: Connection, info: list[int] | None) -> None:
    """RFC 9368 §4: the peer's chosen version must be the one in use (a client's: the
    version of its first Initial; a server's: the negotiated one)."""
    if info is None:
        if conn.version != QUIC_V1:  # a v2 peer must send version_information
            raise QuicError(VERSION_NEGOTIATION_ERROR, "version_information missing")
        return
    if info[0] != conn.version and (conn.is_client or info[0] not in info[1:]):
        raise QuicError(VERSION_NEGOTIATION_ERROR,
                        f"chosen version {info[0]:#x} is not the version in use")
    if conn.is_client and conn.version not in info[1:]:
        raise QuicError(VERSION_NEGOTIATION_ERROR, "version in use not in the available list")


#: retirements waiting to be sent, as a multiple of our active_connection_id_limit, past
#: which a peer's NEW_CONNECTION_ID closes the connection (RFC 9000 §5.1.2 asks to allow
#: at least twice the limit, sent and unacknowledged together)
RETIRE_PENDING_PER_LIMIT = 4


def _on_new_connection_id(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if not conn.peer_cid:
        raise QuicError(PROTOCOL_VIOLATION, "NEW_CONNECTION_ID with zero-length CIDs")
    for entry in conn.peer_cids:
        if entry.sequence == frame.sequence:
            if entry.cid != frame.cid:
                raise QuicError(PROTOCOL_VIOLATION, "NEW_CONNECTION_ID sequence reused")
            return
    if frame.sequence in conn.retire_pending:
        return
    if frame.sequence < conn.peer_retire_prior_to:
        # a late frame (reordered or sent again) of a CID the peer retired already: it
        # is retired now too (RFC 9000 §19.15), even if it was before (unknown here;
        # the peer ignores a second retirement)
        conn.retire_pending.append(frame.sequence)
        _check_retire_pending(conn)
        return
    if frame.sequence < conn.peer_cid_seq:
        return  # (seen, and retired when we moved on to a later one: pathprobe.py)
    conn.peer_cids.append(new_peer_cid(frame.sequence, frame.cid, frame.reset_token))
    if frame.retire_prior_to > conn.peer_retire_prior_to:
        conn.peer_retire_prior_to = frame.retire_prior_to
    if frame.retire_prior_to > 0:
        keep = []
        for entry in conn.peer_cids:
            if entry.sequence < frame.retire_prior_to:
                conn.retire_pending.append(entry.sequence)
            else:
                keep.append(entry)
        conn.peer_cids = keep
        if conn.peer_cid_seq < frame.retire_prior_to:
            best = min(keep, key=lambda e: e.sequence)
            _switch_peer_cid(conn, best)
        _check_retire_pending(conn)
    if len(conn.peer_cids) > conn.configuration.active_connection_id_limit:
        raise QuicError(CONNECTION_ID_LIMIT_ERROR, "too many connection IDs")


def _check_retire_pending(conn: Connection) -> None:
    """RFC 9000 §5.1.2: a peer that retires faster than our RETIRE_CONNECTION_ID frames
    go out (tens of NEW_CONNECTION_ID frames a packet, each retiring the one before)
    would grow the list, and each frame's check of it, without bound: 10 k frames cost
    a second of the loop."""
    if len(conn.retire_pending) > RETIRE_PENDING_PER_LIMIT * (
            conn.configuration.active_connection_id_limit):
        raise QuicError(CONNECTION_ID_LIMIT_ERROR,
                        "connection IDs retired faster than they can be acknowledged")


def _switch_peer_cid(conn: Connection, entry: PeerCid) -> None:
    # the sealer's engine key is local (conn.seal_key): a new peer CID changes no entry
    conn.peer_cid = entry.cid
    conn.peer_cid_seq = entry.sequence


def _on_retire_connection_id(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if not conn.local_cid_length:  # RFC 9000 §19.16: we issued no CIDs to retire
        raise QuicError(PROTOCOL_VIOLATION, "RETIRE_CONNECTION_ID to a zero-length CID")
    if frame.sequence >= conn.next_host_cid_seq:
        raise QuicError(PROTOCOL_VIOLATION, "RETIRE_CONNECTION_ID for an unissued CID")
    for index, entry in enumerate(conn.host_cids):
        if entry.sequence != frame.sequence:
            continue
        # issue a replacement first: the engine entry must survive the removal (not for
        # CIDs we asked the peer to retire: the handed-over ones replace them)
        if entry.sequence >= conn.host_retire_prior_to:
            conn.issue_host_cid()
        del conn.host_cids[index]
        conn.cid_changes.append((False, entry.cid))
        if conn.one_rtt_ready:
            conn.engine.remove(entry.cid, opener=True)
        return


#: PATH_CHALLENGE data kept to answer: the latest ones (RFC 9000 §8.2.2 lets an endpoint
#: leave challenges unanswered; a flood of them must not grow the connection).
MAX_PATH_CHALLENGES = 4


def _on_path_challenge(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    received = conn.path_challenges_received
    received.append(frame.data)
    if len(received) > MAX_PATH_CHALLENGES:
        del received[0]


def _on_path_response(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if conn.probe is not None and frame.data == conn.probe.challenge:
        pathprobe.complete_probe(conn, now)  # (client) the new path answered: move
        return
    if conn.path_challenge and frame.data == conn.path_challenge:
        conn.path_challenge = b""
        conn.previous_path = None
        conn.path_validation_deadline = None
        conn.path_challenge_pending = False
        conn.address_validated = True  # the new path is validated: no 3x limit
        return
    previous = conn.previous_path
    if previous is not None and previous.challenge and frame.data == previous.challenge:
        previous.challenge = b""  # the old path still works (RFC 9000 §9.3.3)


def _on_connection_close(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if frame.frame_type is None and (epoch == EP_INITIAL or epoch == EP_HANDSHAKE):
        # an application close (0x1d) only in 0-RTT and 1-RTT (RFC 9000 §12.4, §12.5)
        raise QuicError(PROTOCOL_VIOLATION, f"ConnectionClose not allowed in {epoch.name}",
                        F.CONNECTION_CLOSE_APP)
    reason = frame.reason.decode("utf-8", "replace")
    conn.enter_draining(frame.error_code, frame.frame_type, reason)


def _on_handshake_done(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if not conn.is_client:
        raise QuicError(PROTOCOL_VIOLATION, "HANDSHAKE_DONE from a client")
    if not conn.handshake_confirmed:
        conn.handshake_confirmed = True
        _discard_epoch(conn, EP_HANDSHAKE)
        if conn.state < CLOSING:
            _issue_cids_up_to_peer_limit(conn)  # the spares for migration, see _after_tls
        pathprobe.on_handshake_confirmed(conn)


def _on_new_token(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    if not conn.is_client:
        raise QuicError(PROTOCOL_VIOLATION, "NEW_TOKEN from a client")
    conn.events.append(NewTokenReceived(bytes(frame.token)))


def _on_datagram(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
    limit = conn.configuration.max_datagram_frame_size
    size = len(frame.data)
    size += 1 + varint_len(size) if frame.with_length else 1  # RFC 9221 §3: the frame's
    if not limit or size > limit:  # type, Length field (0x31) and data
        raise QuicError(PROTOCOL_VIOLATION, "DATAGRAM frame not allowed or too large",
                        F.DATAGRAM_LEN)
    conn.counters.datagram_frames_received += 1
    conn.events.append(DatagramReceived(bytes(frame.data)))


_HANDLERS: dict[type, Callable[[Connection, Any, Epoch, float], None] | None] = {
    F.Padding: None,  # (None: nothing to do beyond the ACK bookkeeping)
    F.Ping: None,
    F.Ack: on_ack_frame,  # (recovery_glue.py: no wrapper call per ACK frame)
    F.ResetStream: RS.on_reset_stream,
    F.StopSending: RS.on_stop_sending,
    F.Crypto: _on_crypto,
    F.NewToken: _on_new_token,
    F.Stream: RS.on_stream,
    F.MaxData: RS.on_max_data,
    F.MaxStreamData: RS.on_max_stream_data,
    F.MaxStreams: RS.on_max_streams,
    F.DataBlocked: RS.on_data_blocked,
    F.StreamDataBlocked: RS.on_stream_data_blocked,
    F.StreamsBlocked: RS.on_streams_blocked,
    F.NewConnectionId: _on_new_connection_id,
    F.RetireConnectionId: _on_retire_connection_id,
    F.PathChallenge: _on_path_challenge,
    F.PathResponse: _on_path_response,
    F.ConnectionClose: _on_connection_close,
    F.HandshakeDone: _on_handshake_done,
    F.Datagram: _on_datagram,
    F.AckFrequency: on_ack_frequency,  # (ack_frequency.py)
    F.ImmediateAck: on_immediate_ack,
}

_NOT_ACK_ELICITING = frozenset({F.Ack, F.Padding, F.ConnectionClose})  # RFC 9002 §2
#: frame types allowed per epoch (RFC 9000 §12.4; a 0x1d CONNECTION_CLOSE is refused in
#: Initial and Handshake packets by its handler), None: any
_ALLOWED_IN_EPOCH: dict[Epoch, frozenset[type] | None] = {
    Epoch.INITIAL: frozenset(_HANDSHAKE_FRAMES),
    Epoch.HANDSHAKE: frozenset(_HANDSHAKE_FRAMES),
    Epoch.ZERO_RTT: frozenset(cls for cls in _HANDLERS
                              if cls not in early_data.FORBIDDEN_IN_0RTT),
    Epoch.ONE_RTT: None,
}

__all__ = ["receive_datagram", "program_engine", "STREAM_STATE_ERROR", "INTERNAL_ERROR"]
