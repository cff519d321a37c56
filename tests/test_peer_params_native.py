"""The C engine's transport-parameter decoder (transport/peer_params.py) against the
Python reference (wire/tparams.decode_transport_parameters).

For any bytes, ``decode_peer_parameters`` gives what the reference gives: equal
``TransportParameters``, or the same ``TransportParameterError``. The C decoder takes the
common case itself (a well-formed block as quicflow, aioquic or ngtcp2 send it: the test
checks it does not hand those back) and returns None for everything else.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.crypto import native
from quicflow.transport import peer_params
from quicflow.transport.peer_params import client_version_information, decode_peer_parameters
from quicflow.wire import TransportParameterError
from quicflow.wire.tparams import (
    DECODE_SPECS,
    SERVER_ONLY_MASK,
    TransportParameters,
    decode_transport_parameters,
    encode_transport_parameters,
    peek_version_information,
)
from quicflow.wire.varint import encode_varint
from tests.support.prereq import require
from tests.test_wire_tparams import params


@pytest.fixture(autouse=True)
def _need_native() -> None:
    require(native.available(), f"native crypto extension not built "
            f"({native.unavailable_reason()})")


def _c(raw: bytes, from_server: bool) -> TransportParameters | None:
    ext = native._ext
    values = ext.decode_tparams(raw, from_server, DECODE_SPECS, SERVER_ONLY_MASK)
    return None if values is None else TransportParameters(**values)


def _reference(raw: bytes, from_server: bool) -> TransportParameters | str:
    try:
        return decode_transport_parameters(raw, from_server=from_server)
    except TransportParameterError as exc:
        return f"error: {exc}"


def _both_agree(raw: bytes, from_server: bool) -> TransportParameters | None:
    expected = _reference(raw, from_server)
    fast = _c(raw, from_server)
    if fast is not None:  # what C decodes, the reference decodes alike
        assert fast == expected
    try:
        got: TransportParameters | str = decode_peer_parameters(raw, from_server=from_server)
    except TransportParameterError as exc:
        got = f"error: {exc}"
    assert got == expected
    if not from_server:  # a server's peek at its client's version_information
        assert client_version_information(raw) == peek_version_information(raw)
    return fast


@given(params, st.none() | st.lists(st.integers(1, 2**32 - 1), min_size=1, max_size=5),
       st.booleans())
def test_well_formed_blocks_decode_in_c_as_in_python(
    tp: TransportParameters, versions: list[int] | None, grease: bool
) -> None:
    tp.version_information = versions
    raw = encode_transport_parameters(tp)
    if grease:  # an unknown (reserved, RFC 9000 §18.1) id is skipped by both
        raw = encode_varint(31 * 7 + 27) + b"\x03abc" + raw
    fast = _both_agree(raw, True)
    assert (fast is None) == (tp.preferred_address is not None)  # (left to Python)
    tp.original_destination_connection_id = None
    tp.stateless_reset_token = None
    tp.preferred_address = None
    tp.retry_source_connection_id = None
    raw = encode_transport_parameters(tp)
    assert _both_agree(raw, False) is not None


@given(params, st.integers(0, 200), st.binary(max_size=6), st.booleans())
def test_damaged_blocks_decode_or_fail_alike(
    tp: TransportParameters, cut: int, junk: bytes, from_server: bool
) -> None:
    raw = encode_transport_parameters(tp)
    _both_agree(raw[:cut], from_server)  # truncated anywhere
    _both_agree(raw[:cut] + junk + raw[cut:], from_server)  # bytes inserted anywhere
    if raw:
        flipped = bytearray(raw)
        flipped[cut % len(raw)] ^= 0xFF
        _both_agree(bytes(flipped), from_server)


@given(st.binary(max_size=120), st.booleans())
def test_arbitrary_bytes_decode_or_fail_alike(raw: bytes, from_server: bool) -> None:
    _both_agree(raw, from_server)


@pytest.mark.parametrize("raw, from_server", [
    (b"\x0f\x00\x0f\x00", True),  # a repeated id
    (encode_varint(1000) + b"\x00" + encode_varint(1000) + b"\x00", True),  # repeated, >= 64
    (b"\x00\x00", False),  # a server-only id from a client
    (b"\x0a\x01\x15", True),  # ack_delay_exponent 21
    (b"\x03\x02\x44\xaf", True),  # max_udp_payload_size 1199
    (b"\x0e\x01\x01", True),  # active_connection_id_limit 1
    (b"\x0b\x02\x40\x01", True),  # a non-minimal but well-formed varint: accepted by both
    (b"\x01\x02\x05", True),  # value shorter than its length
    (b"\x01\x01\x40\x05", True),  # varint longer than the value's length
    (b"\x02\x0f" + bytes(15), True),  # a 15-byte reset token
    (b"\x0c\x01\x00", True),  # disable_active_migration not empty
    (b"\x11\x04\x00\x00\x00\x00", True),  # chosen version 0
    (b"\x11\x06" + bytes(6), True),  # version list not a multiple of 4
    (b"\x11\x08" + bytes(4) + b"\x00\x00\x00\x01", False),  # chosen 0: peeked in Python
    (b"\x11\x04\x00\x00\x00\x01\x11\x04\x00\x00\x00\x02", False),  # twice: the first
    (b"\x11\x04\x00\x00\x00\x01\x01\x05\x01", False),  # then a truncated parameter
    (b"\x0f\x15" + bytes(21), True),  # a 21-byte CID
    (b"\x0f\x05\x01", True),  # truncated value
    (b"\x40", True),  # truncated id
])
def test_each_error_is_the_references(raw: bytes, from_server: bool) -> None:
    _both_agree(raw, from_server)


def test_many_high_ids_are_left_to_python() -> None:
    raw = b"".join(encode_varint(64 + i) + b"\x00" for i in range(70))
    assert _c(raw, True) is None  # more than 64 ids of 64 and up: not tracked in C
    assert _both_agree(raw, True) is None


def test_a_handshake_uses_the_c_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server decodes its client's parameters through peer_params (C), the client
    its server's, and the server reads its client's version_information with it on the
    ClientHello (version negotiation): a real in-memory handshake, counted."""
    from tests.support.memory_pair import MemoryPair

    calls = {"c": 0, "done": 0}
    real = native._ext.decode_tparams  # (what NATIVE_DECODE is unless Python is forced)

    def counting(*args: object) -> object:
        calls["c"] += 1
        out = real(*args)
        calls["done"] += out is not None
        return out

    monkeypatch.setattr(peer_params, "NATIVE_DECODE", counting)
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_complete and bool(pair.server_conns)
             and pair.server_conns[0].handshake_complete)
    assert calls == {"c": 3, "done": 3}
    server = pair.server_conns[0]
    assert server.peer_params is not None and pair.client.peer_params is not None
    assert server.peer_params.initial_source_connection_id == pair.client.initial_scid
    assert pair.client.peer_params.original_destination_connection_id == (
        pair.client.original_dcid)
