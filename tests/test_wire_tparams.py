"""Tests for quicflow.wire.tparams (RFC 9000 §18)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.wire import (
    VARINT_MAX,
    PreferredAddress,
    TransportParameterError,
    TransportParameters,
    WireError,
    decode_transport_parameters,
    encode_transport_parameters,
    encode_varint,
)

v = st.integers(min_value=0, max_value=VARINT_MAX)
cid = st.binary(max_size=20)
token16 = st.binary(min_size=16, max_size=16)


def param(pid: int, value: bytes) -> bytes:
    return encode_varint(pid) + encode_varint(len(value)) + value


def int_param(pid: int, value: int) -> bytes:
    return param(pid, encode_varint(value))


ipv4 = st.builds(
    lambda b, p: (str(ipaddress.IPv4Address(b)), p),
    st.binary(min_size=4, max_size=4), st.integers(0, 65535),
).filter(lambda a: a != ("0.0.0.0", 0))
ipv6 = st.builds(
    lambda b, p: (str(ipaddress.IPv6Address(b)), p),
    st.binary(min_size=16, max_size=16), st.integers(0, 65535),
).filter(lambda a: a != ("::", 0))

preferred = st.builds(
    PreferredAddress, st.none() | ipv4, st.none() | ipv6, st.binary(min_size=1, max_size=20),
    token16,
)

params = st.builds(
    TransportParameters,
    original_destination_connection_id=st.none() | cid,
    max_idle_timeout=v,
    stateless_reset_token=st.none() | token16,
    max_udp_payload_size=st.integers(min_value=1200, max_value=VARINT_MAX),
    initial_max_data=v,
    initial_max_stream_data_bidi_local=v,
    initial_max_stream_data_bidi_remote=v,
    initial_max_stream_data_uni=v,
    initial_max_streams_bidi=st.integers(0, 2**60),
    initial_max_streams_uni=st.integers(0, 2**60),
    ack_delay_exponent=st.integers(0, 20),
    max_ack_delay=st.integers(0, 2**14 - 1),
    disable_active_migration=st.booleans(),
    preferred_address=st.none() | preferred,
    active_connection_id_limit=st.integers(2, VARINT_MAX),
    initial_source_connection_id=st.none() | cid,
    retry_source_connection_id=st.none() | cid,
)


@given(params)
def test_round_trip_from_server(tp: TransportParameters) -> None:
    raw = encode_transport_parameters(tp)
    assert decode_transport_parameters(raw, from_server=True) == tp


@given(params)
def test_round_trip_from_client_without_server_only(tp: TransportParameters) -> None:
    tp.original_destination_connection_id = None
    tp.stateless_reset_token = None
    tp.preferred_address = None
    tp.retry_source_connection_id = None
    raw = encode_transport_parameters(tp)
    assert decode_transport_parameters(raw, from_server=False) == tp


@given(params, st.none() | st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=5),
       st.binary(max_size=8))
def test_peek_version_information_agrees_with_decode(
    tp: TransportParameters, versions: list[int] | None, tail: bytes
) -> None:
    from quicflow.wire.tparams import peek_version_information

    tp.version_information = versions
    raw = encode_transport_parameters(tp)
    assert peek_version_information(raw) == versions
    # never raises, whatever follows or however it is cut
    peek_version_information(raw + tail)
    peek_version_information(raw[: len(raw) // 2])


def test_defaults_are_omitted() -> None:
    assert encode_transport_parameters(TransportParameters()) == b""
    tp = decode_transport_parameters(b"", from_server=True)
    assert tp == TransportParameters()
    assert (tp.max_udp_payload_size, tp.ack_delay_exponent, tp.max_ack_delay,
            tp.active_connection_id_limit) == (65527, 3, 25, 2)


def test_exact_encoding() -> None:
    tp = TransportParameters(
        initial_source_connection_id=b"\x01\x02",
        max_idle_timeout=30000,
        initial_max_data=1 << 20,
        disable_active_migration=True,
    )
    raw = encode_transport_parameters(tp)
    assert raw == (
        b"\x0f\x02\x01\x02"
        + b"\x01\x04\x80\x00\x75\x30"
        + b"\x04\x04\x80\x10\x00\x00"
        + b"\x0c\x00"
    )


def test_preferred_address_layout() -> None:
    pa = PreferredAddress(("192.0.2.1", 443), ("2001:db8::1", 8443), b"\xaa" * 4, b"\x55" * 16)
    raw = encode_transport_parameters(TransportParameters(preferred_address=pa))
    body = (
        bytes([192, 0, 2, 1]) + (443).to_bytes(2, "big")
        + ipaddress.IPv6Address("2001:db8::1").packed + (8443).to_bytes(2, "big")
        + b"\x04" + b"\xaa" * 4 + b"\x55" * 16
    )
    assert raw == b"\x0d" + encode_varint(len(body)) + body
    assert decode_transport_parameters(raw, from_server=True).preferred_address == pa
    only_v6 = bytes(6) + body[6:]
    got = decode_transport_parameters(param(0x0D, only_v6), from_server=True)
    assert got.preferred_address is not None and got.preferred_address.ipv4 is None
    assert got.preferred_address.ipv6 == ("2001:db8::1", 8443)


def test_unknown_and_grease_skipped() -> None:
    raw = param(0x1B + 31 * 5, b"grease!") + int_param(0x04, 99) + param(0x2AB2, b"")
    assert decode_transport_parameters(raw, from_server=False).initial_max_data == 99


GOOD_PA = bytes(24) + b"\x01a" + bytes(16)


@pytest.mark.parametrize(
    "raw",
    [
        int_param(0x04, 1) + int_param(0x04, 1),  # duplicate
        param(0x99, b"") + param(0x99, b""),  # duplicate unknown id
        int_param(0x03, 1199),
        int_param(0x0A, 21),
        int_param(0x0B, 2**14),
        int_param(0x0E, 1),
        int_param(0x0E, 0),
        int_param(0x08, 2**60 + 1),
        int_param(0x09, 2**60 + 1),
        param(0x02, bytes(15)),
        param(0x02, bytes(17)),
        param(0x0C, b"\x00"),
        param(0x0F, bytes(21)),
        param(0x00, bytes(21)),
        param(0x04, b"\x01\x02"),  # trailing byte after the varint
        param(0x04, b""),  # empty integer
        param(0x04, b"\x40"),  # truncated varint inside
        b"\x04\x05\x01",  # length beyond the end
        b"\x04",  # truncated length
        b"\x40",  # truncated id
        param(0x0D, GOOD_PA[:-1]),  # short preferred_address
        param(0x0D, GOOD_PA + b"\x00"),  # long preferred_address
        param(0x0D, bytes(24) + b"\x00" + bytes(16)),  # zero-length cid
        param(0x0D, bytes(24) + b"\x15" + bytes(21 + 16)),  # 21-byte cid
        param(0x0D, bytes(10)),
    ],
)
def test_invalid(raw: bytes) -> None:
    with pytest.raises(TransportParameterError):
        decode_transport_parameters(raw, from_server=True)


@pytest.mark.parametrize("pid", [0x00, 0x02, 0x0D, 0x10])
def test_server_only_from_client(pid: int) -> None:
    value = {0x00: b"abcd", 0x02: bytes(16), 0x0D: GOOD_PA, 0x10: b"abcd"}[pid]
    decode_transport_parameters(param(pid, value), from_server=True)
    with pytest.raises(TransportParameterError):
        decode_transport_parameters(param(pid, value), from_server=False)


def test_error_code_and_hierarchy() -> None:
    with pytest.raises(TransportParameterError) as info:
        decode_transport_parameters(b"\x04", from_server=True)
    assert info.value.error_code == 0x08
    assert isinstance(info.value, WireError)


def test_memoryview_input() -> None:
    raw = int_param(0x05, 7)
    tp = decode_transport_parameters(memoryview(raw), from_server=False)
    assert tp.initial_max_stream_data_bidi_local == 7


@given(st.binary(max_size=120), st.booleans())
def test_arbitrary_bytes_only_transport_parameter_error(raw: bytes, from_server: bool) -> None:
    try:
        decode_transport_parameters(raw, from_server=from_server)
    except TransportParameterError:
        pass


@given(st.lists(st.tuples(st.integers(0, 0x20), st.binary(max_size=45)), max_size=6),
       st.booleans())
def test_structured_garbage_only_transport_parameter_error(
    entries: list[tuple[int, bytes]], from_server: bool
) -> None:
    raw = b"".join(param(pid, value) for pid, value in entries)
    try:
        decode_transport_parameters(raw, from_server=from_server)
    except TransportParameterError:
        pass
