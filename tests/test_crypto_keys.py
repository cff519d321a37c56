"""Key schedule, HKDF, suites, packet-number recovery, protector round trips."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto import (
    CipherSuite,
    DecryptError,
    Epoch,
    PacketProtector,
    derive_packet_keys,
    hkdf_expand,
    hkdf_expand_label,
    hkdf_extract,
    next_generation_secret,
    suite_hash,
    suite_hash_len,
    suite_key_len,
)
from quicflow.crypto.aead import decode_packet_number, make_aead
from quicflow.crypto.header_protection import make_header_protection


def test_epoch_values() -> None:
    assert [int(e) for e in Epoch] == [0, 1, 2, 3]
    assert Epoch.ONE_RTT.name == "ONE_RTT"


def test_suite_parameters() -> None:
    assert CipherSuite(0x1301) is CipherSuite.AES_128_GCM_SHA256
    assert [suite_key_len(s) for s in CipherSuite] == [16, 32, 32]
    assert [suite_hash(s).name for s in CipherSuite] == ["sha256", "sha384", "sha256"]
    assert [suite_hash_len(s) for s in CipherSuite] == [32, 48, 32]
    with pytest.raises(ValueError):
        suite_key_len(0x1304)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        suite_hash(0x1304)  # type: ignore[arg-type]


def test_hkdf_rfc5869_case1() -> None:
    ikm = bytes([0x0B]) * 22
    salt = bytes(range(13))
    info = bytes(range(0xF0, 0xFA))
    prk = hkdf_extract(hashes.SHA256(), salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    okm = hkdf_expand(hashes.SHA256(), prk, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_rfc5869_case3_empty_salt() -> None:
    prk = hkdf_extract(hashes.SHA256(), b"", bytes([0x0B]) * 22)
    assert prk.hex() == "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"
    okm = hkdf_expand(hashes.SHA256(), prk, b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_hkdf_expand_label_limits() -> None:
    with pytest.raises(ValueError):
        hkdf_expand(hashes.SHA256(), bytes(32), b"", 255 * 32 + 1)
    with pytest.raises(ValueError):
        hkdf_expand_label(hashes.SHA256(), bytes(32), b"x" * 250, b"", 16)
    out = hkdf_expand_label(hashes.SHA384(), bytes(48), b"quic key", b"", 32)
    assert len(out) == 32


def test_key_lengths_per_suite() -> None:
    for suite in CipherSuite:
        secret = bytes(suite_hash_len(suite))
        keys = derive_packet_keys(suite, secret)
        assert len(keys.key) == suite_key_len(suite) == len(keys.hp_key)
        assert len(keys.iv) == 12
        assert len(next_generation_secret(suite, secret)) == suite_hash_len(suite)


def test_bad_key_lengths_rejected() -> None:
    with pytest.raises(ValueError):
        make_aead(CipherSuite.AES_128_GCM_SHA256, bytes(32))
    with pytest.raises(ValueError):
        make_header_protection(CipherSuite.CHACHA20_POLY1305_SHA256, bytes(16))


def test_decode_packet_number_rfc9000_example() -> None:
    assert decode_packet_number(0x9B32, 16, 0xA82F30EA) == 0xA82F9B32


@given(
    largest=st.integers(min_value=-1, max_value=2**40),
    delta=st.integers(min_value=1, max_value=2**20),
    nbytes=st.integers(min_value=1, max_value=4),
)
def test_decode_packet_number_round_trip(largest: int, delta: int, nbytes: int) -> None:
    bits = 8 * nbytes
    # The sender picks a length whose window covers twice the distance (RFC 9000 A.2).
    if delta * 2 >= 1 << bits:
        return
    pn = largest + delta
    assert decode_packet_number(pn & ((1 << bits) - 1), bits, largest) == pn


def test_hp_mask_rejects_bad_sample() -> None:
    prot = PacketProtector(derive_packet_keys(CipherSuite.AES_128_GCM_SHA256, bytes(32)))
    with pytest.raises(ValueError):
        prot.hp_mask(bytes(15))


def test_seal_rejects_unsampleable_packet() -> None:
    prot = PacketProtector(derive_packet_keys(CipherSuite.AES_128_GCM_SHA256, bytes(32)))
    with pytest.raises(ValueError):
        prot.seal(bytes([0x40, 0xAA, 0x00]), b"", 0)


def test_next_generation_protector_keeps_hp() -> None:
    prot = PacketProtector(derive_packet_keys(CipherSuite.AES_256_GCM_SHA384, bytes(48)))
    nxt = prot.next_generation()
    assert nxt.keys.hp_key == prot.keys.hp_key and nxt.keys.key != prot.keys.key
    sample = bytes(range(16))
    assert nxt.hp_mask(sample) == prot.hp_mask(sample)
    packet = nxt.seal(bytes([0x44, 0x01, 0x07]), b"hello world", 7)
    with pytest.raises(DecryptError):
        prot.open(packet, 2, 6)
    assert nxt.open(packet, 2, 6) == (bytes([0x44, 0x01, 0x07]), b"hello world", 7)


@settings(max_examples=60, deadline=None)
@given(
    suite=st.sampled_from(list(CipherSuite)),
    long_header=st.booleans(),
    pn=st.integers(min_value=0, max_value=2**32),
    pn_len=st.integers(min_value=1, max_value=4),
    payload=st.binary(min_size=3, max_size=300),
    cid=st.binary(min_size=0, max_size=20),
)
def test_protector_round_trip(
    suite: CipherSuite, long_header: bool, pn: int, pn_len: int, payload: bytes, cid: bytes
) -> None:
    secret = bytes(range(suite_hash_len(suite)))
    prot = PacketProtector(derive_packet_keys(suite, secret))
    truncated = (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    if long_header:
        # Handshake packet: first byte, version, DCID, empty SCID, 2-byte Length.
        prefix = bytes([0xE0 | (pn_len - 1)]) + b"\x00\x00\x00\x01" + bytes([len(cid)]) + cid
        prefix += b"\x00" + (0x4000 | (pn_len + len(payload) + 16)).to_bytes(2, "big")
    else:
        prefix = bytes([0x40 | (pn_len - 1)]) + cid
    header = prefix + truncated
    packet = prot.seal(header, payload, pn)
    assert len(packet) == len(header) + len(payload) + 16
    assert packet[len(header) :] != payload
    out = prot.open(packet, len(prefix), pn - 1)
    assert out == (header, payload, pn)
