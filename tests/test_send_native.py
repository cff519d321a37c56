"""The send path's C calls against their pure-Python references.

``PacketProtector.seal_long``: a long-header packet's header built, its payload copied
and the packet sealed in one C call, straight into the datagram buffer (reference:
``build_long_header`` then ``seal``). For any packet type, version, CIDs, token, payload
and packet number (valid or not) it appends the reference's bytes and returns their
count, or raises the reference's error with the buffer untouched; the common case (what a
handshake sends) is done in C, one call per Initial/Handshake packet.

``push_short_packet``: a 1-RTT packet's plaintext (header, payload, tag room) appended
for the engine's seal in one C call (reference: ``wire.packet.push_short_packet``): the
same bytes and header length, or None with the buffer untouched where the reference
decides.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto import keys
from quicflow.crypto.extension import EXT
from quicflow.crypto.keys import PacketKeys, PacketProtector, derive_packet_keys
from quicflow.crypto.suites import CipherSuite, suite_hash_len
from quicflow.transport import send
from quicflow.wire.packet import (
    HANDSHAKE,
    INITIAL,
    QUIC_V1,
    QUIC_V2,
    ZERO_RTT,
    build_long_header,
    parse_header,
    push_short_packet,
)
from tests.support.memory_pair import MemoryPair
from tests.test_open_frames_native import pair

SUITES = [CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384,
          CipherSuite.CHACHA20_POLY1305_SHA256]


def keyset(suite: CipherSuite, seed: int, version: int = QUIC_V1) -> PacketKeys:
    secret = bytes((seed + i) & 0xFF for i in range(suite_hash_len(suite)))
    return derive_packet_keys(suite, secret, version if version == QUIC_V2 else QUIC_V1)


def reference(python: PacketProtector, prefix: bytes, args: tuple[Any, ...]) -> object:
    """What _build_datagram did before: the header, then ``seal``, appended."""
    packet_type, version, dcid, scid, token, payload, pn, pn_len = args
    buf = bytearray(prefix)
    try:
        header = build_long_header(packet_type, version, dcid, scid, token,
                                   pn_len + len(payload) + 16, pn, pn_len)
        buf += python.seal(header, payload, pn)
    except Exception as exc:  # noqa: BLE001 - the reference's error is the expectation
        return type(exc), str(exc), bytes(prefix)
    return bytes(buf)


def run(protector: PacketProtector, prefix: bytes, args: tuple[Any, ...]) -> object:
    buf = bytearray(prefix)
    try:
        size = protector.seal_long(buf, *args)
    except Exception as exc:  # noqa: BLE001 - compared with the reference's
        return type(exc), str(exc), bytes(buf)
    assert size == len(buf) - len(prefix)
    return bytes(buf)


def c_call(native: PacketProtector, prefix: bytes, args: tuple[Any, ...]) -> object:
    """The C method alone: None (left to the reference, buf untouched) or the bytes."""
    buf = bytearray(prefix)
    size = native._hp.seal_long(buf, *args)
    if size is None:
        assert buf == prefix
        return None
    assert size == len(buf) - len(prefix)
    return bytes(buf)


lengths = st.one_of(st.integers(0, 21), st.sampled_from([8, 20]))
tokens = st.one_of(st.binary(max_size=80), st.binary(min_size=16380, max_size=16400),
                   st.just(b""))


@settings(max_examples=400, deadline=None)
@given(
    suite=st.sampled_from(SUITES),
    seed=st.integers(0, 255),
    packet_type=st.one_of(st.sampled_from([INITIAL, ZERO_RTT, HANDSHAKE]),
                          st.integers(-2, 5)),
    version=st.one_of(st.sampled_from([QUIC_V1, QUIC_V2]), st.integers(0, 2**32 - 1),
                      st.sampled_from([-1, 2**32, 2**64])),
    dcid_len=lengths, scid_len=lengths, token=tokens,
    payload=st.one_of(st.binary(max_size=60), st.binary(min_size=1000, max_size=1300),
                      st.binary(min_size=16360, max_size=16370)),
    pn=st.one_of(st.integers(0, 300), st.integers(0, 2**62 + 5), st.integers(-3, -1)),
    pn_len=st.integers(0, 5),
    prefix=st.binary(max_size=40),
    as_bytearray=st.booleans(),
)
def test_seal_long_matches_reference(suite: CipherSuite, seed: int, packet_type: int,
                                     version: int, dcid_len: int, scid_len: int,
                                     token: bytes, payload: bytes, pn: int, pn_len: int,
                                     prefix: bytes, as_bytearray: bool) -> None:
    native, python = pair(keyset(suite, seed))
    body = bytearray(payload) if as_bytearray else payload
    args = (packet_type, version, b"d" * dcid_len, b"s" * scid_len, token, body, pn, pn_len)
    expected = reference(python, prefix, args)
    assert run(native, prefix, args) == expected
    assert run(python, prefix, args) == expected
    got = c_call(native, prefix, args)
    assert got is None or got == expected


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
@pytest.mark.parametrize("packet_type", [INITIAL, ZERO_RTT, HANDSHAKE])
def test_c_builds_what_a_handshake_sends(suite: CipherSuite, version: int,
                                         packet_type: int) -> None:
    """The packets a connection sends are built by C (not left to the reference), and
    the receiver's parser and the Python protector read them back."""
    native, python = pair(keyset(suite, 7, version))
    for token, payload, pn, pn_len in ((b"", bytes(3), 0, 1), (b"t" * 70, bytes(1100), 300, 2),
                                       (b"", b"\x01" * 40, 2**30, 4)):
        args = (packet_type, version, b"D" * 8, b"S" * 20, token, payload, pn, pn_len)
        got = c_call(native, b"xy", args)
        assert got is not None and got == reference(python, b"xy", args)
        assert isinstance(got, bytes)
        header = parse_header(got, 2, 0)
        assert header.packet_type == packet_type and header.version == version
        assert header.dcid == b"D" * 8 and header.scid == b"S" * 20
        assert header.token == (token if packet_type == INITIAL else b"")
        assert header.end == len(got)
        _, opened, opened_pn = python.open(memoryview(got)[2:], header.pn_offset - 2,
                                           pn - 1)
        assert opened == payload and opened_pn == pn


def test_payload_being_the_buffer_is_left_to_the_reference() -> None:
    native, python = pair(keyset(CipherSuite.AES_128_GCM_SHA256, 1))
    buf = bytearray(b"p" * 30)
    args = (HANDSHAKE, QUIC_V1, b"d" * 8, b"s" * 8, b"", buf, 5, 1)
    assert native._hp.seal_long(buf, *args) is None and buf == b"p" * 30
    expected = reference(python, b"p" * 30, (HANDSHAKE, QUIC_V1, b"d" * 8, b"s" * 8, b"",
                                             b"p" * 30, 5, 1))
    size = native.seal_long(buf, *args)
    assert bytes(buf) == expected and size == len(buf) - 30


def test_handshake_seals_its_long_header_packets_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handshake over the in-memory pair sends its Initial and Handshake packets
    through seal_long (each one C call), and completes."""
    calls: list[tuple[int, bool]] = []
    original = PacketProtector.seal_long

    def counting(self: PacketProtector, *args: Any) -> int:
        in_c = self._native and self._hp.seal_long(bytearray(), *args[1:]) is not None
        calls.append((args[1], in_c))
        size: int = original(self, *args)
        return size

    monkeypatch.setattr(PacketProtector, "seal_long", counting)
    mp = MemoryPair()
    mp.run(lambda: mp.client.handshake_confirmed)
    server = mp.server_conns[0]
    assert server.handshake_complete and server.counters.packets_dropped == 0
    assert {t for t, _ in calls} == {INITIAL, HANDSHAKE}
    assert len(calls) >= 4  # both sides' Initial and Handshake packets
    if keys._EXT is not None:
        assert all(in_c for _, in_c in calls)


def push_c() -> Any:
    fn = getattr(EXT, "push_short_packet", None) if EXT is not None else None
    if fn is None:
        pair(keyset(CipherSuite.AES_128_GCM_SHA256, 0))  # (fails: the extension is needed)
    return fn


@settings(max_examples=300, deadline=None)
@given(
    dcid=st.binary(max_size=21), pn=st.one_of(st.integers(0, 2**32), st.integers(-3, 2**62 + 3)),
    pn_len=st.integers(-1, 6), payload=st.binary(max_size=1500), prefix=st.binary(max_size=40),
    as_bytearray=st.booleans(),
)
def test_push_short_packet_matches_reference(dcid: bytes, pn: int, pn_len: int,
                                             payload: bytes, prefix: bytes,
                                             as_bytearray: bool) -> None:
    fn = push_c()
    body = bytearray(payload) if as_bytearray else payload
    expected = bytearray(prefix)
    try:
        hlen: object = push_short_packet(expected, dcid, pn, pn_len, body)
    except Exception as exc:  # noqa: BLE001 - the reference's error: C must leave it
        hlen = (type(exc), str(exc))
    got = bytearray(prefix)
    result = fn(got, dcid, pn, pn_len, body)
    if result is None:
        assert got == prefix
    else:
        assert result == hlen and got == expected
        assert got[len(prefix):] == (bytes([0x40 | (pn_len - 1)]) + dcid
                                     + (pn % (1 << 8 * pn_len)).to_bytes(pn_len, "big")
                                     + payload + bytes(16))
    if 1 <= pn_len <= 4 and 0 <= pn < 2**62:
        assert result is not None  # the send path's case is done in C


def test_push_short_packet_leaves_aliasing_and_odd_arguments_to_the_reference() -> None:
    fn = push_c()
    buf = bytearray(b"abc")
    assert fn(buf, b"d", 1, 1, buf) is None and buf == b"abc"
    assert fn(buf, buf, 1, 1, b"x") is None and buf == b"abc"
    assert fn(b"abc", b"d", 1, 1, b"x") is None
    assert fn(buf, "not bytes", 1, 1, b"x") is None and buf == b"abc"
    assert fn(buf, b"d", True, 1, b"x") is None and buf == b"abc"
    with pytest.raises(BufferError):  # what the reference does with the first one
        push_short_packet(buf, b"d", 1, 1, buf)


def test_the_send_path_builds_short_packets_in_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection's 1-RTT packets go through the C call (not the reference) and the
    transfer completes."""
    real = send._PUSH_SHORT_C
    if real is None:  # not built, or QUICFLOW_ENGINE=python: the reference builds them
        mp = MemoryPair()
        mp.run(lambda: mp.client.handshake_confirmed)
        assert mp.server_conns[0].handshake_confirmed
        return
    calls: list[object] = []

    def spy(*args: Any) -> object:
        result = real(*args)
        calls.append(result)
        return result

    def reference_not_used(*args: Any) -> int:
        raise AssertionError("the reference ran for a packet C builds")

    monkeypatch.setattr(send, "_PUSH_SHORT_C", spy)
    monkeypatch.setattr(send, "push_short_packet", reference_not_used)
    mp = MemoryPair()
    mp.run(lambda: mp.client.handshake_confirmed)
    assert mp.server_conns[0].handshake_confirmed
    assert calls and all(isinstance(c, int) for c in calls)
