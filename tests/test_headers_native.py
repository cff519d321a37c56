"""The C engine's packet-header parser (transport/headers.py) against the Python
reference (wire/packet.parse_header).

For any bytes, position and short-header CID length, ``transport.headers.parse_header``
gives what the reference gives: an equal ``PacketHeader``, or ``WireError`` with the same
message. C parses short headers and v1/v2 Initial, 0-RTT and Handshake headers itself
(the test checks it does not hand well-formed ones back) and returns None for the rest.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.crypto import native
from quicflow.transport import headers
from quicflow.wire import WireError
from quicflow.wire.packet import (
    HANDSHAKE,
    INITIAL,
    QUIC_V1,
    QUIC_V2,
    ZERO_RTT,
    PacketHeader,
    build_long_header,
    build_retry,
    build_short_header,
    build_version_negotiation,
    parse_header,
)
from tests.support.prereq import require

cids = st.binary(max_size=20)


@pytest.fixture(autouse=True)
def _need_native() -> None:
    require(native.available(), f"native crypto extension not built "
            f"({native.unavailable_reason()})")


def _c(data: bytes | bytearray | memoryview, pos: int, cid_len: int) -> PacketHeader | None:
    out: PacketHeader | None = native._ext.parse_header(data, pos, cid_len, PacketHeader)
    return out


def _both_agree(data: bytes | bytearray | memoryview, pos: int,
                cid_len: int) -> PacketHeader | None:
    try:
        expected: PacketHeader | str = parse_header(data, pos, cid_len)
    except WireError as exc:
        expected = f"error: {exc}"
    fast = _c(data, pos, cid_len)
    if fast is not None:
        assert fast == expected
        assert type(fast.dcid) is bytes and type(fast.token) is bytes
    try:
        got: PacketHeader | str = headers.parse_header(data, pos, cid_len)
    except WireError as exc:
        got = f"error: {exc}"
    assert got == expected
    return fast


@given(st.sampled_from([INITIAL, ZERO_RTT, HANDSHAKE]), st.sampled_from([QUIC_V1, QUIC_V2]),
       cids, cids, st.binary(max_size=100), st.integers(1, 300), st.integers(0, 2**32 - 1),
       st.integers(1, 4), st.binary(max_size=10), st.binary(max_size=40))
def test_long_headers_parse_in_c_as_in_python(
    ptype: int, version: int, dcid: bytes, scid: bytes, token: bytes, length: int, pn: int,
    pn_len: int, prefix: bytes, after: bytes,
) -> None:
    length = max(length, pn_len)
    hdr = build_long_header(ptype, version, dcid, scid, token, length, pn, pn_len)
    datagram = prefix + hdr + bytes(length - pn_len) + after
    for data in (datagram, bytearray(datagram), memoryview(datagram)):
        assert _both_agree(data, len(prefix), 8) is not None
    for cut in (len(prefix) + len(hdr) - pn_len - 1, len(datagram) - len(after) - 1):
        _both_agree(datagram[:cut], len(prefix), 8)  # truncated: both refuse alike


@given(cids, st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(0, 1),
       st.binary(max_size=50), st.integers(0, 3))
def test_short_headers_parse_in_c_as_in_python(
    dcid: bytes, pn: int, pn_len: int, kp: int, body: bytes, pos: int,
) -> None:
    datagram = bytes(pos) + build_short_header(dcid, pn, pn_len, kp) + body
    fast = _both_agree(datagram, pos, len(dcid))
    assert fast is not None or pos + 1 + len(dcid) >= len(datagram) or not datagram[pos]


@given(cids, cids, st.binary(max_size=30))
def test_retry_and_version_negotiation_are_left_to_python(
    dcid: bytes, scid: bytes, token: bytes
) -> None:
    retry = build_retry(QUIC_V1, dcid, scid, token, bytes(16))
    assert _both_agree(retry, 0, 0) is None
    vn = build_version_negotiation(dcid, scid, [QUIC_V1, QUIC_V2])
    assert _both_agree(vn, 0, 0) is None
    other = bytearray(build_long_header(INITIAL, QUIC_V1, dcid, scid, token, 30, 0, 1))
    other[1:5] = b"\x0a\x0a\x0a\x0a"  # an unknown version: the invariant fields only
    assert _both_agree(bytes(other) + bytes(40), 0, 0) is None


@given(st.binary(max_size=80), st.integers(0, 5), st.integers(0, 20))
def test_arbitrary_bytes_parse_or_fail_alike(data: bytes, pos: int, cid_len: int) -> None:
    _both_agree(data, pos, cid_len)


@given(st.sampled_from([0x40, 0x43, 0xC0, 0xC3, 0xD0, 0xE0, 0xF0, 0x80, 0xC1, 0xD2]),
       st.sampled_from([b"\x00\x00\x00\x01", b"\x6b\x33\x43\xcf", b"\x00\x00\x00\x00"]),
       st.binary(max_size=60), st.integers(0, 20))
def test_structured_garbage_parses_or_fails_alike(
    first: int, version: bytes, rest: bytes, cid_len: int
) -> None:
    _both_agree(bytes([first]) + version + rest, 0, cid_len)


def test_each_refusal_is_the_references() -> None:
    good = build_long_header(INITIAL, QUIC_V1, b"d" * 8, b"s" * 8, b"t" * 10, 30, 0, 4)
    good += bytes(26)
    for cut in range(len(good)):
        assert _both_agree(good[:cut], 0, 8) is None
    assert _both_agree(good, 0, 8) is not None
    assert _both_agree(good, len(good), 8) is None  # past the end
    assert _both_agree(b"\x00" + bytes(30), 0, 8) is None  # fixed bit 0 (short)
    unfixed = bytearray(good)
    unfixed[0] &= ~0x40
    assert _both_agree(bytes(unfixed), 0, 8) is None  # fixed bit 0 (long)
    long_cid = b"\xe0\x00\x00\x00\x01\x15" + bytes(21) + b"\x00\x01\x00" + bytes(4)
    assert _both_agree(long_cid, 0, 0) is None  # a 21-byte CID in v1
    empty = build_long_header(HANDSHAKE, QUIC_V1, b"d", b"s", b"", 0, 0, 1)[:-1]
    assert _both_agree(empty + b"\x00", 0, 0) is None  # Length 0


def test_the_receive_path_uses_the_c_parser() -> None:
    if headers.NATIVE_PARSE is None:  # QUICFLOW_ENGINE=python: the reference alone
        assert headers.parse_header is parse_header
        return
    assert headers.parse_header is headers._parse_header
    from quicflow.endpoint import endpoint
    from quicflow.transport import receive

    assert vars(endpoint)["parse_header"] is headers.parse_header
    assert vars(receive)["parse_header"] is headers.parse_header


def test_headers_are_built_with_the_dataclass_defaults() -> None:
    """C builds a PacketHeader without its __init__, with the two defaults it would set:
    so PacketHeader must stay a slotted dataclass of those ten fields; each header gets
    its own supported_versions list, as from __init__."""
    fields = dataclasses.fields(PacketHeader)
    assert PacketHeader.__slots__ == tuple(f.name for f in fields)
    assert [f.name for f in fields][8:] == ["supported_versions", "integrity_tag"]
    assert fields[8].default_factory is list and fields[9].default == b""
    assert all(f.default is dataclasses.MISSING for f in fields[:8])
    assert not hasattr(PacketHeader, "__post_init__")
    assert PacketHeader.__init__.__code__.co_filename == "<string>"  # (generated)
    data = build_short_header(b"\x01\x02\x03\x04", 7, 1, 0) + bytes(30)
    one, two = _c(data, 0, 4), _c(data, 0, 4)
    assert one == two == parse_header(data, 0, 4)
    assert one is not None and two is not None
    assert one.supported_versions == [] and one.supported_versions is not two.supported_versions
    one.supported_versions.append(1)
    assert two.supported_versions == []


def test_another_header_class_is_called() -> None:
    """A class that is not a ten-field slotted dataclass gets the eight values."""
    made: list[tuple[object, ...]] = []

    class Called:
        def __init__(self, *args: object) -> None:
            made.append(args)

    data = build_short_header(b"\x01\x02\x03\x04", 7, 1, 0) + bytes(30)
    assert type(native._ext.parse_header(data, 0, 4, Called)) is Called
    assert len(made) == 1 and len(made[0]) == 8
    assert type(native._ext.parse_header(data, 0, 4, PacketHeader)) is PacketHeader
