"""QUIC packet headers (RFC 9000 §17) and packet number encoding (§17.1, A.2, A.3)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import WireError
from .varint import decode_varint, encode_varint

__all__ = [
    "HANDSHAKE",
    "INITIAL",
    "MAX_CID_LEN",
    "ONE_RTT",
    "QUIC_V1",
    "QUIC_V2",
    "SUPPORTED_VERSIONS",
    "RETRY",
    "RETRY_INTEGRITY_TAG_LEN",
    "VERSION_NEGOTIATION",
    "ZERO_RTT",
    "PacketHeader",
    "build_long_header",
    "build_retry",
    "build_short_header",
    "build_version_negotiation",
    "decode_packet_number",
    "encode_packet_number",
    "parse_header",
    "retry_pseudo_packet",
]

INITIAL = 0
ZERO_RTT = 1
HANDSHAKE = 2
RETRY = 3
ONE_RTT = 4
VERSION_NEGOTIATION = 5

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF  # RFC 9369

#: RFC 9000 §14.1: the smallest UDP payload a datagram carrying an Initial packet may have
#: (a client pads to it; a server discards an Initial in a smaller datagram)
MIN_INITIAL_DATAGRAM = 1200
SUPPORTED_VERSIONS = (QUIC_V1, QUIC_V2)

# long header type bits -> packet type, per version (RFC 9369 §3.2 permutes them)
_TYPE_OF_BITS = {QUIC_V1: (0, 1, 2, 3), QUIC_V2: (3, 0, 1, 2)}
_BITS_OF_TYPE = {QUIC_V1: (0, 1, 2, 3), QUIC_V2: (1, 2, 3, 0)}
_V1_BITS = _BITS_OF_TYPE[QUIC_V1]  # (other versions: the v1 layout)

MAX_CID_LEN = 20
RETRY_INTEGRITY_TAG_LEN = 16

_from_bytes = int.from_bytes
#: a long header's version and DCID length
_VERSION_LEN = struct.Struct(">LB").unpack_from
#: a long header's first byte, version and DCID length
_FIRST_VERSION_LEN = struct.Struct(">BLB").pack


@dataclass(slots=True)
class PacketHeader:
    """A parsed (still header-protected) packet header.

    ``pn_offset`` is the absolute index of the packet-number field in the datagram
    (-1 for Retry, Version Negotiation and long headers of unsupported versions);
    ``end`` is the absolute index one past the packet.
    """

    packet_type: int
    version: int
    dcid: bytes
    scid: bytes
    token: bytes
    pn_offset: int
    end: int
    first_byte: int
    supported_versions: list[int] = field(default_factory=list)
    integrity_tag: bytes = b""


def parse_header(
    data: bytes | bytearray | memoryview, pos: int, short_dcid_len: int
) -> PacketHeader:
    """Parse the header of the packet starting at ``data[pos]``.

    Long headers of a version other than QUIC v1 and v2 (and not 0, Version Negotiation) are
    returned with only the invariant fields filled (``pn_offset=-1``, ``end=len(data)``)
    so that the endpoint can answer with Version Negotiation.
    """
    n = len(data)
    if pos >= n or pos < 0:
        raise WireError("empty packet")
    first = data[pos]
    if not first & 0x80:
        # Short header (1-RTT).
        if not first & 0x40:
            raise WireError("fixed bit is 0")
        pn_offset = pos + 1 + short_dcid_len
        if pn_offset >= n:
            raise WireError("truncated short header")
        return PacketHeader(
            ONE_RTT, QUIC_V1, bytes(data[pos + 1 : pn_offset]), b"", b"", pn_offset, n, first
        )

    # Long header: version, DCID, SCID (invariants, RFC 8999 §5.1).
    if pos + 7 > n:
        raise WireError("truncated long header")
    version, dcid_len = _VERSION_LEN(data, pos + 1)
    p = pos + 6
    if p + dcid_len >= n:
        raise WireError("truncated destination connection id")
    if type(data) is bytes:  # (slices of bytes are bytes: no copy of a copy)
        dcid = data[p : p + dcid_len]
        p += dcid_len
        scid_len = data[p]
        p += 1
        if p + scid_len > n:
            raise WireError("truncated source connection id")
        scid = data[p : p + scid_len]
    else:
        dcid = bytes(data[p : p + dcid_len])
        p += dcid_len
        scid_len = data[p]
        p += 1
        if p + scid_len > n:
            raise WireError("truncated source connection id")
        scid = bytes(data[p : p + scid_len])
    p += scid_len

    if version == 0:
        rest = n - p
        if rest == 0 or rest % 4:
            raise WireError("bad version negotiation version list")
        versions = [_from_bytes(data[i : i + 4], "big") for i in range(p, n, 4)]
        return PacketHeader(
            VERSION_NEGOTIATION, 0, dcid, scid, b"", -1, n, first, versions
        )

    if not first & 0x40:
        raise WireError("fixed bit is 0")
    bits = (first >> 4) & 3
    if version not in _TYPE_OF_BITS:
        return PacketHeader(bits, version, dcid, scid, b"", -1, n, first)
    types = _TYPE_OF_BITS[version]
    packet_type = types[bits]
    if dcid_len > MAX_CID_LEN or scid_len > MAX_CID_LEN:
        raise WireError("connection id too long")

    if packet_type == RETRY:
        tag_start = n - RETRY_INTEGRITY_TAG_LEN
        if tag_start < p:
            raise WireError("truncated retry packet")
        return PacketHeader(
            RETRY,
            version,
            dcid,
            scid,
            bytes(data[p:tag_start]),
            -1,
            n,
            first,
            [],
            bytes(data[tag_start:n]),
        )

    token = b""
    if packet_type == INITIAL:
        token_len = data[p] if p < n else 0x40  # one byte (0: no token) inline
        if token_len < 0x40:
            p += 1
        else:
            token_len, p = decode_varint(data, p)
        if p + token_len > n:
            raise WireError("truncated token")
        if token_len:
            token = bytes(data[p : p + token_len])
            p += token_len
    b = data[p] if p < n else 0xC0
    if 0x40 <= b < 0x80 and p + 1 < n:  # a two-byte length: the usual case, inline
        length = ((b & 0x3F) << 8) | data[p + 1]
        p += 2
    else:
        length, p = decode_varint(data, p)
    end = p + length
    if end > n:
        raise WireError("packet length exceeds datagram")
    if length == 0:
        raise WireError("empty long header packet")
    return PacketHeader(packet_type, version, dcid, scid, token, p, end, first)


def build_long_header(
    packet_type: int,
    version: int,
    dcid: bytes,
    scid: bytes,
    token: bytes,
    payload_len_incl_pn_and_tag: int,
    pn: int,
    pn_len: int,
) -> bytes:
    """Build an Initial / 0-RTT / Handshake header, packet number included.

    ``payload_len_incl_pn_and_tag`` is the Length field: packet number + payload + AEAD
    tag. It is always written as a 2-byte varint so that it can be patched later.
    """
    if packet_type not in (INITIAL, ZERO_RTT, HANDSHAKE):
        raise ValueError(f"not a long header packet type with a length: {packet_type}")
    if not 1 <= pn_len <= 4:
        raise ValueError(f"bad packet number length {pn_len}")
    if not 0 <= payload_len_incl_pn_and_tag < 0x4000:
        raise ValueError("length does not fit a 2-byte varint")
    dcid_len = len(dcid)
    scid_len = len(scid)
    if dcid_len > MAX_CID_LEN or scid_len > MAX_CID_LEN:
        raise ValueError("connection id too long")
    first = 0xC0 | (_BITS_OF_TYPE.get(version, _V1_BITS)[packet_type] << 4) | (pn_len - 1)
    bits = 8 * pn_len
    # the Length field (2 bytes) and the truncated packet number as one integer
    tail = (((payload_len_incl_pn_and_tag | 0x4000) << bits) | (pn & ((1 << bits) - 1))
            ).to_bytes(2 + pn_len, "big")
    if packet_type == INITIAL:
        tail = encode_varint(len(token)) + token + tail
    return _FIRST_VERSION_LEN(first, version, dcid_len) + dcid + bytes((scid_len,)) + scid + tail


def build_short_header(
    dcid: bytes, pn: int, pn_len: int, key_phase: int, spin: int = 0
) -> bytes:
    """Build a 1-RTT short header (unprotected), truncated packet number included."""
    if not 1 <= pn_len <= 4:
        raise ValueError(f"bad packet number length {pn_len}")
    first = 0x40 | ((spin & 1) << 5) | ((key_phase & 1) << 2) | (pn_len - 1)
    return (
        bytes((first,))
        + dcid
        + (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    )


#: room for the AEAD tag (16 bytes with every QUIC packet protection suite)
_TAG_ROOM = bytes(16)


def push_short_packet(
    buf: bytearray, dcid: bytes, pn: int, pn_len: int, payload: bytes | bytearray
) -> int:
    """Append a 1-RTT packet's plaintext as the send path hands it to the offload
    engine's ``seal``: ``build_short_header(dcid, pn, pn_len, 0)`` (the engine sets the
    key phase), the payload, then 16 zero bytes where the AEAD tag goes. Returns the
    header's length. (The send path's C twin: ``crypto._native.push_short_packet``.)"""
    header = build_short_header(dcid, pn, pn_len, 0)
    buf += header
    buf += payload
    buf += _TAG_ROOM
    return len(header)


def encode_packet_number(pn: int, largest_acked: int | None) -> tuple[int, int]:
    """RFC 9000 A.2: returns ``(truncated_value, length_in_bytes)``."""
    num_unacked = pn + 1 if largest_acked is None else pn - largest_acked
    if num_unacked < 1:
        num_unacked = 1
    # Need 2**(8*length) >= 2 * num_unacked.
    nbytes = ((2 * num_unacked - 1).bit_length() + 7) >> 3
    if nbytes < 1:
        nbytes = 1
    elif nbytes > 4:
        raise ValueError("too many unacknowledged packets to encode the packet number")
    return pn & ((1 << (8 * nbytes)) - 1), nbytes


def decode_packet_number(truncated: int, pn_nbits: int, largest_pn: int) -> int:
    """RFC 9000 A.3: recover a full packet number from its truncated encoding."""
    expected = largest_pn + 1
    win = 1 << pn_nbits
    hwin = win >> 1
    mask = win - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def build_version_negotiation(dcid: bytes, scid: bytes, versions: list[int]) -> bytes:
    """Build a Version Negotiation packet (RFC 9000 §17.2.1).

    ``dcid``/``scid`` are the values to put on the wire (i.e. the client's SCID and
    DCID swapped by the caller).
    """
    if len(dcid) > 255 or len(scid) > 255:
        raise ValueError("connection id too long")
    out = bytearray(b"\xc0\x00\x00\x00\x00")
    out.append(len(dcid))
    out += dcid
    out.append(len(scid))
    out += scid
    for v in versions:
        out += v.to_bytes(4, "big")
    return bytes(out)


def build_retry(
    version: int,
    dcid: bytes,
    scid: bytes,
    token: bytes,
    integrity_tag: bytes,
    *,
    unused_bits: int = 0,
) -> bytes:
    """Build a Retry packet; pass ``integrity_tag=b""`` to get the bytes to tag.

    ``unused_bits`` fills the four low bits of the first byte (arbitrary per RFC 9000).
    """
    if len(dcid) > MAX_CID_LEN or len(scid) > MAX_CID_LEN:
        raise ValueError("connection id too long")
    out = bytearray()
    out.append(0xC0 | (_BITS_OF_TYPE.get(version, _V1_BITS)[RETRY] << 4) | (unused_bits & 0x0F))
    out += version.to_bytes(4, "big")
    out.append(len(dcid))
    out += dcid
    out.append(len(scid))
    out += scid
    out += token
    out += integrity_tag
    return bytes(out)


def retry_pseudo_packet(odcid: bytes, retry_without_tag: bytes) -> bytes:
    """RFC 9001 §5.8 Retry pseudo-packet: ODCID length, ODCID, Retry without its tag."""
    return bytes((len(odcid),)) + odcid + retry_without_tag
