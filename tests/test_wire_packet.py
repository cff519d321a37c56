"""Tests for quicflow.wire.packet (RFC 9000 §17, A.2, A.3; RFC 9001 appendix A)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.wire import (
    HANDSHAKE,
    INITIAL,
    ONE_RTT,
    QUIC_V1,
    RETRY,
    VERSION_NEGOTIATION,
    ZERO_RTT,
    WireError,
    build_long_header,
    build_retry,
    build_short_header,
    build_version_negotiation,
    decode_packet_number,
    encode_packet_number,
    parse_header,
    retry_pseudo_packet,
)

cids = st.binary(max_size=20)


# --- packet numbers -----------------------------------------------------------------


def test_rfc_a3_decode_example() -> None:
    assert decode_packet_number(0x9B32, 16, 0xA82F30EA) == 0xA82F9B32


def test_rfc_a2_encode_examples() -> None:
    # RFC 9000 A.2 / §17.1: 0xac5c02 with 0xabe8b3 acked needs 16 bits,
    # 0xace8fe needs 18 bits (3 bytes).
    assert encode_packet_number(0xAC5C02, 0xABE8B3) == (0x5C02, 2)
    assert encode_packet_number(0xACE8FE, 0xABE8B3) == (0xACE8FE, 3)


def test_encode_first_packets() -> None:
    assert encode_packet_number(0, None) == (0, 1)
    assert encode_packet_number(127, None) == (127, 1)
    assert encode_packet_number(128, None) == (128, 2)
    assert encode_packet_number(200, 190) == (200, 1)


def test_encode_too_far() -> None:
    with pytest.raises(ValueError):
        encode_packet_number(2**40, 0)


def test_decode_window_edges() -> None:
    # Wrap forward and backward around the window.
    assert decode_packet_number(0x00, 8, 0xFF) == 0x100
    assert decode_packet_number(0xFF, 8, 0x100) == 0xFF
    assert decode_packet_number(0, 8, -1) == 0
    # Never beyond 2^62.
    assert decode_packet_number(0, 8, 2**62 - 2) < 2**62 + 256


@given(
    st.integers(min_value=-1, max_value=2**40),
    st.integers(min_value=1, max_value=2**30),
    st.integers(min_value=0, max_value=2**20),
)
def test_encode_decode_round_trip(largest_acked: int, ahead: int, recv_lag: int) -> None:
    pn = largest_acked + ahead
    acked = None if largest_acked < 0 else largest_acked
    try:
        truncated, nbytes = encode_packet_number(pn, acked)
    except ValueError:
        assert ahead >= 2**31
        return
    assert 1 <= nbytes <= 4
    # The receiver has seen anything between largest_acked and pn - 1.
    largest_received = max(largest_acked, pn - 1 - recv_lag)
    if acked is not None:
        assert decode_packet_number(truncated, 8 * nbytes, largest_received) == pn


# --- header vectors ------------------------------------------------------------------


def test_rfc9001_client_initial_header() -> None:
    header = build_long_header(
        INITIAL, QUIC_V1, bytes.fromhex("8394c8f03e515708"), b"", b"", 1182, 2, 4
    )
    assert header == bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
    datagram = header + bytes(1182 - 4)
    h = parse_header(datagram, 0, 8)
    assert h.packet_type == INITIAL and h.version == QUIC_V1
    assert h.dcid == bytes.fromhex("8394c8f03e515708") and h.scid == b"" and h.token == b""
    assert h.pn_offset == len(header) - 4
    assert h.end == len(datagram) == h.pn_offset + 1182
    assert h.first_byte == 0xC3


def test_rfc9001_server_initial_header() -> None:
    header = build_long_header(
        INITIAL, QUIC_V1, b"", bytes.fromhex("f067a5502a4262b5"), b"", 0x75, 1, 2
    )
    assert header == bytes.fromhex("c1000000010008f067a5502a4262b50040750001")


def test_rfc9001_retry_vector() -> None:
    expected = bytes.fromhex(
        "ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba"
    )
    tag = bytes.fromhex("04a265ba2eff4d829058fb3f0f2496ba")
    scid = bytes.fromhex("f067a5502a4262b5")
    assert build_retry(QUIC_V1, b"", scid, b"token", tag, unused_bits=0xF) == expected
    h = parse_header(expected, 0, 0)
    assert h.packet_type == RETRY and h.pn_offset == -1 and h.end == len(expected)
    assert h.scid == scid and h.dcid == b"" and h.token == b"token"
    assert h.integrity_tag == tag
    odcid = bytes.fromhex("8394c8f03e515708")
    pseudo = retry_pseudo_packet(odcid, expected[:-16])
    assert pseudo == b"\x08" + odcid + expected[:-16]


def test_rfc9001_short_header() -> None:
    # RFC 9001 A.5: unprotected header 4200bff4 for pn 654360564.
    assert build_short_header(b"", 654360564, 3, 0) == bytes.fromhex("4200bff4")
    h = parse_header(bytes.fromhex("4200bff4") + bytes(20), 0, 0)
    assert h.packet_type == ONE_RTT and h.pn_offset == 1 and h.dcid == b""


def test_short_header_bits() -> None:
    hdr = build_short_header(b"\x01\x02\x03", 0x1234, 2, key_phase=1, spin=1)
    assert hdr == bytes([0x40 | 0x20 | 0x04 | 0x01, 1, 2, 3, 0x12, 0x34])


def test_version_negotiation() -> None:
    pkt = build_version_negotiation(b"\xaa" * 5, b"\xbb" * 3, [QUIC_V1, 0x6B3343CF])
    assert pkt[0] & 0x80 and pkt[1:5] == b"\x00\x00\x00\x00"
    h = parse_header(pkt, 0, 0)
    assert h.packet_type == VERSION_NEGOTIATION and h.version == 0
    assert h.dcid == b"\xaa" * 5 and h.scid == b"\xbb" * 3
    assert h.supported_versions == [QUIC_V1, 0x6B3343CF]
    assert h.end == len(pkt) and h.pn_offset == -1
    with pytest.raises(WireError):
        parse_header(pkt[:-1], 0, 0)
    with pytest.raises(WireError):
        parse_header(build_version_negotiation(b"", b"", []), 0, 0)


def test_unknown_version_invariants() -> None:
    pkt = bytes([0xC0]) + (0x1A2A3A4A).to_bytes(4, "big") + b"\x02ab\x01c" + bytes(1200)
    h = parse_header(pkt, 0, 8)
    assert h.version == 0x1A2A3A4A and h.dcid == b"ab" and h.scid == b"c"
    assert h.pn_offset == -1 and h.end == len(pkt)


# --- coalesced packets and round trips ---------------------------------------------


def test_coalesced_datagram() -> None:
    dcid, scid = b"\x11" * 8, b"\x22" * 5
    p1 = build_long_header(INITIAL, QUIC_V1, dcid, scid, b"tok", 40, 0, 1) + bytes(39)
    p2 = build_long_header(HANDSHAKE, QUIC_V1, dcid, scid, b"", 30, 7, 2) + bytes(28)
    p3 = build_short_header(dcid, 9, 1, 0) + bytes(30)
    datagram = p1 + p2 + p3
    h1 = parse_header(datagram, 0, len(dcid))
    assert (h1.packet_type, h1.token, h1.end) == (INITIAL, b"tok", len(p1))
    h2 = parse_header(datagram, h1.end, len(dcid))
    assert (h2.packet_type, h2.end) == (HANDSHAKE, len(p1) + len(p2))
    assert datagram[h2.pn_offset : h2.pn_offset + 2] == b"\x00\x07"
    h3 = parse_header(datagram, h2.end, len(dcid))
    assert h3.packet_type == ONE_RTT and h3.dcid == dcid
    assert h3.pn_offset == h2.end + 1 + len(dcid) and h3.end == len(datagram)
    # Works the same on a memoryview.
    assert parse_header(memoryview(datagram), h1.end, 8) == h2


@given(
    st.sampled_from([INITIAL, ZERO_RTT, HANDSHAKE]),
    cids,
    cids,
    st.binary(max_size=100),
    st.integers(min_value=1, max_value=300),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=1, max_value=4),
    st.binary(max_size=10),
)
def test_long_header_round_trip(
    ptype: int, dcid: bytes, scid: bytes, token: bytes, length: int, pn: int, pn_len: int,
    prefix: bytes,
) -> None:
    length = max(length, pn_len)
    hdr = build_long_header(ptype, QUIC_V1, dcid, scid, token, length, pn, pn_len)
    datagram = prefix + hdr + bytes(length - pn_len) + b"\xff" * 3
    h = parse_header(datagram, len(prefix), 0)
    assert h.packet_type == ptype and h.version == QUIC_V1
    assert h.dcid == dcid and h.scid == scid
    assert h.token == (token if ptype == INITIAL else b"")
    assert h.first_byte & 3 == pn_len - 1
    assert h.end == h.pn_offset + length == len(prefix) + len(hdr) + length - pn_len
    truncated = int.from_bytes(datagram[h.pn_offset : h.pn_offset + pn_len], "big")
    assert truncated == pn & ((1 << (8 * pn_len)) - 1)


@given(cids, st.integers(min_value=0, max_value=2**32 - 1), st.integers(1, 4),
       st.integers(0, 1), st.integers(0, 1), st.binary(min_size=1, max_size=50))
def test_short_header_round_trip(
    dcid: bytes, pn: int, pn_len: int, kp: int, spin: int, body: bytes
) -> None:
    hdr = build_short_header(dcid, pn, pn_len, kp, spin)
    h = parse_header(hdr + body, 0, len(dcid))
    assert h.packet_type == ONE_RTT and h.dcid == dcid
    assert h.first_byte == hdr[0] and (h.first_byte >> 2) & 1 == kp
    assert (h.first_byte >> 5) & 1 == spin
    assert h.pn_offset == 1 + len(dcid) and h.end == len(hdr) + len(body)


@given(cids, cids, st.binary(max_size=60), st.binary(min_size=16, max_size=16))
def test_retry_round_trip(dcid: bytes, scid: bytes, token: bytes, tag: bytes) -> None:
    pkt = build_retry(QUIC_V1, dcid, scid, token, tag)
    h = parse_header(pkt, 0, 0)
    assert (h.packet_type, h.dcid, h.scid, h.token, h.integrity_tag) == (
        RETRY, dcid, scid, token, tag)


# --- malformed -------------------------------------------------------------------


def test_fixed_bit_zero_rejected() -> None:
    with pytest.raises(WireError):
        parse_header(b"\x00" + bytes(30), 0, 8)
    long_hdr = bytearray(build_long_header(HANDSHAKE, QUIC_V1, b"a", b"b", b"", 20, 0, 1))
    long_hdr[0] &= ~0x40
    with pytest.raises(WireError):
        parse_header(bytes(long_hdr) + bytes(19), 0, 0)


def test_truncated_headers() -> None:
    full = build_long_header(INITIAL, QUIC_V1, b"d" * 8, b"s" * 8, b"t" * 10, 30, 0, 4)
    full += bytes(26)
    for cut in range(len(full)):
        with pytest.raises(WireError):
            parse_header(full[:cut], 0, 8)
    with pytest.raises(WireError):
        parse_header(b"\x40" + b"x" * 8, 0, 8)  # no room for the packet number
    with pytest.raises(WireError):
        parse_header(b"", 0, 8)


def test_cid_too_long_for_v1() -> None:
    pkt = b"\xe0\x00\x00\x00\x01\x15" + bytes(21) + b"\x00\x01\x00" + bytes(4)
    with pytest.raises(WireError):
        parse_header(pkt, 0, 0)


@given(st.binary(max_size=80), st.integers(min_value=0, max_value=20))
def test_arbitrary_bytes_only_wire_error(data: bytes, dcid_len: int) -> None:
    try:
        h = parse_header(data, 0, dcid_len)
    except WireError:
        return
    assert 0 < h.end <= len(data)
    assert h.pn_offset == -1 or h.pn_offset < h.end


@given(st.sampled_from([0x40, 0x43, 0xC0, 0xC3, 0xD0, 0xE0, 0xF0, 0x80]),
       st.sampled_from([b"\x00\x00\x00\x01", b"\x00\x00\x00\x00", b"\x0a\x0a\x0a\x0a"]),
       st.binary(max_size=60), st.integers(min_value=0, max_value=20))
def test_structured_garbage_only_wire_error(
    first: int, version: bytes, rest: bytes, dcid_len: int
) -> None:
    data = bytes([first]) + version + rest
    try:
        h = parse_header(data, 0, dcid_len)
    except WireError:
        return
    assert 0 < h.end <= len(data)
