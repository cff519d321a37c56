"""NativeOffloadEngine (C on libcrypto) against SoftwareOffloadEngine, the reference.

Every test needs the built extension ``quicflow.crypto._native``: without it they skip
(or fail under ``QUICFLOW_REQUIRE_ALL=1``), except the ``best_engine`` fallback test.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.crypto import (
    CipherSuite,
    SoftwareOffloadEngine,
    derive_packet_keys,
    hkdf_expand_label,
    native,
    next_generation_secret,
    suite_hash,
    suite_hash_len,
)
from quicflow.crypto.aead import make_aead
from quicflow.crypto.header_protection import make_header_protection
from quicflow.crypto.hkdf import hkdf_expand
from quicflow.crypto.keys import PacketProtector
from quicflow.crypto.native import NativeOffloadEngine, best_engine
from quicflow.crypto.offload import OpenResult
from tests.support.prereq import require

SUITES = list(CipherSuite)
Desc = tuple[int, int, int, int, bytes]


def need_native() -> None:
    require(
        native.available(),
        f"native crypto extension not built ({native.unavailable_reason()}); "
        "pip install -e . with gcc and libssl-dev",
    )


NO_NATIVE_NEEDED = {"test_best_engine_and_override"}


@pytest.fixture(autouse=True)
def _native(request: pytest.FixtureRequest) -> None:
    if request.node.originalname not in NO_NATIVE_NEEDED:
        need_native()


def _engines() -> tuple[SoftwareOffloadEngine, NativeOffloadEngine]:
    return SoftwareOffloadEngine(), NativeOffloadEngine()


def _state_tuple(engine: Any, cid: bytes, opener: bool) -> tuple[Any, ...]:
    s = engine.key_state(cid, opener=opener)
    prev = None if s.previous is None else s.previous.secret
    return (
        int(s.suite),
        s.hp_key,
        s.key_phase,
        s.largest_pn,
        s.phase_start_pn,
        s.current.secret,
        s.current.iv,
        s.next.secret,
        s.next.iv,
        prev,
    )


# -- strategies ----------------------------------------------------------------------

suites = st.sampled_from(SUITES)


@st.composite
def connections(draw: st.DrawFn) -> tuple[bytes, CipherSuite, bytes]:
    suite = draw(suites)
    cid = draw(st.binary(min_size=0, max_size=20))
    secret = draw(st.binary(min_size=suite_hash_len(suite), max_size=suite_hash_len(suite)))
    return cid, suite, secret


@st.composite
def packet_specs(draw: st.DrawFn) -> tuple[int, int, int, bytes, int]:
    """(pn, pn_len, spin/reserved bits, payload, gap after the packet)."""
    pn_len = draw(st.integers(1, 4))
    pn = draw(st.integers(0, 2**62 - 1) | st.integers(0, 3000))
    payload = draw(st.binary(min_size=max(0, 4 - pn_len), max_size=300))
    bits = draw(st.integers(0, 0x3F)) & 0x38  # spin + reserved bits (phase bit set by engine)
    gap = draw(st.integers(0, 5))
    return pn, pn_len, bits, payload, gap


def _layout(
    specs: list[tuple[int, int, int, bytes, int]], cids: list[bytes], which: list[int]
) -> tuple[bytearray, list[Desc]]:
    chunks = bytearray()
    descs: list[Desc] = []
    for (pn, pn_len, bits, payload, gap), idx in zip(specs, which, strict=True):
        cid = cids[idx]
        header = bytes((0x40 | bits | (pn_len - 1),)) + cid
        header += (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
        descs.append((len(chunks), len(header), len(payload), pn, cid))
        chunks += header + payload + bytes(16) + os.urandom(gap)
    return chunks, descs


def _open_descs(descs: list[Desc]) -> list[tuple[int, int, bytes]]:
    return [(off, hl + pl + 16, cid) for off, hl, pl, _pn, cid in descs]


def _install_all(
    engines: tuple[Any, ...],
    conns: list[tuple[bytes, CipherSuite, bytes]],
    opener: bool,
    largest_pn: int = -1,
) -> None:
    for engine in engines:
        for cid, suite, secret in conns:
            engine.install(cid, suite, secret, opener=opener, largest_pn=largest_pn)


def _distinct(conns: list[tuple[bytes, CipherSuite, bytes]]) -> bool:
    return len({c[0] for c in conns}) == len(conns)


HYP = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- bit identity ----------------------------------------------------------------------


@HYP
@given(
    conns=st.lists(connections(), min_size=1, max_size=3).filter(_distinct),
    specs=st.lists(packet_specs(), min_size=1, max_size=12),
    data=st.data(),
)
def test_random_batches_seal_identically_and_cross_open(
    conns: list[tuple[bytes, CipherSuite, bytes]],
    specs: list[tuple[int, int, int, bytes, int]],
    data: st.DataObject,
) -> None:
    which = data.draw(
        st.lists(st.integers(0, len(conns) - 1), min_size=len(specs), max_size=len(specs))
    )
    cids = [c[0] for c in conns]
    buf, descs = _layout(specs, cids, which)
    sw, nat = _engines()
    _install_all((sw, nat), conns, opener=False)
    buf_sw, buf_nat = bytearray(buf), bytearray(buf)
    sw.seal(buf_sw, descs)
    nat.seal(buf_nat, descs)
    assert buf_nat == buf_sw
    assert nat.sealed == sw.sealed == len(descs)
    for cid in cids:
        assert _state_tuple(nat, cid, False) == _state_tuple(sw, cid, False)

    # Open the sealed datagram with every combination; pn recovery needs a largest_pn near
    # the packet numbers, so install receivers one packet at a time with largest_pn = pn - 1.
    for (off, hl, pl, pn, cid), desc in zip(descs, _open_descs(descs), strict=True):
        conn = conns[cids.index(cid)]
        receivers = _engines()
        _install_all(receivers, [conn], opener=True, largest_pn=pn - 1)
        r_sw = receivers[0].open(bytes(buf_sw), [desc])
        r_nat = receivers[1].open(bytes(buf_sw), [desc])
        assert r_nat == r_sw
        assert r_sw[0] is not None and r_sw[0].pn == pn
        assert type(r_nat[0]) is OpenResult
        assert r_sw[0].payload == bytes(buf[off + hl : off + hl + pl])
        assert _state_tuple(receivers[1], cid, True) == _state_tuple(receivers[0], cid, True)


@HYP
@given(
    conn=connections(),
    sizes=st.lists(st.integers(3, 200), min_size=1, max_size=40),
    start=st.integers(0, 2**40),
    pn_len=st.integers(1, 4),
)
def test_batch_in_order_both_directions(
    conn: tuple[bytes, CipherSuite, bytes], sizes: list[int], start: int, pn_len: int
) -> None:
    cid, suite, secret = conn
    specs = [(start + i, pn_len, 0, os.urandom(max(s, 4)), 0) for i, s in enumerate(sizes)]
    buf, descs = _layout(specs, [cid], [0] * len(specs))
    sw, nat = _engines()
    _install_all((sw, nat), [conn], opener=False)
    sealed_sw, sealed_nat = bytearray(buf), bytearray(buf)
    sw.seal(sealed_sw, descs)
    nat.seal(sealed_nat, descs)
    assert sealed_sw == sealed_nat
    for sealed in (bytes(sealed_sw), bytearray(sealed_nat), memoryview(bytes(sealed_nat))):
        rx_sw, rx_nat = _engines()
        _install_all((rx_sw, rx_nat), [conn], opener=True, largest_pn=start - 1)
        res_sw = rx_sw.open(sealed, _open_descs(descs))
        res_nat = rx_nat.open(sealed, _open_descs(descs))
        assert res_nat == res_sw
        assert [r.pn for r in res_nat if r] == [start + i for i in range(len(sizes))]
        assert (rx_nat.opened, rx_nat.open_failures) == (rx_sw.opened, rx_sw.open_failures)
        assert _state_tuple(rx_nat, cid, True) == _state_tuple(rx_sw, cid, True)


# -- key updates ---------------------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 6)),
        st.just(("update_tx",)),
        st.just(("update_rx",)),
        st.just(("deliver_held",)),
    ),
    min_size=1,
    max_size=25,
)


@HYP
@given(conn=connections(), script=ops, hold=st.lists(st.booleans(), min_size=150, max_size=150))
def test_key_update_sequences_identical(
    conn: tuple[bytes, CipherSuite, bytes], script: list[tuple[Any, ...]], hold: list[bool]
) -> None:
    """Sender updates, receiver updates, delayed (reordered) packets: same results/state."""
    cid, suite, secret = conn
    tx, rx = _engines(), _engines()  # (software, native) senders and receivers
    _install_all(tx, [conn], opener=False)
    _install_all(rx, [conn], opener=True)
    pn = 0
    held: list[tuple[bytes, tuple[int, int, bytes]]] = []
    k = 0
    for op in script:
        if op[0] == "send":
            specs = [(pn + i, 2, 0, os.urandom(30), 0) for i in range(op[1])]
            pn += op[1]
            buf, descs = _layout(specs, [cid], [0] * len(specs))
            bufs = [bytearray(buf), bytearray(buf)]
            tx[0].seal(bufs[0], descs)
            tx[1].seal(bufs[1], descs)
            assert bufs[0] == bufs[1]
            now: list[tuple[bytes, tuple[int, int, bytes]]] = []
            for desc in _open_descs(descs):
                k += 1
                (held if hold[k % len(hold)] else now).append((bytes(bufs[0]), desc))
            for data, desc in now:
                assert rx[1].open(data, [desc]) == rx[0].open(data, [desc])
        elif op[0] == "update_tx":
            for engine in tx:
                engine.update(cid, opener=False)
        elif op[0] == "update_rx":
            for engine in rx:
                engine.update(cid, opener=True)
        else:
            for data, desc in held:
                assert rx[1].open(data, [desc]) == rx[0].open(data, [desc])
            held.clear()
        assert _state_tuple(tx[1], cid, False) == _state_tuple(tx[0], cid, False)
        assert _state_tuple(rx[1], cid, True) == _state_tuple(rx[0], cid, True)
    assert (rx[1].opened, rx[1].open_failures) == (rx[0].opened, rx[0].open_failures)


@pytest.mark.parametrize("suite", SUITES)
def test_rotation_inside_one_batch(suite: CipherSuite) -> None:
    """A batch spanning a key update (phase change mid-batch) rotates in the C loop."""
    conn = (bytes(8), suite, bytes(range(suite_hash_len(suite))))
    tx_sw, tx_nat = _engines()
    _install_all((tx_sw, tx_nat), [conn], opener=False)
    data = bytearray()
    descs: list[tuple[int, int, bytes]] = []
    for phase_round in range(4):
        specs = [(phase_round * 3 + i, 2, 0, os.urandom(40), 0) for i in range(3)]
        buf, sdescs = _layout(specs, [conn[0]], [0, 0, 0])
        b2 = bytearray(buf)
        tx_sw.seal(buf, sdescs)
        tx_nat.seal(b2, sdescs)
        assert buf == b2
        descs += [(off + len(data), n, c) for off, n, c in _open_descs(sdescs)]
        data += buf
        for engine in (tx_sw, tx_nat):
            engine.update(conn[0], opener=False)
    rx_sw, rx_nat = _engines()
    _install_all((rx_sw, rx_nat), [conn], opener=True)
    res_sw = rx_sw.open(bytes(data), descs)
    res_nat = rx_nat.open(bytes(data), descs)
    assert res_nat == res_sw
    assert [(r.pn, r.key_phase, r.phase_changed) for r in res_nat if r] == [
        (pn, (pn // 3) & 1, pn in (3, 6, 9)) for pn in range(12)
    ]
    assert _state_tuple(rx_nat, conn[0], True) == _state_tuple(rx_sw, conn[0], True)


# -- failures ------------------------------------------------------------------------


@HYP
@given(conn=connections(), payload=st.binary(min_size=3, max_size=120), data=st.data())
def test_tampered_packets_fail_alike(
    conn: tuple[bytes, CipherSuite, bytes], payload: bytes, data: st.DataObject
) -> None:
    cid = conn[0]
    buf, descs = _layout([(5, 1, 0, payload, 0)], [cid], [0])
    tx = SoftwareOffloadEngine()
    tx.install(*conn, opener=False)
    tx.seal(buf, descs)
    where = data.draw(st.integers(0, len(buf) - 1))
    bit = data.draw(st.integers(0, 7))
    if where == 0 and bit >= 5:
        bit = data.draw(st.integers(0, 4))  # keep the short-header form/fixed bits
    buf[where] ^= 1 << bit
    rx = _engines()
    _install_all(rx, [conn], opener=True)
    results = [e.open(bytes(buf), _open_descs(descs)) for e in rx]
    assert results[0] == results[1] == [None]
    assert _state_tuple(rx[1], cid, True) == _state_tuple(rx[0], cid, True)
    assert rx[0].open_failures == rx[1].open_failures == 1


@HYP
@given(
    conn=connections(),
    blob=st.binary(min_size=0, max_size=200),
    windows=st.lists(st.tuples(st.integers(0, 220), st.integers(0, 220)), max_size=8),
)
def test_garbage_and_overruns_fail_alike(
    conn: tuple[bytes, CipherSuite, bytes], blob: bytes, windows: list[tuple[int, int]]
) -> None:
    rx = _engines()
    _install_all(rx, [conn], opener=True, largest_pn=1000)
    descs = [(off, n, conn[0]) for off, n in windows]
    res = [e.open(blob, descs) for e in rx]
    assert res[0] == res[1]
    assert (rx[0].opened, rx[0].open_failures) == (rx[1].opened, rx[1].open_failures)
    assert _state_tuple(rx[1], conn[0], True) == _state_tuple(rx[0], conn[0], True)


def test_unknown_cid_behaves_alike() -> None:
    conn = (b"\x01" * 8, CipherSuite.AES_128_GCM_SHA256, bytes(32))
    tx = SoftwareOffloadEngine()
    tx.install(*conn, opener=False)
    buf, descs = _layout([(0, 2, 0, b"x" * 40, 0), (1, 2, 0, b"y" * 40, 0)], [conn[0]], [0, 0])
    tx.seal(buf, descs)
    other = b"\x02" * 8
    for engine in _engines():
        engine.install(*conn, opener=True)
        res = engine.open(bytes(buf), [(0, 67, other), (67, 67, conn[0]), (0, 67, other)])
        assert res[0] is None and res[2] is None and res[1] is not None and res[1].pn == 1
        assert (engine.opened, engine.open_failures) == (1, 2)
        with pytest.raises(KeyError):
            engine.seal(bytearray(buf), [(0, 11, 40, 0, other)])
        with pytest.raises(KeyError):
            engine.update(other, opener=True)
        with pytest.raises(KeyError):
            engine.alias(b"z", other, opener=True)
        with pytest.raises(KeyError):
            engine.key_state(other, opener=False)
        engine.remove(other, opener=True)  # no error
        assert conn[0] in engine and other not in engine


def test_seal_errors_leave_the_same_bytes() -> None:
    """A batch that fails midway: same exception, same partially sealed buffer."""
    conn = (b"\x07" * 4, CipherSuite.CHACHA20_POLY1305_SHA256, bytes(range(32)))
    specs = [(0, 2, 0, b"a" * 20, 0), (1, 1, 0, b"b" * 2, 0), (2, 2, 0, b"c" * 20, 0)]
    buf, descs = _layout(specs, [conn[0]], [0, 0, 0])
    outs = []
    for engine in _engines():
        engine.install(*conn, opener=False)
        b = bytearray(buf)
        with pytest.raises(ValueError):
            engine.seal(b, descs)
        outs.append((bytes(b), engine.sealed, _state_tuple(engine, conn[0], False)))
        with pytest.raises(ValueError):  # overruns the buffer
            engine.seal(bytearray(buf[:30]), descs[:1])
    assert outs[0] == outs[1]


def test_list_descriptors_and_aliases() -> None:
    suite = CipherSuite.AES_256_GCM_SHA384
    conn = (b"\x05" * 6, suite, bytes(range(48)))
    alias = b"\x06" * 6
    outs = []
    for engine in _engines():
        engine.install(*conn, opener=False)
        engine.alias(alias, conn[0], opener=False)
        engine.update(alias, opener=False)
        assert engine.key_state(alias, opener=False) is engine.key_state(conn[0], opener=False)
        buf, descs = _layout(
            [(9, 3, 0, b"p" * 30, 0), (10, 3, 0, b"q" * 30, 0)], [conn[0], alias], [0, 1]
        )
        engine.seal(buf, [list(d) for d in descs])  # type: ignore[misc]
        engine.remove(conn[0], opener=False)
        outs.append(bytes(buf))
        assert alias in engine and conn[0] not in engine
    assert outs[0] == outs[1]


# -- building blocks -----------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_key_context_mask_and_hkdf_match_python(suite: CipherSuite) -> None:
    ext = native._ext
    secret = os.urandom(suite_hash_len(suite))
    for label, length in ((b"quic ku", suite_hash_len(suite)), (b"quic iv", 12), (b"quic key", 16)):
        # the reference: RFC 5869 HKDF-Expand (pure Python) over the RFC 8446 HkdfLabel
        info = length.to_bytes(2, "big") + bytes((6 + len(label),)) + b"tls13 " + label + b"\0"
        expected = hkdf_expand(suite_hash(suite), secret, info, length)
        assert ext.hkdf_expand_label(int(suite), secret, label.decode(), length) == expected
        assert hkdf_expand_label(suite_hash(suite), secret, label, b"", length) == expected
    keys = derive_packet_keys(suite, secret)
    ctx = ext.KeyContext(int(suite), keys.key, keys.iv, keys.hp_key, secret)
    hp = make_header_protection(suite, keys.hp_key)
    for _ in range(20):
        sample = os.urandom(16)
        assert ctx.mask(sample) == hp.mask(sample)
    assert ctx.secret == secret and ctx.iv == int.from_bytes(keys.iv, "big")
    with pytest.raises(ValueError):
        ext.KeyContext(int(suite), keys.key[:-1], keys.iv, keys.hp_key)
    with pytest.raises(ValueError):
        ext.KeyContext(0x1304, keys.key, keys.iv, keys.hp_key)
    nxt = next_generation_secret(suite, secret)
    eng = NativeOffloadEngine()
    eng.install(b"c", suite, secret, opener=True)
    assert eng.key_state(b"c", opener=True).next.secret == nxt


@pytest.mark.parametrize("suite", SUITES)
def test_pooled_contexts_handed_over_between_key_contexts(suite: CipherSuite) -> None:
    """EVP contexts come from a pool per suite and role (512 each): more KeyContexts than
    that in use take entries over from one another and re-key them, freed KeyContexts
    return theirs; every mask, interleaved over all keys, equals Python's."""
    ext = native._ext
    live: list[tuple[Any, Any]] = []
    for round_ in range(700):
        keys = derive_packet_keys(suite, os.urandom(suite_hash_len(suite)))
        live.append((ext.KeyContext(int(suite), keys.key, keys.iv, keys.hp_key),
                     make_header_protection(suite, keys.hp_key)))
        if round_ % 7 == 6:
            del live[(round_ * 31) % len(live)]  # returns its pool entry
    for _ in range(2):
        for ctx, hp in live:
            sample = os.urandom(16)
            assert ctx.mask(sample) == hp.mask(sample)


def test_best_engine_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(native.ENGINE_ENV, raising=False)
    expected = NativeOffloadEngine if native.available() else SoftwareOffloadEngine
    assert type(best_engine()) is expected
    monkeypatch.setenv(native.ENGINE_ENV, "python")
    assert type(best_engine()) is SoftwareOffloadEngine


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.binary(max_size=300), data=st.binary(max_size=400),
       sha384=st.booleans())
def test_hmac_matches_python_for_any_key_length(key: bytes, data: bytes, sha384: bool) -> None:
    """The C HMAC (one-block SHA-2 functions, keys hashed above the block size, empty
    key) gives Python's hmac bytes: HKDF-Extract with a non-empty salt is the HMAC."""
    import hmac as py_hmac

    ext = native._ext
    name, suite, size = ("sha384", 0x1302, 48) if sha384 else ("sha256", 0x1301, 32)
    expected = py_hmac.digest(key or bytes(size), data, name)  # (empty salt: zeros)
    assert ext.hkdf_extract(suite, key, data) == expected


@settings(max_examples=100, deadline=None)
@given(dcid=st.binary(min_size=0, max_size=20), v2=st.booleans())
def test_initial_packet_keys_one_call_matches_python(dcid: bytes, v2: bool) -> None:
    """The Initial keys of any DCID and both versions: one C call = the Python path."""
    from quicflow.crypto import keys as keys_module

    version = keys_module.QUIC_V2 if v2 else keys_module.QUIC_V1
    made = keys_module.initial_packet_keys(dcid, version)
    client, server = keys_module.initial_secrets(dcid, version)
    for keys, secret in zip(made, (client, server), strict=True):
        want = derive_packet_keys(keys_module.INITIAL_SUITE, secret, version)
        assert (keys.suite, keys.secret, keys.key, keys.iv, keys.hp_key, keys.version) == (
            want.suite, want.secret, want.key, want.iv, want.hp_key, want.version)


@settings(max_examples=60, deadline=None)
@given(dcid=st.binary(min_size=0, max_size=20), v2=st.booleans(), pn=st.integers(0, 2**30),
       payload=st.binary(min_size=20, max_size=200))
def test_initial_protectors_in_one_call_seal_like_python(dcid: bytes, v2: bool, pn: int,
                                                          payload: bytes) -> None:
    """``initial_protectors`` (one C call: both KeyContexts) seals every packet as the
    Python protector of ``initial_packet_keys`` does, opens the Python one's packets, and
    gives the same ``keys``."""
    from quicflow.crypto import keys as keys_module

    version = keys_module.QUIC_V2 if v2 else keys_module.QUIC_V1
    made = keys_module.initial_protectors(dcid, version)
    python_made = keys_module.initial_packet_keys(dcid, version)
    header = b"\xc1" + version.to_bytes(4, "big") + b"\x00\x00\x00" + (pn & 0xFFFF).to_bytes(2,
                                                                                       "big")
    for fast, want in zip(made, python_made, strict=True):
        slow = PacketProtector(want)
        slow._native = False  # the reference AEAD and header protection
        slow._aead = make_aead(want.suite, want.key)
        slow._hp = make_header_protection(want.suite, want.hp_key)
        sealed = fast.seal(header, payload, pn)
        assert sealed == slow.seal(header, payload, pn)
        assert fast.open(slow.seal(header, payload, pn), len(header) - 2, pn - 1) == (
            header, payload, pn)
        assert fast.keys == want
