"""PacketProtector on the C KeyContext (one call per packet) seals the same bytes as the
pure-Python reference (``QUICFLOW_ENGINE=python``), opens what either sealed, and
refuses the same packets (tampered, too short, unsampleable) with the same errors."""

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
from tests.support.prereq import require

SUITES = list(CipherSuite)


def pair(keyset: PacketKeys, monkeypatch: pytest.MonkeyPatch) -> tuple[PacketProtector,
                                                                       PacketProtector]:
    """(native, Python) protectors of the same keys."""
    require(available(), "native crypto extension not built (gcc and libssl-dev needed)")
    with monkeypatch.context() as m:
        m.setattr(keys, "_EXT", EXT)  # (whatever QUICFLOW_ENGINE says for this run)
        native = PacketProtector(keyset)
    with monkeypatch.context() as m:
        m.setattr(keys, "_EXT", None)
        python = PacketProtector(keyset)
    assert native._native and not python._native
    return native, python


def header(long: bool, pn: int, pn_len: int, cid: bytes) -> bytes:
    first = (0xC0 if long else 0x40) | (pn_len - 1)
    pn_bytes = (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    if long:
        return bytes([first]) + b"\x00\x00\x00\x01" + bytes([len(cid)]) + cid + b"\x00" + \
            b"\x40\x40" + pn_bytes
    return bytes([first]) + cid + pn_bytes


def opened(prot: PacketProtector, packet: bytes, pn_offset: int, largest: int) -> object:
    try:
        return prot.open(packet, pn_offset, largest)
    except DecryptError as exc:
        return ("DecryptError", str(exc))


@settings(max_examples=150, deadline=None)
@given(suite=st.sampled_from(SUITES), long=st.booleans(), pn=st.integers(0, (1 << 62) - 1),
       pn_len=st.integers(1, 4), payload=st.binary(min_size=0, max_size=64),
       cid=st.binary(max_size=20), flip=st.integers(-1, 200), v2=st.booleans())
def test_native_protector_is_bit_identical(
    suite: CipherSuite, long: bool, pn: int, pn_len: int, payload: bytes, cid: bytes,
    flip: int, v2: bool
) -> None:
    mp = pytest.MonkeyPatch()
    try:
        keyset = derive_packet_keys(suite, os.urandom(suite_hash_len(suite)),
                                    keys.QUIC_V2 if v2 else keys.QUIC_V1)
        native, python = pair(keyset, mp)
        hdr = header(long, pn, pn_len, cid)
        results = []
        for prot in (native, python):
            try:
                results.append(prot.seal(hdr, payload, pn))
            except ValueError as exc:
                results.append(("ValueError", str(exc)))
        assert results[0] == results[1]
        if isinstance(results[0], tuple):
            assert len(hdr) + len(payload) + 16 < len(hdr) - pn_len + 4 + 16
            return
        packet = bytearray(results[0])
        if 0 <= flip < len(packet):
            packet[flip] ^= 0x01
        pn_offset = len(hdr) - pn_len
        largest = max(pn - 1, -1)
        a = opened(native, bytes(packet), pn_offset, largest)
        b = opened(python, bytes(packet), pn_offset, largest)
        assert a == b
        if not 0 <= flip < len(packet):
            assert a == (hdr, payload, pn)
        else:
            assert isinstance(a, tuple) and a[0] == "DecryptError"
    finally:
        mp.undo()


@pytest.mark.parametrize("suite", SUITES)
def test_short_and_truncated_packets_fail_alike(suite: CipherSuite,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    keyset = derive_packet_keys(suite, os.urandom(suite_hash_len(suite)))
    native, python = pair(keyset, monkeypatch)
    hdr = header(True, 5, 2, b"abcdefgh")
    sealed = native.seal(hdr, bytes(30), 5)
    pn_offset = len(hdr) - 2
    for cut in (0, 1, pn_offset + 4 + 15, pn_offset + 4 + 16, len(hdr) + 15, len(sealed) - 1):
        assert opened(native, sealed[:cut], pn_offset, 4) == \
            opened(python, sealed[:cut], pn_offset, 4)
        assert isinstance(opened(native, sealed[:cut], pn_offset, 4), tuple)
    assert opened(native, sealed, 0, 4) == opened(python, sealed, 0, 4) == (
        "DecryptError", "packet too short to remove header protection")
    assert opened(native, sealed, pn_offset, 4) == (hdr, bytes(30), 5)
    with pytest.raises(ValueError, match="too short"):
        native.seal(hdr, b"", 5)
    with pytest.raises(ValueError, match="too short"):
        python.seal(hdr, b"", 5)


def test_a_bytearray_payload_seals_as_its_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The send path hands its payload bytearray to seal without copying it: both the C
    and the Python protector seal the bytes it holds, and leave it as it was."""
    suite = CipherSuite.AES_128_GCM_SHA256
    keyset = derive_packet_keys(suite, bytes(range(suite_hash_len(suite))))
    native, python = pair(keyset, monkeypatch)
    hdr = header(True, 7, 2, b"\x01" * 8)
    data = bytes(range(200))
    for prot in (native, python):
        payload = bytearray(data)
        assert prot.seal(hdr, payload, 7) == prot.seal(hdr, data, 7) == python.seal(
            hdr, data, 7)
        assert payload == data
