"""``OffloadEngine.seal_stream_run``: frame and seal a run of one-STREAM-frame packets.

The native engine must give the same bytes, return values and sealer state as the software
engine, and both must equal what the sender did before (``build_bulk`` building plaintext
packets, then one ``seal()``), reproduced here by ``old_way``. Opening the packets with the
peer's ``open_run`` gives back the data. The native tests skip without the extension (fail
under ``QUICFLOW_REQUIRE_ALL=1``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.crypto import CipherSuite, SoftwareOffloadEngine, native, suite_hash_len
from quicflow.crypto.offload import OffloadEngine
from quicflow.wire.varint import encode_varint
from tests.support.prereq import require

SUITES = list(CipherSuite)
CID = bytes.fromhex("c1d2e3f405060708")
HYP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PN_MAX = 1 << 62
TAG = 16


def need_native() -> None:
    require(
        native.available(),
        f"native crypto extension not built ({native.unavailable_reason()}); "
        "pip install -e . with gcc and libssl-dev",
    )


def engines() -> list[Callable[[], OffloadEngine]]:
    makers: list[Callable[[], OffloadEngine]] = [SoftwareOffloadEngine]
    if native.available():
        makers.append(native.NativeOffloadEngine)
    return makers


def _secret(suite: CipherSuite, seed: int = 0) -> bytes:
    return bytes((seed + 7 * i) & 0xFF for i in range(suite_hash_len(suite)))


def sealer(
    make: Callable[[], OffloadEngine], suite: CipherSuite, secret: bytes, cid: bytes, updates: int
) -> OffloadEngine:
    engine = make()
    engine.install(cid, suite, secret, opener=False)
    for _ in range(updates):
        engine.update(cid, opener=False)
    return engine


def old_way(
    engine: OffloadEngine,
    buf: bytearray,
    cid: bytes,
    pn: int,
    pn_len: int,
    sid: int,
    data: Any,
    start: int,
    end: int,
    offset: int,
    off_len: int,
    data_cap: int,
    count: int,
    fin: bool,
    *,
    key: bytes | None = None,
) -> int:
    """The build_bulk loop before seal_stream_run: plaintext packets, then one seal()
    (sealed with the entry of ``key``, default ``cid``; ``cid`` goes into the headers)."""
    prefix = bytes((0x40 | (pn_len - 1),)) + cid
    header_len = len(prefix) + pn_len
    sid_bytes = encode_varint(sid)
    off_prefix = (0, 0x4000, 0x80000000, 0xC000000000000000)[off_len.bit_length() - 1]
    frame_head = 1 + len(sid_bytes) + off_len + 2
    pn_mask = (1 << (8 * pn_len)) - 1
    descs: list[tuple[int, int, int, int, bytes]] = []
    pos = start
    with memoryview(data) as view:
        while len(descs) < count and pos < end:
            length = min(end - pos, data_cap)
            packet_start = len(buf)
            buf += prefix
            buf += (pn & pn_mask).to_bytes(pn_len, "big")
            buf.append(0x0E | (fin and pos + length == end))
            buf += sid_bytes
            buf += (off_prefix | (offset + pos - start)).to_bytes(off_len, "big")
            buf += (0x4000 | length).to_bytes(2, "big")
            buf += view[pos : pos + length]
            buf += bytes(TAG)
            table_key = cid if key is None else key
            descs.append((packet_start, header_len, frame_head + length, pn, table_key))
            pn += 1
            pos += length
    engine.seal(buf, descs)
    return len(descs)


@st.composite
def run_args(draw: st.DrawFn) -> dict[str, Any]:
    suite = draw(st.sampled_from(SUITES))
    size = draw(st.integers(0, 3000))
    data = draw(st.binary(min_size=size, max_size=size)) if size < 64 else os.urandom(size)
    start = draw(st.integers(0, size))
    end = draw(st.integers(start, size))
    off_len = draw(st.sampled_from((1, 2, 4, 8)))
    limit = 1 << (8 * off_len - 2)
    if end - start >= limit:
        off_len = 2 if end - start < 1 << 14 else 4
        limit = 1 << (8 * off_len - 2)
    top = limit - 1 - (end - start)
    offset = draw(st.one_of(st.integers(0, top), st.just(top), st.just(0)))
    data_cap = draw(st.one_of(st.integers(1, 40), st.integers(41, 1500), st.just(16383)))
    count = draw(st.integers(0, 50))
    pn_len = draw(st.integers(1, 4))
    pn = draw(
        st.one_of(
            st.integers(0, 1000),
            st.integers(0, PN_MAX - 64),
            st.sampled_from((0xFF - 3, 0xFFFF - 3, 0xFFFFFF - 3, 0xFFFFFFFF - 3, PN_MAX - 64)),
        )
    )
    return {
        "suite": suite,
        "secret": draw(st.binary(min_size=suite_hash_len(suite), max_size=suite_hash_len(suite))),
        "cid": draw(st.binary(min_size=0, max_size=20)),
        # the sealer's table key when it is not the header's DCID (endpoints use a local
        # key); None: the 14-argument form, keyed by the DCID itself
        "key": draw(st.one_of(st.none(), st.binary(min_size=0, max_size=16))),
        "updates": draw(st.integers(0, 3)),
        "prefix": draw(st.binary(max_size=40)),
        "kind": draw(st.sampled_from((bytes, bytearray, memoryview))),
        "call": (
            pn, pn_len, draw(st.one_of(st.integers(0, 70), st.integers(0, PN_MAX - 1))),
            data, start, end, offset, off_len, data_cap, count, draw(st.booleans()),
        ),
    }


def _call(engine: OffloadEngine, buf: bytearray, cid: bytes, call: tuple[Any, ...],
          kind: Any, key: bytes | None = None) -> int:
    pn, pn_len, sid, data, start, end, offset, off_len, data_cap, count, fin = call
    if key is None:
        return engine.seal_stream_run(
            buf, cid, pn, pn_len, sid, kind(data), start, end, offset, off_len, data_cap,
            count, fin,
        )
    return engine.seal_stream_run(
        buf, key, pn, pn_len, sid, kind(data), start, end, offset, off_len, data_cap, count,
        fin, cid,
    )


def _expected_count(call: tuple[Any, ...]) -> int:
    _pn, _pl, _sid, _data, start, end, _o, _ol, data_cap, count, _fin = call
    return int(min(count, -(-(end - start) // data_cap)))


@HYP
@given(run_args())
def test_engines_match_old_way_and_each_other(args: dict[str, Any]) -> None:
    suite, secret, cid, updates = args["suite"], args["secret"], args["cid"], args["updates"]
    call = args["call"]
    key = args["key"]
    table_key = cid if key is None else key
    ref_engine = sealer(SoftwareOffloadEngine, suite, secret, table_key, updates)
    ref = bytearray(args["prefix"])
    ref_n = old_way(ref_engine, ref, cid, *call, key=table_key)
    assert ref_n == _expected_count(call)
    for make in engines():
        engine = sealer(make, suite, secret, table_key, updates)
        buf = bytearray(args["prefix"])
        n = _call(engine, buf, cid, call, args["kind"], key)
        assert n == ref_n, make
        assert buf == ref, make
        assert engine.sealed == ref_engine.sealed  # type: ignore[attr-defined]
        state, ref_state = engine.key_state(table_key, opener=False), ref_engine.key_state(table_key, opener=False)  # type: ignore[attr-defined]  # noqa: E501
        assert state.largest_pn == ref_state.largest_pn
        assert state.key_phase == ref_state.key_phase == updates & 1


@HYP
@given(run_args(), st.integers(0, 1))
def test_peer_open_run_gives_the_data_back(args: dict[str, Any], opener_kind: int) -> None:
    makers = engines()
    make = makers[opener_kind % len(makers)]
    suite, secret, cid, updates = args["suite"], args["secret"], args["cid"], args["updates"]
    pn, pn_len, sid, data, start, end, offset, _ol, data_cap, _count, fin = args["call"]
    key = args["key"]
    sender = sealer(makers[-1], suite, secret, cid if key is None else key, updates)
    prefix = args["prefix"]
    buf = bytearray(prefix)
    n = _call(sender, buf, cid, args["call"], args["kind"], key)
    if n == 0:
        assert buf == prefix
        return
    receiver = make()
    receiver.install(cid, suite, secret, opener=True, largest_pn=pn - 1)
    for _ in range(updates):
        receiver.update(cid, opener=True)
    header_len = 1 + len(cid) + pn_len
    frame_head = 1 + len(encode_varint(sid)) + _ol + 2
    unit = header_len + frame_head + data_cap + TAG
    descs = []
    at = len(prefix)
    for i in range(n):
        size = unit if i < n - 1 else len(buf) - at
        descs.append((at, size, cid))
        at += size
    assert at == len(buf)
    used = min(end - start, n * data_cap)
    entries = receiver.open_run(bytes(buf), descs)
    assert entries == [
        (0, pn, n, sid, offset, bytes(data[start : start + used]), fin and start + used == end)
    ]


@pytest.mark.parametrize("suite", SUITES)
def test_edge_cases(suite: CipherSuite) -> None:
    data = os.urandom(5000)
    cases: list[tuple[Any, ...]] = [
        # pn, pn_len, sid, data, start, end, offset, off_len, data_cap, count, fin
        (0, 1, 0, data, 0, 100, 0, 2, 10, 0, True),  # count 0
        (0, 1, 0, data, 7, 7, 0, 1, 10, 5, True),  # start == end
        (9, 2, 4, data, 0, 5, 3, 2, 1200, 5, True),  # less than one chunk
        (9, 2, 4, data, 0, 5, 3, 2, 1200, 5, False),
        (1, 1, 1, data, 10, 30, 0, 1, 1, 64, True),  # tiny data_cap
        (0xFE, 1, 2, data, 0, 4000, 1 << 20, 4, 1000, 10, True),  # 1-byte pn wraps
        (0xFFFE, 2, 2, data, 0, 4000, 1 << 20, 4, 999, 3, True),  # count cuts the run
        (0xFFFFFFFE, 4, 1 << 40, data, 1, 5000, (1 << 62) - 5000, 8, 1150, 40, True),
        (PN_MAX - 5, 3, 0, data, 0, 5000, 0, 2, 1000, 40, True),  # last pn 2**62 - 1
    ]
    secret = _secret(suite)
    for call in cases:
        ref_engine = sealer(SoftwareOffloadEngine, suite, secret, CID, 1)
        ref = bytearray(b"\x99" * 3)
        ref_n = old_way(ref_engine, ref, CID, *call)
        assert ref_n == _expected_count(call)
        for make in engines():
            buf = bytearray(b"\x99" * 3)
            assert _call(sealer(make, suite, secret, CID, 1), buf, CID, call, bytes) == ref_n
            assert buf == ref


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pn_len": 0}, "pn_len"),
        ({"pn_len": 5}, "pn_len"),
        ({"off_len": 3}, "off_len"),
        ({"data_cap": 0}, "data_cap"),
        ({"data_cap": 16384}, "data_cap"),
        ({"count": -1}, "count"),
        ({"start": -1}, "start"),
        ({"start": 20, "end": 10}, "start"),
        ({"end": 101}, "start"),
        ({"stream_id": PN_MAX}, "stream_id"),
        ({"stream_id": -1}, "stream_id"),
        ({"offset": 64 - 100, "off_len": 1}, "offset"),
        ({"offset": 0, "off_len": 1}, "offset"),  # 100 bytes do not fit offsets < 64
        ({"pn": -1}, "packet numbers"),
        ({"pn": PN_MAX - 1}, "packet numbers"),  # two packets: the second is 2**62
    ],
)
def test_invalid_arguments(change: dict[str, int], message: str) -> None:
    kwargs: dict[str, Any] = {
        "pn": 0, "pn_len": 2, "stream_id": 0, "data": bytes(100), "start": 0, "end": 100,
        "offset": 0, "off_len": 2, "data_cap": 60, "count": 5, "fin": False,
    }
    kwargs.update(change)
    suite = CipherSuite.AES_128_GCM_SHA256
    for make in engines():
        engine = sealer(make, suite, _secret(suite), CID, 0)
        buf = bytearray(b"keep")
        with pytest.raises(ValueError, match=message):
            engine.seal_stream_run(buf, CID, **kwargs)
        assert buf == b"keep"
        with pytest.raises(KeyError):
            engine.seal_stream_run(buf, b"unknown", **kwargs)


def test_dcid_is_written_and_key_selects_the_entry() -> None:
    """The table key and the header's DCID are separate: packets sealed under a local
    key carry the DCID given (also zero-length) and open under it at the peer."""
    suite = CipherSuite.AES_128_GCM_SHA256
    secret = _secret(suite)
    for make in engines():
        for dcid in (b"", CID):
            engine = sealer(make, suite, secret, b"local-key", 0)
            buf = bytearray()
            assert engine.seal_stream_run(
                buf, b"local-key", 5, 2, 0, bytes(300), 0, 300, 0, 2, 100, 9, True, dcid
            ) == 3
            assert buf[1 : 1 + len(dcid)] == dcid
            receiver = make()
            receiver.install(dcid, suite, secret, opener=True, largest_pn=4)
            unit = len(buf) // 3
            entries = receiver.open_run(bytes(buf), [(i * unit, unit, dcid) for i in range(3)])
            assert entries == [(0, 5, 3, 0, 0, bytes(300), True)]
            with pytest.raises(TypeError):
                engine.seal_stream_run(
                    buf, b"local-key", 9, 2, 0, bytes(10), 0, 10, 0, 2, 100, 1, True,
                    "str",  # type: ignore[arg-type]
                )
            with pytest.raises(KeyError):  # the DCID is not a table key
                engine.seal_stream_run(buf, dcid or b"x", 9, 2, 0, bytes(10), 0, 10, 0, 2, 100,
                                       1, True, dcid)


def test_exported_buffer_cannot_grow() -> None:
    suite = CipherSuite.CHACHA20_POLY1305_SHA256
    for make in engines():
        engine = sealer(make, suite, _secret(suite), CID, 0)
        buf = bytearray(b"abc")
        with memoryview(buf), pytest.raises(BufferError):
            engine.seal_stream_run(buf, CID, 0, 2, 0, bytes(100), 0, 100, 0, 2, 60, 5, False)
        assert buf == b"abc"
        assert engine.seal_stream_run(buf, CID, 0, 2, 0, bytes(100), 0, 100, 0, 2, 60, 5, False)


def test_native_is_built_for_these_tests() -> None:
    need_native()
    assert len(engines()) == 2
