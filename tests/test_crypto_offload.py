"""SoftwareOffloadEngine: batch seal/open, bit-identity with PacketProtector, key update."""

from __future__ import annotations

import os
from typing import Any

import pytest

from quicflow.crypto import (
    CipherSuite,
    OpenResult,
    PacketKeys,
    PacketProtector,
    SoftwareOffloadEngine,
    derive_packet_keys,
    next_packet_keys,
)

SUITES = list(CipherSuite)
CID = bytes.fromhex("0102030405060708")
SEGMENT = 1200


def _secret(suite: CipherSuite) -> bytes:
    return bytes(range(48 if suite == CipherSuite.AES_256_GCM_SHA384 else 32))


def _engine(native: bool) -> Any:
    """The C engine (built by make venv) or the Python one."""
    if native:
        from quicflow.crypto.native import NativeOffloadEngine, available

        assert available(), "the native extension is built by make venv"
        return NativeOffloadEngine()
    return SoftwareOffloadEngine()


def _header(cid: bytes, pn: int, pn_len: int, key_phase: int = 0) -> bytes:
    first = 0x40 | (key_phase << 2) | (pn_len - 1)
    return bytes((first,)) + cid + (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")


def _batch(
    cid: bytes, pns: list[int], sizes: list[int], pn_len: int = 2
) -> tuple[bytearray, list[tuple[int, int, int, int, bytes]], list[tuple[bytes, bytes, int]]]:
    """A segmentation-shaped buffer: fixed segments, the last one shorter."""
    buf = bytearray(SEGMENT * len(pns))
    descs: list[tuple[int, int, int, int, bytes]] = []
    plain: list[tuple[bytes, bytes, int]] = []
    for i, (pn, size) in enumerate(zip(pns, sizes, strict=True)):
        offset = i * SEGMENT
        header = _header(cid, pn, pn_len)
        payload = os.urandom(size)
        buf[offset : offset + len(header)] = header
        buf[offset + len(header) : offset + len(header) + size] = payload
        descs.append((offset, len(header), size, pn, cid))
        plain.append((header, payload, pn))
    return buf, descs, plain


def _open_descs(descs: list[tuple[int, int, int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    return [(off, hl + pl + 16, cid) for off, hl, pl, _pn, cid in descs]


def _pair(suite: CipherSuite) -> tuple[SoftwareOffloadEngine, SoftwareOffloadEngine]:
    sender, receiver = SoftwareOffloadEngine(), SoftwareOffloadEngine()
    sender.install(CID, suite, _secret(suite), opener=False)
    receiver.install(CID, suite, _secret(suite), opener=True)
    return sender, receiver


SIZES = [1173, 1173, 3, 700, 2, 1173, 100]  # 2 + pn_len 2 >= 4 bytes before the sample


@pytest.mark.parametrize("suite", SUITES)
def test_batch_round_trip(suite: CipherSuite) -> None:
    sender, receiver = _pair(suite)
    pns = list(range(len(SIZES)))
    buf, descs, plain = _batch(CID, pns, SIZES)
    sender.seal(buf, descs)
    assert sender.sealed == len(SIZES)
    for (off, hl, _pl, _pn, _cid), (_h, payload, _) in zip(descs, plain, strict=True):
        assert bytes(buf[off + hl : off + hl + len(payload)]) != payload
    results = receiver.open(bytes(buf), _open_descs(descs))
    assert results == [OpenResult(pn, h, p, 0, False) for h, p, pn in plain]
    assert (receiver.opened, receiver.open_failures) == (len(SIZES), 0)
    assert receiver.key_state(CID, opener=True).largest_pn == len(SIZES) - 1


@pytest.mark.parametrize("suite", SUITES)
def test_seal_is_bit_identical_to_packet_protector(suite: CipherSuite) -> None:
    sender, _ = _pair(suite)
    protector = PacketProtector(derive_packet_keys(suite, _secret(suite)))
    buf, descs, plain = _batch(CID, [7, 8, 300, 70000], [1171, 20, 500, 1000], pn_len=4)
    sender.seal(buf, descs)
    for (off, hl, pl, _pn, _cid), (header, payload, pn) in zip(descs, plain, strict=True):
        assert bytes(buf[off : off + hl + pl + 16]) == protector.seal(header, payload, pn)


@pytest.mark.parametrize("suite", SUITES)
def test_open_matches_packet_protector(suite: CipherSuite) -> None:
    protector = PacketProtector(derive_packet_keys(suite, _secret(suite)))
    _, receiver = _pair(suite)
    packets = [protector.seal(_header(CID, pn, 1), bytes([pn]) * 40, pn) for pn in range(5)]
    datagram = b"".join(packets)
    descs = [(i * len(packets[0]), len(packets[0]), CID) for i in range(5)]
    results = receiver.open(datagram, descs)
    assert [r.pn if r else None for r in results] == [0, 1, 2, 3, 4]
    assert all(r is not None and r.payload == bytes([r.pn]) * 40 for r in results)


def _unmasked_phase(receiver: SoftwareOffloadEngine, buf: bytes, off: int, n: int) -> int | None:
    res = receiver.open(buf, [(off, n, CID)])[0]
    return None if res is None else res.key_phase


@pytest.mark.parametrize("suite", SUITES)
def test_key_update_through_the_engine(suite: CipherSuite) -> None:
    sender, receiver = _pair(suite)
    # Phase 0 packets; one of them (pn 2) is delayed past the key update.
    buf0, descs0, plain0 = _batch(CID, [0, 1, 2], [50, 50, 50])
    sender.seal(buf0, descs0)
    first = receiver.open(bytes(buf0), _open_descs(descs0)[:2])
    assert [r.key_phase for r in first if r] == [0, 0]

    sender.update(CID, opener=False)
    assert sender.key_state(CID, opener=False).key_phase == 1
    buf1, descs1, plain1 = _batch(CID, [3, 4, 5], [60, 60, 60])
    sender.seal(buf1, descs1)
    # Bit-identical with a protector on the next generation keys and the phase bit set.
    keys1: PacketKeys = next_packet_keys(derive_packet_keys(suite, _secret(suite)))
    prot1 = PacketProtector(keys1)
    off, hl, pl, pn, _ = descs1[0]
    expect = prot1.seal(_header(CID, pn, 2, key_phase=1), plain1[0][1], pn)
    assert bytes(buf1[off : off + hl + pl + 16]) == expect

    results = receiver.open(bytes(buf1), _open_descs(descs1))
    assert [(r.pn, r.key_phase, r.phase_changed) for r in results if r] == [
        (3, 1, True),
        (4, 1, False),
        (5, 1, False),
    ]
    assert [r.payload for r in results if r] == [p for _, p, _ in plain1]
    assert results[0] is not None and results[0].header[0] & 0x04

    # The reordered phase-0 packet still opens with the previous keys.
    late = receiver.open(bytes(buf0), _open_descs(descs0)[2:])[0]
    assert late is not None
    assert (late.pn, late.key_phase, late.phase_changed) == (2, 0, False)
    assert late.payload == plain0[2][1]
    assert receiver.key_state(CID, opener=True).key_phase == 1

    # A second update goes back to phase bit 0 with third-generation keys.
    sender.update(CID, opener=False)
    buf2, descs2, _ = _batch(CID, [6, 7], [40, 40])
    sender.seal(buf2, descs2)
    res2 = receiver.open(bytes(buf2), _open_descs(descs2))
    assert [(r.pn, r.key_phase, r.phase_changed) for r in res2 if r] == [
        (6, 0, True),
        (7, 0, False),
    ]
    assert receiver.open_failures == 0


def test_explicit_opener_update() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    sender, receiver = _pair(suite)
    sender.update(CID, opener=False)
    receiver.update(CID, opener=True)
    buf, descs, _ = _batch(CID, [0], [30])
    sender.seal(buf, descs)
    res = receiver.open(bytes(buf), _open_descs(descs))[0]
    assert res is not None and (res.key_phase, res.phase_changed) == (1, False)


def test_unknown_cid_open_returns_none_and_counts() -> None:
    sender, receiver = _pair(CipherSuite.AES_128_GCM_SHA256)
    buf, descs, _ = _batch(CID, [0, 1], [30, 30])
    sender.seal(buf, descs)
    other = bytes(8)
    res = receiver.open(bytes(buf), [(0, 57, other), (SEGMENT, 57, CID)])
    assert res[0] is None and res[1] is not None and res[1].pn == 1
    assert (receiver.opened, receiver.open_failures) == (1, 1)


def test_unknown_cid_seal_raises_key_error() -> None:
    engine = SoftwareOffloadEngine()
    buf, descs, _ = _batch(CID, [0], [30])
    with pytest.raises(KeyError):
        engine.seal(buf, descs)


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("where", [0, 3, 9, 12, 40, -1])
def test_tampered_packet_returns_none(suite: CipherSuite, where: int) -> None:
    sender, receiver = _pair(suite)
    buf, descs, _ = _batch(CID, [0], [40])
    sender.seal(buf, descs)
    packet = bytearray(buf[: 11 + 40 + 16])
    packet[where] ^= 0x10 if where == 0 else 0x01
    assert receiver.open(bytes(packet), [(0, len(packet), CID)]) == [None]
    assert receiver.open_failures == 1
    state = receiver.key_state(CID, opener=True)
    assert (state.largest_pn, state.key_phase) == (-1, 0)


def test_short_or_long_header_or_overrun_is_a_failure() -> None:
    sender, receiver = _pair(CipherSuite.AES_128_GCM_SHA256)
    buf, descs, _ = _batch(CID, [0], [40])
    sender.seal(buf, descs)
    data = bytes(buf[:67])
    long_form = bytes((data[0] | 0x80,)) + data[1:]
    assert receiver.open(data, [(0, 20, CID), (0, 500, CID)]) == [None, None]
    assert receiver.open(long_form, [(0, 67, CID)]) == [None]
    assert receiver.open_failures == 3


def test_seal_rejects_too_short_packet() -> None:
    sender, _ = _pair(CipherSuite.AES_128_GCM_SHA256)
    buf, descs, _ = _batch(CID, [0], [1], pn_len=1)
    with pytest.raises(ValueError):
        sender.seal(buf, descs)


def test_alias_shares_state_and_remove_is_per_cid() -> None:
    suite = CipherSuite.CHACHA20_POLY1305_SHA256
    sender, receiver = _pair(suite)
    new_cid = bytes.fromhex("aabbccddeeff0011")
    sender.alias(new_cid, CID, opener=False)
    receiver.alias(new_cid, CID, opener=True)
    assert receiver.key_state(new_cid, opener=True) is receiver.key_state(CID, opener=True)
    sender.update(new_cid, opener=False)  # updating through the alias updates the shared entry
    assert sender.key_state(CID, opener=False).key_phase == 1
    buf, descs, _ = _batch(new_cid, [0, 1], [30, 30])
    sender.seal(buf, descs)
    receiver.remove(CID, opener=True)
    res = receiver.open(bytes(buf), _open_descs(descs))
    assert [(r.pn, r.key_phase) for r in res if r] == [(0, 1), (1, 1)]
    receiver.remove(new_cid, opener=True)
    assert receiver.open(bytes(buf), _open_descs(descs)) == [None, None]
    with pytest.raises(KeyError):
        receiver.alias(b"x" * 8, CID, opener=True)


@pytest.mark.parametrize("suite", SUITES)
def test_install_restored_state_with_hp_key(suite: CipherSuite) -> None:
    """A state moved elsewhere (migration): later-generation secret plus original hp key."""
    sender, receiver = _pair(suite)
    sender.update(CID, opener=False)
    buf, descs, _ = _batch(CID, [998, 999], [30, 30])
    sender.seal(buf, descs)
    receiver.open(bytes(buf), _open_descs(descs))
    src = receiver.key_state(CID, opener=True)
    snd = sender.key_state(CID, opener=False)
    moved_rx, moved_tx = SoftwareOffloadEngine(), SoftwareOffloadEngine()
    moved_rx.install(
        CID,
        suite,
        src.current.secret,
        opener=True,
        key_phase=src.key_phase,
        largest_pn=src.largest_pn,
        hp_key=src.hp_key,
    )
    moved_tx.install(
        CID, suite, snd.current.secret, opener=False, key_phase=snd.key_phase, hp_key=snd.hp_key
    )
    buf2, descs2, plain2 = _batch(CID, [1000, 1001], [30, 30], pn_len=1)
    moved_tx.seal(buf2, descs2)
    res = moved_rx.open(bytes(buf2), _open_descs(descs2))
    assert [(r.pn, r.key_phase, r.phase_changed, r.payload) for r in res if r] == [
        (1000, 1, False, plain2[0][1]),
        (1001, 1, False, plain2[1][1]),
    ]


def test_pn_recovery_uses_largest_received() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    sender, receiver = _pair(suite)
    pns = [0x10000 - 2, 0x10000 - 1, 0x10000, 0x10001]
    buf, descs, _ = _batch(CID, pns, [30] * 4, pn_len=2)
    sender.seal(buf, descs)
    res = receiver.open(bytes(buf), _open_descs(descs))
    assert [r.pn for r in res if r] == pns


@pytest.mark.parametrize("native", [False, True])
def test_install_returns_the_entry_key_state_gives(native: bool) -> None:
    """program_engine reads the new entry's hp key from install's result: the same object
    key_state returns, with the hp key derived from the secret (or the one given)."""
    from quicflow.crypto.keys import derive_hp_key

    engine = _engine(native)
    suite = CipherSuite.AES_128_GCM_SHA256
    secret = _secret(suite)
    state = engine.install(CID, suite, secret, opener=True, largest_pn=7)
    assert state is engine.key_state(CID, opener=True)
    assert state.hp_key == derive_hp_key(suite, secret)
    given = bytes(range(16))
    sealer = engine.install(CID, suite, secret, opener=False, hp_key=given)
    assert sealer is engine.key_state(CID, opener=False) and sealer.hp_key == given


@pytest.mark.parametrize("native", [False, True])
def test_remove_connection_drops_exactly_its_entries(native: bool) -> None:
    """An ended connection's openers (its CIDs, aliases of one entry) and its sealer go in
    one call; another connection's entries stay and still open its packets."""
    engine = _engine(native)
    suite = CipherSuite.AES_128_GCM_SHA256
    mine = [CID, bytes.fromhex("1112131415161718"), bytes.fromhex("2122232425262728")]
    other = bytes.fromhex("a1a2a3a4a5a6a7a8")
    engine.install(mine[0], suite, _secret(suite), opener=True)
    for cid in mine[1:]:
        engine.alias(cid, mine[0], opener=True)
    engine.install(b"peer-cid", suite, _secret(suite), opener=False)
    engine.install(other, suite, _secret(suite), opener=True)
    engine.install(b"other-peer", suite, _secret(suite), opener=False)
    engine.remove_connection(mine, b"peer-cid")
    for cid in mine:
        assert cid not in engine
    assert b"peer-cid" not in engine
    assert other in engine and b"other-peer" in engine
    sender = SoftwareOffloadEngine()
    sender.install(other, suite, _secret(suite), opener=False)
    buf, descs, plain = _batch(other, [0], [40])
    sender.seal(buf, descs)
    [res] = engine.open(bytes(buf), _open_descs(descs))
    assert res is not None and res.pn == 0 and bytes(res.payload) == plain[0][1]
    engine.remove_connection([], b"never-installed")  # nothing there: nothing happens
