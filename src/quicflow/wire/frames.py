"""QUIC frames (RFC 9000 §19): parse and encode; re-exports the types of frame_types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import FrameEncodingError, WireError
from .frame_types import (
    ACK,
    ACK_ECN,
    ACK_FREQUENCY,
    CONNECTION_CLOSE,
    CONNECTION_CLOSE_APP,
    CRYPTO,
    DATA_BLOCKED,
    DATAGRAM,
    DATAGRAM_LEN,
    HANDSHAKE_DONE,
    IMMEDIATE_ACK,
    MAX_DATA,
    MAX_STREAM_DATA,
    MAX_STREAMS_BIDI,
    MAX_STREAMS_LIMIT,
    MAX_STREAMS_UNI,
    NEW_CONNECTION_ID,
    NEW_TOKEN,
    PADDING,
    PATH_CHALLENGE,
    PATH_RESPONSE,
    PING,
    RESET_STREAM,
    RETIRE_CONNECTION_ID,
    STOP_SENDING,
    STREAM,
    STREAM_DATA_BLOCKED,
    STREAM_FIN,
    STREAM_LEN,
    STREAM_OFF,
    STREAMS_BLOCKED_BIDI,
    STREAMS_BLOCKED_UNI,
    Ack,
    AckFrequency,
    ConnectionClose,
    Crypto,
    DataBlocked,
    Datagram,
    Frame,
    HandshakeDone,
    ImmediateAck,
    MaxData,
    MaxStreamData,
    MaxStreams,
    NewConnectionId,
    NewToken,
    Padding,
    PathChallenge,
    PathResponse,
    Ping,
    ResetStream,
    RetireConnectionId,
    StopSending,
    Stream,
    StreamDataBlocked,
    StreamsBlocked,
)
from .varint import VARINT_MAX, decode_varint, push_varint, varint_len

__all__ = [
    "ACK",
    "ACK_ECN",
    "ACK_FREQUENCY",
    "CONNECTION_CLOSE",
    "CONNECTION_CLOSE_APP",
    "CRYPTO",
    "DATA_BLOCKED",
    "HANDSHAKE_DONE",
    "IMMEDIATE_ACK",
    "DATAGRAM",
    "DATAGRAM_LEN",
    "MAX_DATA",
    "MAX_STREAMS_BIDI",
    "MAX_STREAMS_UNI",
    "MAX_STREAM_DATA",
    "NEW_CONNECTION_ID",
    "NEW_TOKEN",
    "PADDING",
    "PATH_CHALLENGE",
    "PATH_RESPONSE",
    "PING",
    "RESET_STREAM",
    "RETIRE_CONNECTION_ID",
    "STOP_SENDING",
    "STREAM",
    "STREAMS_BLOCKED_BIDI",
    "STREAMS_BLOCKED_UNI",
    "STREAM_DATA_BLOCKED",
    "STREAM_FIN",
    "STREAM_LEN",
    "STREAM_OFF",
    "Ack",
    "AckFrequency",
    "ConnectionClose",
    "Crypto",
    "DataBlocked",
    "Frame",
    "HandshakeDone",
    "ImmediateAck",
    "Datagram",
    "MaxData",
    "MaxStreamData",
    "MaxStreams",
    "NewConnectionId",
    "NewToken",
    "Padding",
    "PathChallenge",
    "PathResponse",
    "Ping",
    "ResetStream",
    "RetireConnectionId",
    "StopSending",
    "Stream",
    "StreamDataBlocked",
    "StreamsBlocked",
    "encode_frame",
    "encode_stream_header",
    "frame_size",
    "frame_type_of",
    "parse_frames",
]

# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

_ZEROS_LEN = 65536
_ZEROS = memoryview(bytes(_ZEROS_LEN))  # compared against trailing PADDING without copies

_Parser = Callable[[bytes, int, int], tuple[Frame, int]]


def _bytes(data: bytes, pos: int, length: int, ftype: int) -> tuple[bytes, int]:
    end = pos + length
    if end > len(data):
        raise FrameEncodingError(ftype, "truncated field")
    return data[pos:end], end


def _parse_ack(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    # one-byte varints inline (the usual case for all four fields in a handshake)
    largest = data[pos]
    if largest < 0x40:
        pos += 1
    else:
        largest, pos = decode_varint(data, pos)
    delay = data[pos]
    if delay < 0x40:
        pos += 1
    elif delay < 0x80:  # (a two-byte delay is common too)
        delay = ((delay & 0x3F) << 8) | data[pos + 1]
        pos += 2
    else:
        delay, pos = decode_varint(data, pos)
    count = data[pos]
    if count < 0x40:
        pos += 1
    else:
        count, pos = decode_varint(data, pos)
    first = data[pos]
    if first < 0x40:
        pos += 1
    else:
        first, pos = decode_varint(data, pos)
    smallest = largest - first
    if smallest < 0:
        raise FrameEncodingError(ftype, "ACK range below zero")
    ranges = [(smallest, largest)]
    for _ in range(count):
        gap = data[pos]  # one-byte gaps and lengths are the usual case: inlined
        if gap < 0x40:
            pos += 1
        else:
            gap, pos = decode_varint(data, pos)
        length = data[pos]
        if length < 0x40:
            pos += 1
        else:
            length, pos = decode_varint(data, pos)
        largest = smallest - gap - 2
        smallest = largest - length
        if smallest < 0:
            raise FrameEncodingError(ftype, "ACK range below zero")
        ranges.append((smallest, largest))
    ecn: tuple[int, int, int] | None = None
    if ftype == ACK_ECN:
        ect0, pos = decode_varint(data, pos)
        ect1, pos = decode_varint(data, pos)
        ce, pos = decode_varint(data, pos)
        ecn = (ect0, ect1, ce)
    return Ack(ranges, delay, ecn), pos


def _parse_reset_stream(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    sid, pos = decode_varint(data, pos)
    code, pos = decode_varint(data, pos)
    final, pos = decode_varint(data, pos)
    return ResetStream(sid, code, final), pos


def _parse_stop_sending(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    sid, pos = decode_varint(data, pos)
    code, pos = decode_varint(data, pos)
    return StopSending(sid, code), pos


def _parse_crypto(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    offset = data[pos]  # one-byte offset, 2-byte length: the usual case, inline
    if offset < 0x40:
        pos += 1
    else:
        offset, pos = decode_varint(data, pos)
    b = data[pos]
    if 0x40 <= b < 0x80:
        length = ((b & 0x3F) << 8) | data[pos + 1]
        pos += 2
    else:
        length, pos = decode_varint(data, pos)
    if offset + length > VARINT_MAX:
        raise FrameEncodingError(ftype, "CRYPTO offset + length above 2^62-1")
    end = pos + length
    if end > len(data):
        raise FrameEncodingError(ftype, "truncated field")
    return Crypto(offset, data[pos:end]), end


def _parse_new_token(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    length, pos = decode_varint(data, pos)
    if length == 0:
        raise FrameEncodingError(ftype, "empty NEW_TOKEN")
    token, pos = _bytes(data, pos, length, ftype)
    return NewToken(token), pos


def _parse_stream(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    sid, pos = decode_varint(data, pos)
    if ftype & STREAM_OFF:
        offset, pos = decode_varint(data, pos)
    else:
        offset = 0
    if ftype & STREAM_LEN:
        length, pos = decode_varint(data, pos)
        end = pos + length
        if end > len(data):
            raise FrameEncodingError(ftype, "STREAM data truncated")
    else:
        end = len(data)
        length = end - pos
    if offset + length > VARINT_MAX:
        raise FrameEncodingError(ftype, "STREAM offset + length above 2^62-1")
    return Stream(sid, offset, data[pos:end], bool(ftype & STREAM_FIN)), end


def _parse_max_data(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    value, pos = decode_varint(data, pos)
    return MaxData(value), pos


def _parse_max_stream_data(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    sid, pos = decode_varint(data, pos)
    value, pos = decode_varint(data, pos)
    return MaxStreamData(sid, value), pos


def _parse_max_streams(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    value, pos = decode_varint(data, pos)
    if value > MAX_STREAMS_LIMIT:
        raise FrameEncodingError(ftype, "MAX_STREAMS above 2^60")
    return MaxStreams(ftype == MAX_STREAMS_BIDI, value), pos


def _parse_data_blocked(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    value, pos = decode_varint(data, pos)
    return DataBlocked(value), pos


def _parse_stream_data_blocked(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    sid, pos = decode_varint(data, pos)
    value, pos = decode_varint(data, pos)
    return StreamDataBlocked(sid, value), pos


def _parse_streams_blocked(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    value, pos = decode_varint(data, pos)
    if value > MAX_STREAMS_LIMIT:
        raise FrameEncodingError(ftype, "STREAMS_BLOCKED above 2^60")
    return StreamsBlocked(ftype == STREAMS_BLOCKED_BIDI, value), pos


def _parse_new_connection_id(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    seq = data[pos]  # one-byte varints inline: the usual case
    if seq < 0x40:
        pos += 1
    else:
        seq, pos = decode_varint(data, pos)
    retire = data[pos]
    if retire < 0x40:
        pos += 1
    else:
        retire, pos = decode_varint(data, pos)
    if retire > seq:
        raise FrameEncodingError(ftype, "retire_prior_to greater than sequence number")
    if pos >= len(data):
        raise FrameEncodingError(ftype, "truncated NEW_CONNECTION_ID")
    cid_len = data[pos]
    if not 1 <= cid_len <= 20:
        raise FrameEncodingError(ftype, "connection id length not in 1..20")
    pos += 1
    end = pos + cid_len + 16
    if end > len(data):
        raise FrameEncodingError(ftype, "truncated field")
    return NewConnectionId(seq, retire, data[pos : pos + cid_len], data[end - 16 : end]), end


def _parse_retire_connection_id(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    seq, pos = decode_varint(data, pos)
    return RetireConnectionId(seq), pos


def _parse_path_challenge(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    value, pos = _bytes(data, pos, 8, ftype)
    return PathChallenge(value), pos


def _parse_path_response(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    value, pos = _bytes(data, pos, 8, ftype)
    return PathResponse(value), pos


def _parse_connection_close(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    code, pos = decode_varint(data, pos)
    frame_type: int | None = None
    if ftype == CONNECTION_CLOSE:
        frame_type, pos = decode_varint(data, pos)
    length, pos = decode_varint(data, pos)
    reason, pos = _bytes(data, pos, length, ftype)
    return ConnectionClose(code, frame_type, reason), pos


def _parse_handshake_done(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    return HandshakeDone(), pos


def _parse_datagram(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    if ftype == DATAGRAM_LEN:
        length, pos = decode_varint(data, pos)
    else:
        length = len(data) - pos
    value, pos = _bytes(data, pos, length, ftype)
    return Datagram(value, ftype == DATAGRAM_LEN), pos


def _parse_ping(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    return Ping(), pos


def _parse_ack_frequency(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    sequence, pos = decode_varint(data, pos)
    threshold, pos = decode_varint(data, pos)
    max_ack_delay, pos = decode_varint(data, pos)
    reordering, pos = decode_varint(data, pos)
    return AckFrequency(sequence, threshold, max_ack_delay, reordering), pos


def _parse_immediate_ack(data: bytes, pos: int, ftype: int) -> tuple[Frame, int]:
    return ImmediateAck(), pos


_PARSERS: dict[int, _Parser] = {
    DATAGRAM: _parse_datagram,
    DATAGRAM_LEN: _parse_datagram,
    PING: _parse_ping,
    ACK: _parse_ack,
    ACK_ECN: _parse_ack,
    RESET_STREAM: _parse_reset_stream,
    STOP_SENDING: _parse_stop_sending,
    CRYPTO: _parse_crypto,
    NEW_TOKEN: _parse_new_token,
    MAX_DATA: _parse_max_data,
    MAX_STREAM_DATA: _parse_max_stream_data,
    MAX_STREAMS_BIDI: _parse_max_streams,
    MAX_STREAMS_UNI: _parse_max_streams,
    DATA_BLOCKED: _parse_data_blocked,
    STREAM_DATA_BLOCKED: _parse_stream_data_blocked,
    STREAMS_BLOCKED_BIDI: _parse_streams_blocked,
    STREAMS_BLOCKED_UNI: _parse_streams_blocked,
    NEW_CONNECTION_ID: _parse_new_connection_id,
    RETIRE_CONNECTION_ID: _parse_retire_connection_id,
    PATH_CHALLENGE: _parse_path_challenge,
    PATH_RESPONSE: _parse_path_response,
    CONNECTION_CLOSE: _parse_connection_close,
    CONNECTION_CLOSE_APP: _parse_connection_close,
    HANDSHAKE_DONE: _parse_handshake_done,
    IMMEDIATE_ACK: _parse_immediate_ack,
    ACK_FREQUENCY: _parse_ack_frequency,
}
for _t in range(STREAM, STREAM + 8):
    _PARSERS[_t] = _parse_stream
del _t


def parse_frames(payload: bytes | bytearray | memoryview) -> list[Frame]:
    """Parse a decrypted packet payload into frames.

    Raises ``FrameEncodingError`` (with the offending ``frame_type``) for a malformed
    frame or an unknown frame type. Runs of PADDING collapse into one ``Padding``.
    """
    data = payload if type(payload) is bytes else bytes(payload)
    n = len(data)
    pos = 0
    frames: list[Frame] = []
    append = frames.append
    parsers = _PARSERS
    dv = decode_varint
    while pos < n:
        ftype = data[pos]
        if ftype == 0:
            rest = n - pos
            if rest <= _ZEROS_LEN and data.endswith(_ZEROS[:rest]):
                append(Padding(rest))  # the usual case: padding up to the end
                break
            tail = data[pos:]  # a memcpy; lstrip then stops at the first nonzero byte
            length = rest - len(tail.lstrip(b"\x00"))
            append(Padding(length))
            pos += length
            continue
        if ftype < 0x40:
            pos += 1
        else:
            start = pos
            try:
                ftype, pos = dv(data, pos)
            except WireError:
                raise FrameEncodingError(ftype, "truncated frame type") from None
            if ftype == PADDING:  # non-minimal encoding of a PADDING type
                append(Padding(pos - start))
                continue
        try:
            if 0x08 <= ftype <= 0x0F:
                # STREAM, inlined: the per-packet hot path.
                b = data[pos]
                if b < 0x40:
                    sid = b
                    pos += 1
                else:
                    sid, pos = dv(data, pos)
                if ftype & STREAM_OFF:
                    offset, pos = dv(data, pos)
                else:
                    offset = 0
                if ftype & STREAM_LEN:
                    b = data[pos]
                    if 0x40 <= b < 0x80:  # 2-byte length: the usual case, inlined
                        length = ((b & 0x3F) << 8) | data[pos + 1]
                        pos += 2
                    else:
                        length, pos = dv(data, pos)
                    end = pos + length
                    if end > n:
                        raise FrameEncodingError(ftype, "STREAM data truncated")
                else:
                    end = n
                    length = n - pos
                if offset + length > VARINT_MAX:
                    raise FrameEncodingError(ftype, "STREAM offset + length above 2^62-1")
                append(Stream(sid, offset, data[pos:end], bool(ftype & STREAM_FIN)))
                pos = end
                continue
            if ftype not in parsers:
                raise FrameEncodingError(ftype, "unknown frame type")
            frame, pos = parsers[ftype](data, pos, ftype)
        except FrameEncodingError:
            raise
        except (WireError, IndexError):
            raise FrameEncodingError(ftype, "truncated frame") from None
        append(frame)
    return frames


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


def encode_stream_header(stream_id: int, offset: int, length: int, fin: bool) -> bytes:
    """STREAM frame header (type, id, offset if > 0, explicit length) for ``length`` bytes."""
    ftype = STREAM | STREAM_LEN
    if fin:
        ftype |= STREAM_FIN
    out = bytearray()
    if offset:
        out.append(ftype | STREAM_OFF)
        push_varint(out, stream_id)
        push_varint(out, offset)
    else:
        out.append(ftype)
        push_varint(out, stream_id)
    push_varint(out, length)
    return bytes(out)


def _enc_padding(f: Padding, out: bytearray) -> None:
    if f.length < 1:
        raise ValueError("Padding length must be at least 1")
    out += bytes(f.length)


def _enc_ping(f: Ping, out: bytearray) -> None:
    out.append(PING)


def _enc_ack(f: Ack, out: bytearray) -> None:
    ranges = f.ranges
    if not ranges:
        raise ValueError("ACK needs at least one range")
    out.append(ACK if f.ecn is None else ACK_ECN)
    smallest, largest = ranges[0]
    if smallest > largest or smallest < 0:
        raise ValueError(f"bad ACK range {ranges[0]}")
    push_varint(out, largest)
    push_varint(out, f.ack_delay)
    push_varint(out, len(ranges) - 1)
    push_varint(out, largest - smallest)
    for lo, hi in ranges[1:]:
        gap = smallest - hi - 2
        if gap < 0 or lo > hi or lo < 0:
            raise ValueError("ACK ranges must be disjoint, non-adjacent, largest first")
        push_varint(out, gap)
        push_varint(out, hi - lo)
        smallest = lo
    if f.ecn is not None:
        push_varint(out, f.ecn[0])
        push_varint(out, f.ecn[1])
        push_varint(out, f.ecn[2])


def _enc_reset_stream(f: ResetStream, out: bytearray) -> None:
    out.append(RESET_STREAM)
    push_varint(out, f.stream_id)
    push_varint(out, f.error_code)
    push_varint(out, f.final_size)


def _enc_stop_sending(f: StopSending, out: bytearray) -> None:
    out.append(STOP_SENDING)
    push_varint(out, f.stream_id)
    push_varint(out, f.error_code)


def _enc_crypto(f: Crypto, out: bytearray) -> None:
    out.append(CRYPTO)
    push_varint(out, f.offset)
    push_varint(out, len(f.data))
    out += f.data


def _enc_new_token(f: NewToken, out: bytearray) -> None:
    if not f.token:
        raise ValueError("NEW_TOKEN token must not be empty")
    out.append(NEW_TOKEN)
    push_varint(out, len(f.token))
    out += f.token


def _enc_stream(f: Stream, out: bytearray) -> None:
    out += encode_stream_header(f.stream_id, f.offset, len(f.data), f.fin)
    out += f.data


def _enc_max_data(f: MaxData, out: bytearray) -> None:
    out.append(MAX_DATA)
    push_varint(out, f.maximum)


def _enc_max_stream_data(f: MaxStreamData, out: bytearray) -> None:
    out.append(MAX_STREAM_DATA)
    push_varint(out, f.stream_id)
    push_varint(out, f.maximum)


def _enc_max_streams(f: MaxStreams, out: bytearray) -> None:
    if f.maximum > MAX_STREAMS_LIMIT:
        raise ValueError("MAX_STREAMS above 2^60")
    out.append(MAX_STREAMS_BIDI if f.bidi else MAX_STREAMS_UNI)
    push_varint(out, f.maximum)


def _enc_data_blocked(f: DataBlocked, out: bytearray) -> None:
    out.append(DATA_BLOCKED)
    push_varint(out, f.limit)


def _enc_stream_data_blocked(f: StreamDataBlocked, out: bytearray) -> None:
    out.append(STREAM_DATA_BLOCKED)
    push_varint(out, f.stream_id)
    push_varint(out, f.limit)


def _enc_streams_blocked(f: StreamsBlocked, out: bytearray) -> None:
    if f.limit > MAX_STREAMS_LIMIT:
        raise ValueError("STREAMS_BLOCKED above 2^60")
    out.append(STREAMS_BLOCKED_BIDI if f.bidi else STREAMS_BLOCKED_UNI)
    push_varint(out, f.limit)


def _enc_new_connection_id(f: NewConnectionId, out: bytearray) -> None:
    if not 1 <= len(f.cid) <= 20:
        raise ValueError("NEW_CONNECTION_ID cid length must be 1..20")
    if len(f.reset_token) != 16:
        raise ValueError("stateless reset token must be 16 bytes")
    if f.retire_prior_to > f.sequence:
        raise ValueError("retire_prior_to greater than sequence number")
    out.append(NEW_CONNECTION_ID)
    push_varint(out, f.sequence)
    push_varint(out, f.retire_prior_to)
    out.append(len(f.cid))
    out += f.cid
    out += f.reset_token


def _enc_retire_connection_id(f: RetireConnectionId, out: bytearray) -> None:
    out.append(RETIRE_CONNECTION_ID)
    push_varint(out, f.sequence)


def _enc_path_challenge(f: PathChallenge, out: bytearray) -> None:
    if len(f.data) != 8:
        raise ValueError("PATH_CHALLENGE data must be 8 bytes")
    out.append(PATH_CHALLENGE)
    out += f.data


def _enc_path_response(f: PathResponse, out: bytearray) -> None:
    if len(f.data) != 8:
        raise ValueError("PATH_RESPONSE data must be 8 bytes")
    out.append(PATH_RESPONSE)
    out += f.data


def _enc_connection_close(f: ConnectionClose, out: bytearray) -> None:
    if f.frame_type is None:
        out.append(CONNECTION_CLOSE_APP)
        push_varint(out, f.error_code)
    else:
        out.append(CONNECTION_CLOSE)
        push_varint(out, f.error_code)
        push_varint(out, f.frame_type)
    push_varint(out, len(f.reason))
    out += f.reason


def _enc_handshake_done(f: HandshakeDone, out: bytearray) -> None:
    out.append(HANDSHAKE_DONE)


def _enc_datagram(f: Datagram, out: bytearray) -> None:
    out.append(DATAGRAM_LEN)
    push_varint(out, len(f.data))
    out += f.data


def _enc_ack_frequency(f: AckFrequency, out: bytearray) -> None:
    push_varint(out, ACK_FREQUENCY)
    push_varint(out, f.sequence)
    push_varint(out, f.threshold)
    push_varint(out, f.max_ack_delay)
    push_varint(out, f.reordering)


def _enc_immediate_ack(f: ImmediateAck, out: bytearray) -> None:
    out.append(IMMEDIATE_ACK)


_ENCODERS: dict[type, Callable[[Any, bytearray], None]] = {
    AckFrequency: _enc_ack_frequency,
    ImmediateAck: _enc_immediate_ack,
    Datagram: _enc_datagram,
    Padding: _enc_padding,
    Ping: _enc_ping,
    Ack: _enc_ack,
    ResetStream: _enc_reset_stream,
    StopSending: _enc_stop_sending,
    Crypto: _enc_crypto,
    NewToken: _enc_new_token,
    Stream: _enc_stream,
    MaxData: _enc_max_data,
    MaxStreamData: _enc_max_stream_data,
    MaxStreams: _enc_max_streams,
    DataBlocked: _enc_data_blocked,
    StreamDataBlocked: _enc_stream_data_blocked,
    StreamsBlocked: _enc_streams_blocked,
    NewConnectionId: _enc_new_connection_id,
    RetireConnectionId: _enc_retire_connection_id,
    PathChallenge: _enc_path_challenge,
    PathResponse: _enc_path_response,
    ConnectionClose: _enc_connection_close,
    HandshakeDone: _enc_handshake_done,
}


def encode_frame(frame: Frame, out: bytearray) -> None:
    """Append the encoding of ``frame`` to ``out`` (``ValueError`` if it is invalid)."""
    try:
        encoder = _ENCODERS[type(frame)]
    except KeyError:
        raise TypeError(f"not a frame: {frame!r}") from None
    encoder(frame, out)


def frame_size(frame: Frame) -> int:
    """Encoded size of ``frame`` in bytes."""
    if type(frame) is Stream:
        data_len = len(frame.data)
        size = 1 + varint_len(frame.stream_id) + varint_len(data_len) + data_len
        if frame.offset:
            size += varint_len(frame.offset)
        return size
    if type(frame) is Padding:
        return frame.length
    out = bytearray()
    encode_frame(frame, out)
    return len(out)


_TYPE_OF: dict[type, int] = {
    Padding: PADDING,
    Ping: PING,
    ResetStream: RESET_STREAM,
    StopSending: STOP_SENDING,
    Crypto: CRYPTO,
    NewToken: NEW_TOKEN,
    MaxData: MAX_DATA,
    MaxStreamData: MAX_STREAM_DATA,
    DataBlocked: DATA_BLOCKED,
    StreamDataBlocked: STREAM_DATA_BLOCKED,
    NewConnectionId: NEW_CONNECTION_ID,
    RetireConnectionId: RETIRE_CONNECTION_ID,
    PathChallenge: PATH_CHALLENGE,
    PathResponse: PATH_RESPONSE,
    HandshakeDone: HANDSHAKE_DONE,
    Datagram: DATAGRAM_LEN,
    AckFrequency: ACK_FREQUENCY,
    ImmediateAck: IMMEDIATE_ACK,
}


def frame_type_of(frame: Frame) -> int:
    """The wire frame type ``encode_frame`` uses for ``frame`` (for error reports)."""
    if isinstance(frame, Stream):
        t = STREAM | STREAM_LEN | (STREAM_FIN if frame.fin else 0)
        return t | (STREAM_OFF if frame.offset else 0)
    if isinstance(frame, Ack):
        return ACK if frame.ecn is None else ACK_ECN
    if isinstance(frame, MaxStreams):
        return MAX_STREAMS_BIDI if frame.bidi else MAX_STREAMS_UNI
    if isinstance(frame, StreamsBlocked):
        return STREAMS_BLOCKED_BIDI if frame.bidi else STREAMS_BLOCKED_UNI
    if isinstance(frame, ConnectionClose):
        return CONNECTION_CLOSE if frame.frame_type is not None else CONNECTION_CLOSE_APP
    return _TYPE_OF[type(frame)]

