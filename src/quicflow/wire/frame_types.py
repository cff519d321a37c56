"""QUIC frame type codes and one slotted dataclass per frame (RFC 9000 §19)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

PADDING = 0x00
PING = 0x01
ACK = 0x02
ACK_ECN = 0x03
RESET_STREAM = 0x04
STOP_SENDING = 0x05
CRYPTO = 0x06
NEW_TOKEN = 0x07
STREAM = 0x08  # 0x08..0x0f, low bits below
STREAM_FIN = 0x01
STREAM_LEN = 0x02
STREAM_OFF = 0x04
MAX_DATA = 0x10
MAX_STREAM_DATA = 0x11
MAX_STREAMS_BIDI = 0x12
MAX_STREAMS_UNI = 0x13
DATA_BLOCKED = 0x14
STREAM_DATA_BLOCKED = 0x15
STREAMS_BLOCKED_BIDI = 0x16
STREAMS_BLOCKED_UNI = 0x17
NEW_CONNECTION_ID = 0x18
RETIRE_CONNECTION_ID = 0x19
PATH_CHALLENGE = 0x1A
PATH_RESPONSE = 0x1B
CONNECTION_CLOSE = 0x1C
CONNECTION_CLOSE_APP = 0x1D
HANDSHAKE_DONE = 0x1E
IMMEDIATE_ACK = 0x1F  # draft-ietf-quic-ack-frequency-14 §5 (1-RTT packets only)
ACK_FREQUENCY = 0xAF  # draft-ietf-quic-ack-frequency-14 §4 (a two-byte frame type)
DATAGRAM = 0x30  # RFC 9221: data to the end of the packet
DATAGRAM_LEN = 0x31  # with a length

MAX_STREAMS_LIMIT = 1 << 60  # RFC 9000 §19.11: stream counts above 2^60 are invalid


@dataclass(slots=True)
class Padding:
    length: int = 1


@dataclass(slots=True)
class Ping:
    pass


@dataclass(slots=True)
class Ack:
    ranges: list[tuple[int, int]]  # (smallest, largest) inclusive, largest range first
    ack_delay: int  # raw encoded value (scaled by the peer's ack_delay_exponent)
    ecn: tuple[int, int, int] | None = None  # (ect0, ect1, ce)


@dataclass(slots=True)
class ResetStream:
    stream_id: int
    error_code: int
    final_size: int


@dataclass(slots=True)
class StopSending:
    stream_id: int
    error_code: int


@dataclass(slots=True)
class Crypto:
    offset: int
    data: bytes


@dataclass(slots=True)
class NewToken:
    token: bytes


@dataclass(slots=True)
class Stream:
    stream_id: int
    offset: int
    data: bytes
    fin: bool = False


@dataclass(slots=True)
class MaxData:
    maximum: int


@dataclass(slots=True)
class MaxStreamData:
    stream_id: int
    maximum: int


@dataclass(slots=True)
class MaxStreams:
    bidi: bool
    maximum: int


@dataclass(slots=True)
class DataBlocked:
    limit: int


@dataclass(slots=True)
class StreamDataBlocked:
    stream_id: int
    limit: int


@dataclass(slots=True)
class StreamsBlocked:
    bidi: bool
    limit: int


@dataclass(slots=True)
class NewConnectionId:
    sequence: int
    retire_prior_to: int
    cid: bytes
    reset_token: bytes


@dataclass(slots=True)
class RetireConnectionId:
    sequence: int


@dataclass(slots=True)
class PathChallenge:
    data: bytes


@dataclass(slots=True)
class PathResponse:
    data: bytes


@dataclass(slots=True)
class ConnectionClose:
    error_code: int
    frame_type: int | None  # None: application close (type 0x1d)
    reason: bytes = b""


@dataclass(slots=True)
class HandshakeDone:
    pass


@dataclass(slots=True)
class Datagram:
    """RFC 9221 DATAGRAM (types 0x30 without and 0x31 with a length)."""

    data: bytes
    #: received as type 0x31: the frame holds a Length field (what the peer's limit,
    #: max_datagram_frame_size, counts with the type and the data; RFC 9221 §3)
    with_length: bool = True


@dataclass(slots=True)
class AckFrequency:
    """draft-ietf-quic-ack-frequency-14 ACK_FREQUENCY: how often the peer asks us to ACK."""

    sequence: int
    threshold: int  # ack-eliciting packets received before an ACK is owed
    max_ack_delay: int  # requested max ack delay, microseconds
    reordering: int  # reordering threshold (0: reordering never asks for an ACK at once)


@dataclass(slots=True)
class ImmediateAck:
    """draft-ietf-quic-ack-frequency-14 IMMEDIATE_ACK: acknowledge this packet at once."""


Frame = Union[  # noqa: UP007 - a named alias reads better as Union
    Padding,
    Ping,
    Ack,
    ResetStream,
    StopSending,
    Crypto,
    NewToken,
    Stream,
    MaxData,
    MaxStreamData,
    MaxStreams,
    DataBlocked,
    StreamDataBlocked,
    StreamsBlocked,
    NewConnectionId,
    RetireConnectionId,
    PathChallenge,
    PathResponse,
    ConnectionClose,
    HandshakeDone,
    Datagram,
    AckFrequency,
    ImmediateAck,
]
