"""The sans-I/O HTTP/3 connection (RFC 9114) over a transport :class:`Connection`.

``H3Connection(quic, is_client=...)`` consumes the transport's events
(:meth:`H3Connection.handle_event`) and returns HTTP/3 events; it writes frames into the
transport's streams, and the caller flushes the transport as usual. No clock, no socket.

Receive-side memory is bounded by what we advertised: control and QPACK streams are read
whole (frames over ``max_frame_size`` are refused, the QPACK decoder holds at most
``max_table_capacity`` and ``blocked_streams`` blocked sections), and a request stream is
read from the transport only while the application has credit (``stream_buffer`` bytes
of body; :meth:`consumed` gives credit back), so unread body bytes stay in the
transport's flow-controlled window.

State is plain data except the QPACK encoder/decoder, which are pylsqpack objects whose
dynamic tables cannot be captured. With ``capturable=True`` neither side has a dynamic
table (we advertise QPACK_MAX_TABLE_CAPACITY 0 and QPACK_BLOCKED_STREAMS 0, and our
encoder ignores the peer's capacity), so the QPACK state is empty and the connection can
be captured (``h3/snapshot.py``); the cost is header compression by static table and
Huffman only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..transport.connection import Connection
from ..transport.events import (
    DatagramReceived as QuicDatagramReceived,
)
from ..transport.events import (
    Event,
    HandshakeCompleted,
    StreamOpened,
    StreamReadable,
)
from ..transport.events import (
    StopSendingReceived as QuicStopSending,
)
from ..transport.events import (
    StreamReset as QuicStreamReset,
)
from ..wire.errors import WireError
from ..wire.varint import decode_varint, encode_varint
from . import frames as F
from .errors import (
    H3_CLOSED_CRITICAL_STREAM,
    H3_DATAGRAM_ERROR,
    H3_FRAME_ERROR,
    H3_FRAME_UNEXPECTED,
    H3_GENERAL_PROTOCOL_ERROR,
    H3_ID_ERROR,
    H3_MESSAGE_ERROR,
    H3_MISSING_SETTINGS,
    H3_NO_ERROR,
    H3_REQUEST_CANCELLED,
    H3_REQUEST_INCOMPLETE,
    H3_REQUEST_REJECTED,
    H3_SETTINGS_ERROR,
    H3_STREAM_CREATION_ERROR,
    QPACK_DECODER_STREAM_ERROR,
    QPACK_DECOMPRESSION_FAILED,
    QPACK_ENCODER_STREAM_ERROR,
    H3Error,
    H3StreamError,
)
from .events import (
    DatagramReceived,
    DataReceived,
    GoawayReceived,
    H3Event,
    Headers,
    HeadersReceived,
    SettingsReceived,
    StopSendingReceived,
    StreamReset,
)
from .headers import content_length, validate_request, validate_response, validate_trailers
from .qpack import require_pylsqpack

#: a grease setting (RFC 9114 §7.2.4.1: 0x1f * N + 0x21) sent to keep peers honest
GREASE_SETTING = 0x1F * 7 + 0x21
HEADERS_READ = 16384  # bytes read from a request stream at a time before its headers


SET_CAPACITY_0 = 0x20  # the only encoder instruction a decoder of capacity 0 accepts


def complete_instructions(partial: bytearray, data: bytes) -> bytes:
    """QPACK decoder-stream bytes (RFC 9204 §4.4: each instruction is one prefixed
    integer, prefix 7 bits for Section Acknowledgment, 6 otherwise) cut at the last whole
    instruction; the incomplete tail stays in ``partial``."""
    partial += data
    end = pos = 0
    n = len(partial)
    while pos < n:
        first = partial[pos]
        mask = 0x7F if first & 0x80 else 0x3F
        pos += 1
        if first & mask == mask:  # continuation bytes follow
            while pos < n and partial[pos] & 0x80:
                pos += 1
            if pos >= n:
                break
            pos += 1
        end = pos
    if end == 0 and n > 16:  # no integer needs this much: let the QPACK library refuse it
        end = n
    whole = bytes(partial[:end])
    del partial[:end]
    return whole


class RequestRefused(Exception):
    """A new request cannot be sent: the peer sent GOAWAY or the connection is closing."""


@dataclass(slots=True)
class H3Counters:
    requests_received: int = 0
    requests_sent: int = 0
    encoder_bytes_sent: int = 0
    encoder_bytes_received: int = 0
    decoder_bytes_sent: int = 0
    decoder_bytes_received: int = 0
    blocked_sections: int = 0
    unknown_streams: int = 0
    requests_rejected: int = 0
    stream_errors: int = 0
    datagrams_received: int = 0
    datagrams_dropped: int = 0


@dataclass(slots=True, eq=False)
class RequestState:
    """One request stream (bidirectional)."""

    stream_id: int
    parser: F.FrameParser
    credit: int
    local: bool
    headers_done: bool = False
    trailers_done: bool = False
    ended: bool = False  # receive side finished (end reported, reset, or abandoned)
    send_done: bool = False  # FIN sent or our side reset
    blocked: bool = False  # waiting for the QPACK encoder stream
    is_connect: bool = False
    #: (client) a HEAD request: its response has no content whatever its content-length
    head: bool = False
    expected_length: int | None = None
    body_received: int = 0


@dataclass(slots=True, eq=False)
class UniState:
    stream_id: int
    stream_type: int = -1  # -1: type varint not read yet
    buf: bytearray = field(default_factory=bytearray)
    parser: F.FrameParser | None = None
    settings_seen: bool = False


@dataclass(slots=True, eq=False)
class H3Connection:
    """HTTP/3 over one QUIC connection, either role (sans-I/O)."""

    quic: Connection
    is_client: bool
    max_table_capacity: int = 4096
    blocked_streams: int = 16
    max_field_section_size: int = 64 * 1024
    enable_connect_protocol: bool = False
    enable_datagram: bool = False
    stream_buffer: int = 1 << 20
    capturable: bool = False  # no QPACK dynamic table either way (see the module doc)
    # state
    started: bool = False
    control_stream_id: int | None = None
    encoder_stream_id: int | None = None
    decoder_stream_id: int | None = None
    peer_control_stream_id: int | None = None
    peer_encoder_stream_id: int | None = None
    peer_decoder_stream_id: int | None = None
    peer_settings: dict[int, int] | None = None
    requests: dict[int, RequestState] = field(default_factory=dict)
    uni: dict[int, UniState] = field(default_factory=dict)
    goaway_sent: int | None = None
    goaway_received: int | None = None
    #: (server) the client's largest MAX_PUSH_ID: it may not go down (RFC 9114 §7.2.7)
    max_push_id_received: int | None = None
    max_peer_bidi: int = -1  # highest peer-initiated bidi stream seen
    failed: bool = False
    counters: H3Counters = field(default_factory=H3Counters)
    encoder: Any = None  # pylsqpack.Encoder (runtime object)
    decoder: Any = None  # pylsqpack.Decoder (runtime object)
    lsqpack: Any = None  # the pylsqpack module (its exception classes)
    #: capturable mode: the peer's encoder stream carried something other than
    #: "Set Dynamic Table Capacity 0" (its decoder may hold a partial instruction)
    qpack_encoder_dirty: bool = False
    #: the peer's encoder stream began with Set Dynamic Table Capacity (RFC 9204 §3.2.2:
    #: the table's capacity is 0 until then, so any other instruction first is an error)
    peer_capacity_set: bool = False
    #: capturable mode: an incomplete instruction of the peer's decoder stream
    decoder_partial: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if self.capturable:
            self.max_table_capacity = 0
            self.blocked_streams = 0
        lsqpack = self.lsqpack = require_pylsqpack()
        self.encoder = lsqpack.Encoder()
        self.decoder = lsqpack.Decoder(self.max_table_capacity, self.blocked_streams)

    # ------------------------------------------------------------------ settings

    @property
    def datagram_supported(self) -> bool:
        """HTTP/3 datagrams ride on the transport's DATAGRAM frames (RFC 9221): we
        advertise SETTINGS_H3_DATAGRAM only when our transport accepts them
        (``Configuration.max_datagram_frame_size`` > 0)."""
        return self.quic.configuration.max_datagram_frame_size > 0

    def local_settings(self) -> dict[int, int]:
        settings = {
            F.SETTINGS_QPACK_MAX_TABLE_CAPACITY: self.max_table_capacity,
            F.SETTINGS_QPACK_BLOCKED_STREAMS: self.blocked_streams,
            F.SETTINGS_MAX_FIELD_SECTION_SIZE: self.max_field_section_size,
        }
        if self.enable_connect_protocol and not self.is_client:
            settings[F.SETTINGS_ENABLE_CONNECT_PROTOCOL] = 1
        if self.enable_datagram and self.datagram_supported:
            settings[F.SETTINGS_H3_DATAGRAM] = 1
        settings[GREASE_SETTING] = 0
        return settings

    @property
    def peer_allows_extended_connect(self) -> bool:
        s = self.peer_settings or {}
        return s.get(F.SETTINGS_ENABLE_CONNECT_PROTOCOL, 0) == 1

    @property
    def peer_allows_datagrams(self) -> bool:
        s = self.peer_settings or {}
        return s.get(F.SETTINGS_H3_DATAGRAM, 0) == 1

    def start(self) -> None:
        """Open our control stream (SETTINGS first) and the QPACK streams."""
        if self.started:
            return
        self.started = True
        quic = self.quic
        params = quic.peer_params
        if params is not None and params.initial_max_streams_uni < 3:
            # RFC 9114 §6.2: a peer must allow the control and both QPACK streams
            raise H3Error(H3_GENERAL_PROTOCOL_ERROR,
                          "the peer allows fewer than 3 unidirectional streams")
        self.control_stream_id = quic.open_stream(False)
        quic.send_stream_data(
            self.control_stream_id,
            encode_varint(F.STREAM_CONTROL)
            + F.encode_frame(F.SETTINGS, F.encode_settings(self.local_settings())),
        )
        self.encoder_stream_id = quic.open_stream(False)
        quic.send_stream_data(self.encoder_stream_id, encode_varint(F.STREAM_QPACK_ENCODER))
        self.decoder_stream_id = quic.open_stream(False)
        quic.send_stream_data(self.decoder_stream_id, encode_varint(F.STREAM_QPACK_DECODER))

    # ------------------------------------------------------------------ events in

    def handle_event(self, event: Event | Any) -> list[H3Event]:
        """Feed one transport event; returns the HTTP/3 events it produced."""
        out: list[H3Event] = []
        if self.failed:
            return out
        ev: Any = event
        try:
            cls = type(ev)
            if cls is StreamReadable or cls is StreamOpened:
                self._on_readable(ev.stream_id, out)
            elif cls is QuicStreamReset:
                self._on_peer_reset(ev.stream_id, ev.error_code, out)
            elif cls is QuicStopSending:
                self._on_stop_sending(ev.stream_id, ev.error_code, out)
            elif cls is HandshakeCompleted:
                self.start()
            elif cls is QuicDatagramReceived:
                out.extend(self.receive_datagram(ev.data))
        except H3Error as exc:
            self._fail(exc)
        return out

    def _fail(self, exc: H3Error) -> None:
        self.failed = True
        self.quic.close(exc.code, exc.reason)

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection with an HTTP/3 error code (H3_NO_ERROR to end cleanly)."""
        self.failed = True
        self.quic.close(code, reason)

    def _on_readable(self, stream_id: int, out: list[H3Event]) -> None:
        if stream_id & 2:
            us = self.uni.get(stream_id)
            if us is None:
                if stream_id not in self.quic.streams or self._is_local(stream_id):
                    return
                us = self.uni[stream_id] = UniState(stream_id)
            self._read_uni(us, out)
            return
        st = self.requests.get(stream_id)
        if st is None:
            stream = self.quic.streams.get(stream_id)
            if stream is None or self._is_local(stream_id):
                return
            if (stream.send is not None and stream.send.reset_code is not None) or (
                stream.recv is not None and stream.recv.stop_sending_code is not None
            ):
                self._discard(stream_id)  # a request we rejected or abandoned
                return
            if stream.recv is not None and stream.recv.read_offset > 0:
                # a request already read and forgotten, its response still in flight: a
                # duplicate of its STREAM frame made the stream readable again
                self._discard(stream_id)
                return
            st = self._new_peer_request(stream_id)
            if st is None:
                return
        self._pump(st, out)

    def _is_local(self, stream_id: int) -> bool:
        return bool(stream_id & 1) == (not self.is_client)

    def _new_peer_request(self, stream_id: int) -> RequestState | None:
        if self.is_client:
            # RFC 9114 §6.1: servers do not open bidirectional streams
            raise H3Error(H3_STREAM_CREATION_ERROR, "server opened a bidirectional stream")
        if stream_id > self.max_peer_bidi:
            self.max_peer_bidi = stream_id
        if self.goaway_sent is not None and stream_id >= self.goaway_sent:
            self.counters.requests_rejected += 1
            self._abandon(stream_id, H3_REQUEST_REJECTED)
            self._discard(stream_id)
            return None
        st = RequestState(
            stream_id, F.FrameParser(self.max_field_section_size), self.stream_buffer, False
        )
        self.requests[stream_id] = st
        return st

    def _discard(self, stream_id: int) -> None:
        """Read and drop what arrived on an abandoned stream (frees its credit)."""
        while self.quic.read_stream(stream_id, 1 << 16):
            pass

    def _abandon(self, stream_id: int, code: int) -> None:
        quic = self.quic
        stream = quic.streams.get(stream_id)
        if stream is None:
            return
        if stream.recv is not None and stream.recv.reset_code is None:
            quic.stop_sending(stream_id, code)
        if stream.send is not None and stream.send.reset_code is None:
            quic.reset_stream(stream_id, code)

    # ------------------------------------------------------------------ request streams

    def _pump(self, st: RequestState, out: list[H3Event], now: float | None = None) -> None:
        quic = self.quic
        sid = st.stream_id
        try:
            while not st.ended and not st.blocked:
                item = st.parser.next()
                if item is not None:
                    self._request_frame(st, item[0], item[1], out)
                    continue
                want = st.credit if st.headers_done else HEADERS_READ
                if want <= 0:
                    return
                data = quic.read_stream(sid, want, now)
                if data:
                    st.parser.feed(data)
                    continue
                if quic.stream_at_eof(sid):
                    stream = quic.streams.get(sid)
                    if stream is not None and stream.recv is not None and (
                        stream.recv.reset_code is not None
                    ):
                        return  # the StreamReset event reports it
                    self._request_end(st, out)
                return
        except H3StreamError as exc:
            self.counters.stream_errors += 1
            st.ended = True
            st.send_done = True
            self._abandon(sid, exc.code)
            out.append(StreamReset(sid, exc.code, by_peer=False))
            self._maybe_forget(st)

    def _request_frame(
        self, st: RequestState, ftype: int, payload: bytes, out: list[H3Event]
    ) -> None:
        if ftype == F.DATA:
            if not st.headers_done or st.trailers_done:
                raise H3Error(H3_FRAME_UNEXPECTED, "DATA frame outside a message body")
            st.body_received += len(payload)
            st.credit -= len(payload)
            if st.expected_length is not None and st.body_received > st.expected_length:
                raise H3StreamError(H3_MESSAGE_ERROR, "more body bytes than content-length")
            if payload:  # (an empty DATA frame: nothing for the application)
                out.append(DataReceived(st.stream_id, payload, False))
        elif ftype == F.HEADERS:
            if st.trailers_done:
                raise H3Error(H3_FRAME_UNEXPECTED, "HEADERS frame after trailers")
            if st.is_connect and st.headers_done:
                # RFC 9114 §4.4: on a CONNECT stream only DATA frames follow its HEADERS
                raise H3Error(H3_FRAME_UNEXPECTED, "HEADERS frame on a CONNECT stream")
            try:
                control, headers = self.decoder.feed_header(st.stream_id, payload)
            except self.lsqpack.StreamBlocked:
                st.blocked = True
                self.counters.blocked_sections += 1
                return
            except self.lsqpack.DecompressionFailed as exc:
                raise H3Error(QPACK_DECOMPRESSION_FAILED, "cannot decode field section") from exc
            self._send_decoder(control)
            self._deliver_headers(st, headers, out)
        elif ftype == F.PUSH_PROMISE and self.is_client:
            # RFC 9114 §7.2.5: a push ID above the MAX_PUSH_ID we sent; we send none, so
            # every push ID is above it
            raise H3Error(H3_ID_ERROR, "PUSH_PROMISE beyond our MAX_PUSH_ID (none sent)")
        else:  # (PUSH_PROMISE to a server: a client never sends one, RFC 9114 §7.2.5)
            raise H3Error(H3_FRAME_UNEXPECTED, f"frame {ftype:#x} on a request stream")

    def _deliver_headers(self, st: RequestState, headers: Headers, out: list[H3Event]) -> None:
        if not st.headers_done:
            no_content = False
            if self.is_client:
                status = validate_response(headers)
                if 100 <= status < 200:
                    out.append(HeadersReceived(st.stream_id, headers, False))
                    return  # informational: the final response follows
                # RFC 9114 §4.1.2: a response defined as having no content (to HEAD, a
                # 204 or 304) may carry a content-length it has no DATA for
                no_content = st.head or status in (204, 304)
            else:
                st.is_connect = validate_request(
                    headers, extended_connect=self.enable_connect_protocol
                )
                self.counters.requests_received += 1
            st.headers_done = True
            length = content_length(headers)
            st.expected_length = 0 if no_content and length is not None else length
            out.append(HeadersReceived(st.stream_id, headers, False))
        else:
            validate_trailers(headers)
            st.trailers_done = True
            out.append(HeadersReceived(st.stream_id, headers, False, trailers=True))

    def _request_end(self, st: RequestState, out: list[H3Event]) -> None:
        if st.parser.in_frame:
            raise H3Error(H3_FRAME_ERROR, "stream ended inside a frame")
        if not st.headers_done:
            raise H3StreamError(H3_REQUEST_INCOMPLETE, "stream ended before its headers")
        if st.expected_length is not None and st.body_received != st.expected_length:
            raise H3StreamError(H3_MESSAGE_ERROR, "body shorter than content-length")
        st.ended = True
        out.append(DataReceived(st.stream_id, b"", True))
        self._maybe_forget(st)

    def _maybe_forget(self, st: RequestState) -> None:
        if st.ended and st.send_done:
            self.requests.pop(st.stream_id, None)

    def consumed(self, stream_id: int, nbytes: int, now: float | None = None) -> list[H3Event]:
        """The application took ``nbytes`` of body: read more from the transport.

        ``now`` is the application's time of the read (the clock the connection is driven
        with): the transport times its window updates with it (``read_stream``)."""
        out: list[H3Event] = []
        st = self.requests.get(stream_id)
        if st is None or self.failed:
            return out
        st.credit += nbytes
        try:
            self._pump(st, out, now)
        except H3Error as exc:
            self._fail(exc)
        return out

    def _on_peer_reset(self, stream_id: int, code: int, out: list[H3Event]) -> None:
        if stream_id & 2:
            us = self.uni.get(stream_id)
            if us is not None and us.stream_type in (
                F.STREAM_CONTROL, F.STREAM_QPACK_ENCODER, F.STREAM_QPACK_DECODER
            ):
                raise H3Error(H3_CLOSED_CRITICAL_STREAM, "peer reset a critical stream")
            self.uni.pop(stream_id, None)
            return
        st = self.requests.get(stream_id)
        if st is None or st.ended:
            return
        st.ended = True
        out.append(StreamReset(stream_id, code))
        self._maybe_forget(st)

    def _on_stop_sending(self, stream_id: int, code: int, out: list[H3Event]) -> None:
        if stream_id in (self.control_stream_id, self.encoder_stream_id, self.decoder_stream_id):
            raise H3Error(H3_CLOSED_CRITICAL_STREAM, "peer stopped a critical stream")
        st = self.requests.get(stream_id)
        if st is None or st.send_done:
            return
        st.send_done = True
        out.append(StopSendingReceived(stream_id, code))
        self._maybe_forget(st)

    # ------------------------------------------------------------------ unidirectional

    def _read_uni(self, us: UniState, out: list[H3Event]) -> None:
        quic = self.quic
        data = quic.read_stream(us.stream_id)
        eof = quic.stream_at_eof(us.stream_id)
        if us.stream_type == -1:
            us.buf += data
            try:
                stype, pos = decode_varint(us.buf, 0)
            except WireError:
                if eof:
                    self.uni.pop(us.stream_id, None)
                return
            data = bytes(us.buf[pos:])
            us.buf.clear()
            self._open_uni(us, stype)
        stype = us.stream_type
        if stype == F.STREAM_CONTROL:
            assert us.parser is not None
            us.parser.feed(data)
            while (item := us.parser.next()) is not None:
                self._control_frame(us, item[0], item[1], out)
        elif stype == F.STREAM_QPACK_ENCODER:
            if data:
                self.counters.encoder_bytes_received += len(data)
                if self.capturable and data.count(SET_CAPACITY_0) != len(data):
                    self.qpack_encoder_dirty = True  # refused or an error: not capturable
                if not self.peer_capacity_set:
                    if data[0] & 0xE0 != SET_CAPACITY_0:  # (pylsqpack starts at the max)
                        raise H3Error(QPACK_ENCODER_STREAM_ERROR,
                                      "encoder instruction before Set Dynamic Table Capacity")
                    self.peer_capacity_set = True
                try:
                    unblocked = self.decoder.feed_encoder(data)
                except self.lsqpack.EncoderStreamError as exc:
                    raise H3Error(QPACK_ENCODER_STREAM_ERROR, "bad encoder stream") from exc
                for sid in unblocked:
                    self._resume(sid, out)
        elif stype == F.STREAM_QPACK_DECODER:
            if data:
                self.counters.decoder_bytes_received += len(data)
                if self.capturable:  # feed whole instructions only: the rest is plain data
                    data = complete_instructions(self.decoder_partial, data)
                try:
                    if data:
                        self.encoder.feed_decoder(data)
                except self.lsqpack.DecoderStreamError as exc:
                    raise H3Error(QPACK_DECODER_STREAM_ERROR, "bad decoder stream") from exc
        if eof:
            if stype in (F.STREAM_CONTROL, F.STREAM_QPACK_ENCODER, F.STREAM_QPACK_DECODER):
                raise H3Error(H3_CLOSED_CRITICAL_STREAM, "peer closed a critical stream")
            self.uni.pop(us.stream_id, None)

    def _open_uni(self, us: UniState, stype: int) -> None:
        us.stream_type = stype
        sid = us.stream_id
        if stype == F.STREAM_CONTROL:
            if self.peer_control_stream_id is not None:
                raise H3Error(H3_STREAM_CREATION_ERROR, "second control stream")
            self.peer_control_stream_id = sid
            us.parser = F.FrameParser(F.DEFAULT_MAX_FRAME_SIZE)
        elif stype == F.STREAM_QPACK_ENCODER:
            if self.peer_encoder_stream_id is not None:
                raise H3Error(H3_STREAM_CREATION_ERROR, "second QPACK encoder stream")
            self.peer_encoder_stream_id = sid
        elif stype == F.STREAM_QPACK_DECODER:
            if self.peer_decoder_stream_id is not None:
                raise H3Error(H3_STREAM_CREATION_ERROR, "second QPACK decoder stream")
            self.peer_decoder_stream_id = sid
        elif stype == F.STREAM_PUSH:
            if self.is_client:
                raise H3Error(H3_ID_ERROR, "push stream without MAX_PUSH_ID")
            raise H3Error(H3_STREAM_CREATION_ERROR, "a client opened a push stream")
        else:
            # unknown or reserved type (RFC 9114 §6.2.3): ignore, ask the peer to stop
            self.counters.unknown_streams += 1
            self.quic.stop_sending(sid, H3_STREAM_CREATION_ERROR)

    def _control_frame(self, us: UniState, ftype: int, payload: bytes, out: list[H3Event]) -> None:
        if not us.settings_seen:
            if ftype != F.SETTINGS:
                raise H3Error(H3_MISSING_SETTINGS, "control stream must start with SETTINGS")
            us.settings_seen = True
            settings = F.parse_settings(payload)
            if settings.get(F.SETTINGS_H3_DATAGRAM) == 1:
                params = self.quic.peer_params
                if params is None or not params.max_datagram_frame_size:
                    # RFC 9297 §2.1.1: the setting needs the transport parameter
                    raise H3Error(H3_SETTINGS_ERROR,
                                  "SETTINGS_H3_DATAGRAM without max_datagram_frame_size")
            self.peer_settings = settings
            encoder_data = self.encoder.apply_settings(
                0 if self.capturable else settings.get(F.SETTINGS_QPACK_MAX_TABLE_CAPACITY, 0),
                0 if self.capturable else settings.get(F.SETTINGS_QPACK_BLOCKED_STREAMS, 0),
            )
            self._send_encoder(encoder_data)
            out.append(SettingsReceived(settings))
        elif ftype == F.GOAWAY:
            last = F.parse_single_varint(payload, "GOAWAY")
            if self.is_client and last & 3:
                raise H3Error(H3_ID_ERROR, "GOAWAY id is not a client bidirectional stream")
            if self.goaway_received is not None and last > self.goaway_received:
                raise H3Error(H3_ID_ERROR, "GOAWAY id increased")
            self.goaway_received = last
            out.append(GoawayReceived(last))
        elif ftype == F.MAX_PUSH_ID:
            push_id = F.parse_single_varint(payload, "MAX_PUSH_ID")
            if self.is_client:
                raise H3Error(H3_FRAME_UNEXPECTED, "MAX_PUSH_ID from a server")
            if self.max_push_id_received is not None and push_id < self.max_push_id_received:
                raise H3Error(H3_ID_ERROR, "MAX_PUSH_ID went down")
            self.max_push_id_received = push_id  # (a server that never pushes: no other use)
        elif ftype == F.CANCEL_PUSH:
            F.parse_single_varint(payload, "CANCEL_PUSH")
            raise H3Error(H3_ID_ERROR, "CANCEL_PUSH for a push that was never allowed")
        else:  # SETTINGS again, DATA, HEADERS, PUSH_PROMISE, HTTP/2 reserved types
            raise H3Error(H3_FRAME_UNEXPECTED, f"frame {ftype:#x} on the control stream")

    def _resume(self, stream_id: int, out: list[H3Event]) -> None:
        st = self.requests.get(stream_id)
        if st is None or not st.blocked:
            return
        try:
            control, headers = self.decoder.resume_header(stream_id)
        except self.lsqpack.DecompressionFailed as exc:
            raise H3Error(QPACK_DECOMPRESSION_FAILED, "cannot decode field section") from exc
        st.blocked = False
        self._send_decoder(control)
        try:
            self._deliver_headers(st, headers, out)
        except H3StreamError as exc:
            self.counters.stream_errors += 1
            st.ended = st.send_done = True
            self._abandon(stream_id, exc.code)
            out.append(StreamReset(stream_id, exc.code, by_peer=False))
            self._maybe_forget(st)
            return
        self._pump(st, out)

    def _send_encoder(self, data: bytes) -> None:
        if data and self.encoder_stream_id is not None:
            self.counters.encoder_bytes_sent += len(data)
            self.quic.send_stream_data(self.encoder_stream_id, data)

    def _send_decoder(self, data: bytes) -> None:
        if data and self.decoder_stream_id is not None:
            self.counters.decoder_bytes_sent += len(data)
            self.quic.send_stream_data(self.decoder_stream_id, data)

    # ------------------------------------------------------------------ sending

    def open_request(self) -> int:
        """A new request stream (client); raises RequestRefused after GOAWAY, and the
        transport's StreamLimitReached when the peer's stream limit is reached."""
        if not self.is_client:
            raise ValueError("only a client opens request streams")
        if self.goaway_received is not None or self.failed:
            raise RequestRefused("the server sent GOAWAY: no new requests on this connection")
        sid = self.quic.open_stream(True)
        self.requests[sid] = RequestState(
            sid, F.FrameParser(self.max_field_section_size), self.stream_buffer, True
        )
        self.counters.requests_sent += 1
        return sid

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """A HEADERS frame (request/response head or trailers) on ``stream_id``."""
        if self.is_client:
            st = self.requests.get(stream_id)
            if st is not None and not st.send_done and (b":method", b"HEAD") in headers:
                st.head = True
        encoder_data, block = self.encoder.encode(stream_id, headers)
        self._send_encoder(encoder_data)
        self.quic.send_stream_data(stream_id, F.encode_frame(F.HEADERS, block), end_stream)
        if end_stream:
            self._sent_fin(stream_id)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """A DATA frame carrying ``data`` (none when empty), FIN with ``end_stream``."""
        quic = self.quic
        if data:
            quic.send_stream_data(stream_id, F.data_frame_header(len(data)))
            quic.send_stream_data(stream_id, data, end_stream)
        elif end_stream:
            quic.send_stream_data(stream_id, b"", True)
        if end_stream:
            self._sent_fin(stream_id)

    def _sent_fin(self, stream_id: int) -> None:
        st = self.requests.get(stream_id)
        if st is not None:
            st.send_done = True
            self._maybe_forget(st)

    def cancel(self, stream_id: int, code: int = H3_REQUEST_CANCELLED) -> None:
        """Cancel a request: RESET_STREAM and STOP_SENDING with ``code``."""
        st = self.requests.pop(stream_id, None)
        if st is not None:
            st.ended = st.send_done = True
        self._abandon(stream_id, code)

    def stop_reading(self, stream_id: int, code: int = H3_NO_ERROR) -> None:
        """Stop reading a request body that is no longer wanted (RFC 9114 §4.1: a server
        that answered before the request ended asks the client, with STOP_SENDING and
        H3_NO_ERROR, to stop sending it)."""
        st = self.requests.get(stream_id)
        if st is None or st.ended:
            return
        st.ended = True
        stream = self.quic.streams.get(stream_id)
        if stream is not None and stream.recv is not None and stream.recv.reset_code is None:
            self.quic.stop_sending(stream_id, code)
        self._discard(stream_id)
        self._maybe_forget(st)

    def send_goaway(self) -> int:
        """GOAWAY on the control stream: a server names the first request it will not
        process (requests above it are rejected with H3_REQUEST_REJECTED); a client
        sends push id 0 (it never allowed a push). Returns the id sent."""
        if self.control_stream_id is None:
            raise RuntimeError("HTTP/3 is not started yet (handshake not complete)")
        if self.is_client:
            last = 0
        else:
            last = self.max_peer_bidi + 4 if self.max_peer_bidi >= 0 else 0
            if self.goaway_sent is not None:
                last = min(last, self.goaway_sent)
        self.goaway_sent = last
        self.quic.send_stream_data(
            self.control_stream_id, F.encode_frame(F.GOAWAY, encode_varint(last))
        )
        return last

    # ------------------------------------------------------------------ datagrams

    def send_datagram(self, stream_id: int, data: bytes) -> None:
        """An HTTP/3 datagram for request ``stream_id`` (RFC 9297)."""
        if not (self.enable_datagram and self.datagram_supported):
            raise RuntimeError("HTTP/3 datagrams are not enabled on this connection")
        if not self.peer_allows_datagrams:
            raise RuntimeError("the peer did not send SETTINGS_H3_DATAGRAM=1")
        self.quic.send_datagram(F.encode_datagram(stream_id, data))

    def receive_datagram(self, data: bytes) -> list[H3Event]:
        """A transport DATAGRAM's payload: the HTTP/3 datagram it carries, if any."""
        if not (self.enable_datagram and self.datagram_supported):
            raise H3Error(H3_DATAGRAM_ERROR, "HTTP/3 datagram without SETTINGS_H3_DATAGRAM")
        try:
            stream_id, payload = F.parse_datagram(data)
        except WireError as exc:
            raise H3Error(H3_DATAGRAM_ERROR, "truncated HTTP/3 datagram") from exc
        if stream_id >> 2 >= 1 << 60:  # RFC 9297 §2.1: at most 2^60 - 1
            raise H3Error(H3_ID_ERROR, "quarter stream ID too large")
        if stream_id not in self.requests:
            self.counters.datagrams_dropped += 1
            return []
        self.counters.datagrams_received += 1
        return [DatagramReceived(stream_id, payload)]
