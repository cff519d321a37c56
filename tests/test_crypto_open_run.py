"""``OffloadEngine.open_run``: open a run of packets and coalesce their STREAM data.

The native engine must give the same entries as the software engine, and both must equal
what ``open()`` plus an independent reference (``wire.parse_frames``) gives. The native
tests skip without the extension (fail under ``QUICFLOW_REQUIRE_ALL=1``).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.crypto import CipherSuite, SoftwareOffloadEngine, native, suite_hash_len
from quicflow.crypto.offload import OpenResult, single_stream_frame
from quicflow.wire.frames import FrameEncodingError, Padding, Stream, parse_frames
from tests.support.prereq import require

SUITES = list(CipherSuite)
CID = bytes.fromhex("c1d2e3f405060708")
UNKNOWN_CID = bytes.fromhex("0badc1d0badc1d00")
HYP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def need_native() -> None:
    require(
        native.available(),
        f"native crypto extension not built ({native.unavailable_reason()}); "
        "pip install -e . with gcc and libssl-dev",
    )


def _secret(suite: CipherSuite, seed: int = 0) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(suite_hash_len(suite)))


def _varint(value: int, size: int = 0) -> bytes:
    """Encode ``value`` on ``size`` bytes (0: the minimum); non-minimal sizes are legal."""
    minimum = 1 if value < 64 else 2 if value < 1 << 14 else 4 if value < 1 << 30 else 8
    size = max(size, minimum)
    prefix = {1: 0, 2: 1, 4: 2, 8: 3}[size]
    return (value | (prefix << (8 * size - 2))).to_bytes(size, "big")


def stream_payload(
    sid: int,
    offset: int,
    data: bytes,
    fin: bool,
    *,
    explicit_len: bool = True,
    off_bit: bool | None = None,
    padding: int = 0,
    vsize: int = 0,
) -> bytes:
    off_bit = offset > 0 if off_bit is None else off_bit or offset > 0
    ftype = 0x08 | (0x04 if off_bit else 0) | (0x02 if explicit_len else 0) | int(fin)
    out = bytes((ftype,)) + _varint(sid, vsize)
    if off_bit:
        out += _varint(offset, vsize)
    if explicit_len:
        out += _varint(len(data), vsize) + data + bytes(padding)
    else:
        out += data
    return out


# -- the independent reference ---------------------------------------------------------


def _reference_frame(payload: bytes) -> tuple[int, int, bytes, bool] | None:
    """(sid, offset, data, fin) when the payload is exactly one STREAM frame + PADDING."""
    if not payload or not 0x08 <= payload[0] <= 0x0F:
        return None
    try:
        frames = parse_frames(payload)
    except FrameEncodingError:
        return None
    if not frames or not isinstance(frames[0], Stream):
        return None
    if any(not isinstance(f, Padding) for f in frames[1:]):
        return None
    f = frames[0]
    return f.stream_id, f.offset, bytes(f.data), f.fin


def reference_entries(results: list[OpenResult | None]) -> list[tuple[Any, ...]]:
    """open() results -> open_run entries, written independently of the engines."""
    entries: list[tuple[Any, ...]] = []
    run: list[tuple[int, int, int, bytes, bool]] = []  # (pn, sid, offset, data, fin)

    def close() -> None:
        if run:
            data = b"".join(r[3] for r in run)
            entries.append((0, run[0][0], len(run), run[0][1], run[0][2], data, run[-1][4]))
            run.clear()

    for index, result in enumerate(results):
        if result is None:
            close()
            entries.append((2, index))
            continue
        frame = None if result.phase_changed else _reference_frame(result.payload)
        if frame is None:
            close()
            entries.append((1, result.pn, result.payload, result.phase_changed))
            continue
        sid, offset, data, fin = frame
        if run:
            pn, psid, poff, pdata, pfin = run[-1]
            if pfin or result.pn != pn + 1 or sid != psid or offset != poff + len(pdata):
                close()
        run.append((result.pn, sid, offset, data, fin))
        if fin:
            close()
    close()
    return entries


# -- building runs ---------------------------------------------------------------------


@st.composite
def packet_items(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["cont"] * 7 + ["stream", "other", "garbage"]))
    item: dict[str, Any] = {"kind": kind}
    item["sid"] = draw(st.sampled_from([0, 4, 2, 2**62 - 1, 1 << 20]))
    item["offset"] = draw(st.sampled_from([0, 5, 1 << 30, 2**62 - 1, 2**62 - 8]))
    item["data"] = draw(st.binary(max_size=80))
    item["fin"] = draw(st.integers(0, 9)) == 0
    item["explicit_len"] = draw(st.integers(0, 3)) > 0
    item["off_bit"] = draw(st.booleans())
    item["padding"] = draw(st.sampled_from([0, 0, 1, 7]))
    item["vsize"] = draw(st.sampled_from([0, 0, 2, 4, 8]))
    item["other"] = draw(
        st.sampled_from(
            [
                b"\x01",  # PING
                b"\x01" + bytes(20),  # PING + PADDING
                b"\x02\x05\x00\x00\x05",  # ACK
                stream_payload(0, 0, b"ab", False) + stream_payload(4, 0, b"cd", False),
                stream_payload(0, 0, b"ab", False) + b"\x01",  # STREAM then PING
                stream_payload(0, 0, b"abc", False)[:-1],  # length past the end
                b"\x0e\x00" + _varint(2**62 - 1) + b"x",  # offset + length > 2**62 - 1
                b"\x0a\x00\x05ab",  # truncated explicit length
                b"\x0c\x00",  # offset varint missing
                b"\x08",  # stream id missing
                b"\x40\x08\x00ab",  # non-minimal frame type: general path
                b"\x08\xc0\x00",  # truncated 8-byte stream id
            ]
        )
    )
    item["garbage"] = draw(st.binary(min_size=0, max_size=40))
    item["pn_step"] = draw(st.sampled_from([1] * 12 + [2, 0, -1, 5]))
    item["fate"] = draw(st.sampled_from(["ok"] * 16 + ["tamper", "unknown"]))
    item["update"] = draw(st.integers(0, 14)) == 0
    item["pn_len"] = draw(st.integers(1, 4))
    return item


def build_run(
    suite: CipherSuite, items: list[dict[str, Any]], first_pn: int = 0
) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """Seal the packets of ``items`` with the software engine into one buffer."""
    sealer = SoftwareOffloadEngine()
    sealer.install(CID, suite, _secret(suite), opener=False)
    sealer.install(UNKNOWN_CID, suite, _secret(suite, 7), opener=False)
    buf = bytearray()
    descs: list[tuple[int, int, bytes]] = []
    pn = first_pn - 1
    sid = offset = 0
    for item in items:
        pn = max(0, pn + item["pn_step"])
        kind = item["kind"]
        if kind in ("cont", "stream"):
            if kind == "stream":
                sid, offset = item["sid"], item["offset"]
            data = item["data"]
            payload = stream_payload(
                sid,
                offset,
                data,
                item["fin"],
                explicit_len=item["explicit_len"],
                off_bit=item["off_bit"],
                padding=item["padding"] if item["explicit_len"] else 0,
                vsize=item["vsize"],
            )
            offset = min(offset + len(data), 2**62 - 1)
        elif kind == "other":
            payload = item["other"]
        else:
            payload = item["garbage"]
        if item["update"]:
            sealer.update(CID, opener=False)
        pn_len = max(item["pn_len"], 4 - len(payload))
        cid = UNKNOWN_CID if item["fate"] == "unknown" else CID
        header = (
            bytes((0x40 | (pn_len - 1),)) + cid + (pn % (1 << (8 * pn_len))).to_bytes(pn_len, "big")
        )
        start = len(buf)
        buf += header + payload + bytes(16)
        sealer.seal(buf, [(start, len(header), len(payload), pn, cid)])
        if item["fate"] == "tamper":
            buf[len(buf) - 1 - (pn % 16)] ^= 0x40
        descs.append((start, len(buf) - start, cid))
    return bytes(buf), descs


def _receivers(suite: CipherSuite, with_native: bool, largest_pn: int = -1) -> list[Any]:
    engines: list[Any] = [SoftwareOffloadEngine(), SoftwareOffloadEngine()]
    if with_native:
        engines.append(native.NativeOffloadEngine())
    for engine in engines:
        engine.install(CID, suite, _secret(suite), opener=True, largest_pn=largest_pn)
    return engines


def _key_state(engine: Any) -> tuple[Any, ...]:
    s = engine.key_state(CID, opener=True)
    return (s.key_phase, s.largest_pn, s.phase_start_pn, s.current.secret)


def check_run(suite: CipherSuite, buf: bytes, descs: list[tuple[int, int, bytes]]) -> list[Any]:
    """open_run on every engine equals open() + the reference; returns the entries."""
    with_native = native.available()
    ref, *engines = _receivers(suite, with_native)
    expected = reference_entries(ref.open(buf, descs))
    for engine in engines:
        got = engine.open_run(buf, descs)
        assert got == expected, type(engine).__name__
        assert all(type(e[-1]) is bool for e in got if e[0] in (0, 1))
        assert _key_state(engine) == _key_state(ref)
        assert (engine.opened, engine.open_failures) == (ref.opened, ref.open_failures)
    return expected


# -- tests -----------------------------------------------------------------------------


@HYP
@given(suite=st.sampled_from(SUITES), items=st.lists(packet_items(), min_size=1, max_size=24))
def test_random_runs_match_reference(suite: CipherSuite, items: list[dict[str, Any]]) -> None:
    buf, descs = build_run(suite, items)
    check_run(suite, buf, descs)


@HYP
@given(
    suite=st.sampled_from(SUITES),
    payloads=st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=12),
)
def test_garbage_payloads_never_raise(suite: CipherSuite, payloads: list[bytes]) -> None:
    items = [
        {"kind": "garbage", "garbage": p, "pn_step": 1, "fate": "ok", "update": False, "pn_len": 2}
        for p in payloads
    ]
    buf, descs = build_run(suite, items)
    entries = check_run(suite, buf, descs)
    assert all(e[0] in (0, 1) for e in entries)


@HYP
@given(
    suite=st.sampled_from(SUITES),
    buf=st.binary(min_size=0, max_size=300),
    descs=st.lists(st.tuples(st.integers(-5, 320), st.integers(-5, 320)), max_size=8),
)
def test_garbage_buffers_fail_alike(
    suite: CipherSuite, buf: bytes, descs: list[tuple[int, int]]
) -> None:
    entries = check_run(suite, buf, [(o, n, CID) for o, n in descs])
    assert entries == [(2, i) for i in range(len(descs))]


@HYP
@given(payload=st.binary(max_size=64))
def test_stream_parser_agrees_with_wire(payload: bytes) -> None:
    parsed = single_stream_frame(payload)
    ref = _reference_frame(payload)
    if ref is None:
        assert parsed is None
    else:
        assert parsed is not None
        sid, offset, start, end, fin = parsed
        assert (sid, offset, payload[start:end], fin) == ref


@pytest.mark.parametrize("suite", SUITES)
def test_forty_packet_run_is_one_entry(suite: CipherSuite) -> None:
    chunks = [os.urandom(1100) for _ in range(40)]
    items = []
    for i, chunk in enumerate(chunks):
        items.append(
            {
                "kind": "stream" if i == 0 else "cont",
                "sid": 4,
                "offset": 1 << 20,
                "data": chunk,
                "fin": i == 39,
                "explicit_len": i % 2 == 0,
                "off_bit": True,
                "padding": 3,
                "vsize": 0,
                "pn_step": 1,
                "fate": "ok",
                "update": False,
                "pn_len": 2,
            }
        )
    buf, descs = build_run(suite, items, first_pn=1000)
    entries = check_run(suite, buf, descs)
    assert entries == [(0, 1000, 40, 4, 1 << 20, b"".join(chunks), True)]


@pytest.mark.parametrize("suite", SUITES)
def test_key_update_inside_a_run(suite: CipherSuite) -> None:
    """The first packet of the new phase is kind 1 with phase_changed; the run resumes."""
    items = []
    offset = 0
    for i in range(12):
        data = bytes([i]) * 50
        items.append(
            {
                "kind": "stream",
                "sid": 0,
                "offset": offset,
                "data": data,
                "fin": False,
                "explicit_len": True,
                "off_bit": False,
                "padding": 0,
                "vsize": 0,
                "pn_step": 1,
                "fate": "ok",
                "update": i in (5, 9),
                "pn_len": 1,
            }
        )
        offset += len(data)
    buf, descs = build_run(suite, items)
    entries = check_run(suite, buf, descs)
    assert [e[:3] if e[0] == 0 else (e[0], e[1], e[3]) for e in entries] == [
        (0, 0, 5),
        (1, 5, True),
        (0, 6, 3),
        (1, 9, True),
        (0, 10, 2),
    ]


def test_unknown_cid_and_tamper_split_runs() -> None:
    suite = CipherSuite.AES_128_GCM_SHA256
    base = {
        "kind": "cont",
        "sid": 0,
        "offset": 0,
        "fin": False,
        "explicit_len": True,
        "off_bit": False,
        "padding": 0,
        "vsize": 0,
        "pn_step": 1,
        "update": False,
        "pn_len": 2,
    }
    fates = ["ok", "ok", "unknown", "ok", "tamper", "ok", "ok"]
    items = [dict(base, data=bytes([i]) * 30, fate=f) for i, f in enumerate(fates)]
    items[0]["kind"] = "stream"
    buf, descs = build_run(suite, items)
    entries = check_run(suite, buf, descs)
    assert [e[0] for e in entries] == [0, 2, 0, 2, 0]
    assert entries[0][2] == 2 and entries[1] == (2, 2)
    # the packet after a failure continues in offset but starts a new entry
    assert entries[2][1:5] == (3, 1, 0, 90)
    assert entries[4][1:3] == (5, 2)


def test_empty_run_and_native_counters() -> None:
    need_native()
    suite = CipherSuite.CHACHA20_POLY1305_SHA256
    engine = native.NativeOffloadEngine()
    engine.install(CID, suite, _secret(suite), opener=True)
    assert engine.open_run(b"", []) == []
    assert engine.open_run(b"x" * 50, [(0, 50, CID), (0, 50, UNKNOWN_CID)]) == [(2, 0), (2, 1)]
    assert (engine.opened, engine.open_failures) == (0, 2)
    with pytest.raises(ValueError):
        engine.open_run(b"", [(0, 1)])  # type: ignore[list-item]
