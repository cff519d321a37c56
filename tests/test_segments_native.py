"""The native engine's ``short_run`` (``crypto/_native_src/segments.c``) against its Python
twin, ``endpoint.segments.short_run_python``, and ``open_run`` given its result.

The C function answers as the Python one on generated GRO buffers (the same None, the
same entries, the caller's DCID object in each, ValueError where no segment starts), and
its result, a read-only sequence, indexes like the list. ``open_run`` walks that result by
its stride instead of unpacking one tuple per datagram: it must give the entries, the
failures, the key state and the counters that the same run as a list of tuples gives, on
either engine. Skips without the extension (fails under ``QUICFLOW_REQUIRE_ALL=1``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.crypto import CipherSuite, native
from quicflow.crypto.extension import EXT
from quicflow.endpoint.segments import short_run_python
from tests.test_crypto_open_run import (
    CID,
    UNKNOWN_CID,
    _key_state,
    _receivers,
    _secret,
    build_run,
    need_native,
    stream_payload,
)
from tests.test_endpoint_segments import batches

HYP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(batches(), st.booleans())
def test_short_run_twins_agree(batch: tuple[bytes, int, int, int], as_view: bool) -> None:
    need_native()
    raw, segment_size, cid_len, pos = batch
    data: bytes | memoryview = memoryview(raw) if as_view else raw
    for key in (bytes(raw[pos + 1 : pos + 1 + cid_len]), bytes(cid_len), b""):
        expected = short_run_python(data, pos, segment_size, key)
        got = EXT.short_run(data, pos, segment_size, key)
        if expected is None:
            assert got is None
            continue
        assert got is not None and list(got) == expected and len(got) == len(expected)
        assert got[-1] == expected[-1] and got[0] == expected[0]
        assert all(entry[2] is key for entry in got)  # the caller's object, as in the list
        with pytest.raises(IndexError):
            got[len(expected)]


@pytest.mark.parametrize("pos, segment_size", [(0, 0), (0, -3), (-1, 10), (40, 10), (41, 10)])
def test_no_segment_at_pos_is_a_value_error_in_both(pos: int, segment_size: int) -> None:
    need_native()
    data = bytes(40)
    for twin in (short_run_python, EXT.short_run):
        with pytest.raises(ValueError):
            twin(data, pos, segment_size, b"")


@st.composite
def strided_runs(draw: st.DrawFn) -> tuple[CipherSuite, bytes, int, bytes]:
    """Packets of one DCID sealed into equal segments (the last one may be shorter):
    stream data that continues or jumps, other frames, garbage, tampered tags, a key
    update, packet numbers that repeat or skip."""
    suite = draw(st.sampled_from(list(CipherSuite)))
    size = draw(st.integers(24, 90))  # the payload of every segment but the last
    count = draw(st.integers(1, 20))
    cid = draw(st.sampled_from([CID] * 5 + [UNKNOWN_CID]))
    items = []
    offset = 0
    for i in range(count):
        payload_len = size if i < count - 1 else draw(st.integers(16, size))
        kind = draw(st.sampled_from(["cont"] * 6 + ["jump", "ping", "garbage"]))
        if kind in ("cont", "jump"):
            if kind == "jump":
                offset += draw(st.integers(1, 50))
            data_len = draw(st.integers(0, payload_len - 16))
            fin = draw(st.integers(0, 12)) == 0
            head = stream_payload(4, offset, bytes(data_len), fin, off_bit=True, vsize=4)
            payload = head + bytes(max(0, payload_len - len(head)))
            offset += data_len
        elif kind == "ping":
            payload = b"\x01" + bytes(payload_len - 1)
        else:
            payload = draw(st.binary(min_size=payload_len, max_size=payload_len))
        items.append({
            "kind": "garbage", "garbage": payload[:payload_len],
            "pn_step": draw(st.sampled_from([1] * 12 + [2, 0, -1])),
            "fate": draw(st.sampled_from(["ok"] * 12 + ["tamper"])),
            "update": draw(st.integers(0, 20)) == 0, "pn_len": 4,
        })
        if cid == UNKNOWN_CID:
            items[-1]["fate"] = "unknown"
    buf, descs = build_run(suite, items, first_pn=draw(st.integers(0, 1000)))
    segment = descs[0][1]
    assert all(length == segment for _, length, _ in descs[:-1])
    return suite, buf, segment, cid


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strided_runs())
def test_open_run_of_a_strided_run_equals_the_list(run: tuple[CipherSuite, bytes, int, bytes]
                                                   ) -> None:
    need_native()
    suite, buf, segment, cid = run
    listed = short_run_python(buf, 0, segment, cid)
    strided = EXT.short_run(buf, 0, segment, cid)
    assert listed is not None and strided is not None
    engines: list[Any] = _receivers(suite, True)  # software, software, native
    engines.append(native.NativeOffloadEngine())
    engines[-1].install(CID, suite, _secret(suite), opener=True)
    expected = engines[0].open_run(buf, listed)
    assert engines[1].open_run(buf, strided) == expected  # the Python engine indexes it
    assert engines[2].open_run(buf, strided) == expected
    assert engines[3].open_run(buf, listed) == expected
    for engine in engines[1:]:
        assert _key_state(engine) == _key_state(engines[0])
        assert (engine.opened, engine.open_failures) == (engines[0].opened,
                                                         engines[0].open_failures)


def test_a_full_gro_buffer_opens_as_one_entry() -> None:
    need_native()
    suite = CipherSuite.AES_128_GCM_SHA256
    items = []
    for i in range(64):
        payload = stream_payload(0, 1100 * i, bytes([i]) * 1100, i == 63, off_bit=True, vsize=4)
        items.append({"kind": "garbage", "garbage": payload, "pn_step": 1, "fate": "ok",
                      "update": False, "pn_len": 4})
    buf, descs = build_run(suite, items, first_pn=7)
    engine = native.NativeOffloadEngine()
    engine.install(CID, suite, _secret(suite), opener=True)
    entries = engine.open_run(buf, EXT.short_run(buf, 0, descs[0][1], CID))
    assert entries == [(0, 7, 64, 0, 0, b"".join(bytes([i]) * 1100 for i in range(64)), True)]
    assert (engine.opened, engine.open_failures) == (64, 0)
