"""PacketProtector.open_frames: a received long-header packet opened and its frames
parsed in one C call, against the pure-Python reference (``open`` of the slice, then
``wire.frames.parse_frames``).

For any packet inside any datagram (bytes before and after it, a flipped bit, a header
longer than the C stack buffer), the C call opens what the Python protector opens and
refuses what it refuses, with the same packet number and payload; its frames equal the
reference's, and it leaves to the reference (frames None) exactly the payloads the C
``parse_frames`` leaves to it (malformed ones, other frame types). A connection's
handshake then takes this path: the C call runs once per Initial/Handshake packet.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto import keys
from quicflow.crypto.extension import EXT
from quicflow.crypto.keys import DecryptError, PacketKeys, PacketProtector, derive_packet_keys
from quicflow.crypto.native import available
from quicflow.crypto.suites import CipherSuite, suite_hash_len
from quicflow.transport import frame_parse
from quicflow.wire.errors import FrameEncodingError
from quicflow.wire.frames import Frame, encode_frame, parse_frames
from tests.support.memory_pair import MemoryPair
from tests.support.prereq import require
from tests.test_frame_parse_native import common_frame
from tests.test_wire_frames import any_frame

CLASSES = frame_parse.CLASSES


def pair(keyset: PacketKeys) -> tuple[PacketProtector, PacketProtector]:
    """(native, Python) protectors of the same keys."""
    require(available(), "native crypto extension not built (gcc and libssl-dev needed)")
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(keys, "_EXT", EXT)
        native = PacketProtector(keyset)
        mp.setattr(keys, "_EXT", None)
        python = PacketProtector(keyset)
    finally:
        mp.undo()
    assert native._native and not python._native
    return native, python


def long_header(pn: int, pn_len: int, token: bytes, length: int) -> bytes:
    """An Initial header (v1) with a 2-byte Length field; pn field last."""
    pn_bytes = (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    tok_len = len(token)
    tok = (bytes([tok_len]) if tok_len < 64 else bytes([0x40 | tok_len >> 8, tok_len & 0xFF]))
    return (bytes([0xC0 | (pn_len - 1)]) + b"\x00\x00\x00\x01" + b"\x08" + b"d" * 8
            + b"\x08" + b"s" * 8 + tok + token
            + bytes([0x40 | (length >> 8) & 0x3F, length & 0xFF]) + pn_bytes)


def reference(python: PacketProtector, data: bytes, pos: int, pn_offset: int, end: int,
              largest: int) -> object:
    """What the receive path got before open_frames: open, then parse_frames."""
    try:
        _, payload, pn = python.open(memoryview(data)[pos:end], pn_offset - pos, largest)
    except DecryptError:
        return None
    try:
        frames: object = parse_frames(payload)
    except FrameEncodingError as exc:
        frames = ("FrameEncodingError", exc.frame_type, str(exc))
    return pn, payload, frames


def check(native: PacketProtector, python: PacketProtector, data: bytes, pos: int,
          pn_offset: int, end: int, largest: int) -> object:
    expected = reference(python, data, pos, pn_offset, end, largest)
    got = native.open_frames(data, pos, pn_offset, end, largest, CLASSES)
    slow = python.open_frames(data, pos, pn_offset, end, largest, CLASSES)
    unparsed = native.open_frames(data, pos, pn_offset, end, largest, None)
    if expected is None:
        assert got is None and slow is None and unparsed is None
        return None
    assert isinstance(expected, tuple) and got is not None and slow is not None
    pn, payload, frames = expected
    assert got[:2] == slow[:2] == (pn, payload)
    assert slow[2] is None and unparsed == (pn, payload, None)
    if got[2] is None:  # left to the reference: exactly what C parse_frames leaves
        assert EXT.parse_frames(payload, CLASSES) is None
    else:
        assert got[2] == frames
        assert [type(f) for f in got[2]] == [type(f) for f in frames]  # type: ignore[attr-defined]
    return expected


def _enc(frames: list[Frame]) -> bytes:
    out = bytearray()
    for frame in frames:
        encode_frame(frame, out)
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(suite=st.sampled_from(list(CipherSuite)), v2=st.booleans(),
       frames=st.lists(common_frame | any_frame, max_size=6), raw=st.binary(max_size=40),
       use_raw=st.booleans(), pn=st.integers(0, (1 << 62) - 1), pn_len=st.integers(1, 4),
       largest=st.integers(-1, (1 << 62) - 1), token=st.binary(max_size=300),
       before=st.binary(max_size=30), after=st.binary(max_size=30),
       flip=st.integers(-1, 1500), cut=st.sampled_from([0, 0, 0, 2]))
def test_open_frames_is_open_then_parse(
    suite: CipherSuite, v2: bool, frames: list[Frame], raw: bytes, use_raw: bool, pn: int,
    pn_len: int, largest: int, token: bytes, before: bytes, after: bytes, flip: int, cut: int,
) -> None:
    keyset = derive_packet_keys(suite, os.urandom(suite_hash_len(suite)),
                                keys.QUIC_V2 if v2 else keys.QUIC_V1)
    native, python = pair(keyset)
    payload = raw if use_raw else _enc(frames)
    payload += bytes(max(0, 20 - len(payload)))  # room for the header-protection sample
    hdr = long_header(pn, pn_len, token, pn_len + len(payload) + 16)
    packet = bytearray(python.seal(hdr, payload, pn))
    if 0 <= flip < len(packet):
        packet[flip] ^= 0x04
    data = before + bytes(packet) + after
    pos = len(before)
    pn_offset = pos + len(hdr) - pn_len
    end = pos + len(packet) - cut  # (cut: a Length that ends early)
    # largest: any, or one that decodes pn back (the packet number the sender meant)
    for big in (largest, pn - 1 if pn > 0 else -1):
        check(native, python, data, pos, pn_offset, end, big)


def test_open_frames_of_a_handshake_packet() -> None:
    """A real-sized Initial (CRYPTO then PADDING) with a 300-byte token: the header
    outgrows the C stack buffer; an end past the datagram is clamped like a slice."""
    keyset = derive_packet_keys(CipherSuite.AES_128_GCM_SHA256, bytes(32))
    native, python = pair(keyset)
    payload = bytes([0x06, 0x00, 0x40, 0x40]) + bytes(range(64)) + bytes(1000)
    hdr = long_header(7, 2, b"t" * 300, 2 + len(payload) + 16)
    data = b"\xff" * 5 + python.seal(hdr, payload, 7)
    got = check(native, python, data, 5, 5 + len(hdr) - 2, len(data) + 50, 3)
    assert got is not None
    pn, plain, frames = got  # type: ignore[misc]
    assert pn == 7 and plain == payload
    assert [type(f).__name__ for f in frames] == ["Crypto", "Padding"]
    # the same packet opened with the wrong keys, or cut short: None from both
    other = pair(derive_packet_keys(CipherSuite.AES_128_GCM_SHA256, bytes([1]) * 32))[0]
    assert other.open_frames(data, 5, 5 + len(hdr) - 2, len(data), 3, CLASSES) is None
    assert check(native, python, data, 5, 5 + len(hdr) - 2, 5 + len(hdr) + 10, 3) is None


def test_open_frames_refuses_bad_arguments() -> None:
    native, _ = pair(derive_packet_keys(CipherSuite.AES_128_GCM_SHA256, bytes(32)))
    with pytest.raises(TypeError):
        native.open_frames(b"x" * 64, 0, 20, 64, 0, (object,))
    with pytest.raises(ValueError):
        native.open_frames(b"x" * 64, -1, 20, 64, 0, CLASSES)
    with pytest.raises(ValueError):
        native.open_frames(b"x" * 64, 0, 20, 64, 1 << 62, CLASSES)


def test_the_receive_path_opens_long_headers_in_one_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A handshake opens each Initial/Handshake packet it receives with open_frames, and
    with the extension its frames come parsed from the same call."""
    require(available(), "native crypto extension not built (gcc and libssl-dev needed)")
    calls: list[bool] = []
    real = PacketProtector.open_frames

    def spy(self: PacketProtector, *args: object) -> object:
        result = real(self, *args)  # type: ignore[arg-type]
        calls.append(result is not None and result[2] is not None)
        return result

    monkeypatch.setattr(PacketProtector, "open_frames", spy)
    pair_ = MemoryPair()
    pair_.run(lambda: pair_.client.handshake_confirmed)
    server = pair_.server_conns[0]
    assert server.handshake_complete and server.counters.packets_dropped == 0
    assert len(calls) >= 4  # both sides' Initial and Handshake packets
    if keys._EXT is not None:
        assert all(calls)
