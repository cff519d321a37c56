"""The handoff channel's frames (migration/handoff.py): snapshots, forwarded datagrams
and progress reports, read incrementally by the successor's event loop."""

from __future__ import annotations

import json
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.migration.handoff import FrameParser, HandoffError, Offer, Received

_LEN = struct.Struct("!I")

datagram = st.tuples(
    st.binary(min_size=1, max_size=1500),
    st.sampled_from(["127.0.0.1", "::1", "::ffff:127.0.0.2"]),
    st.integers(1, 65535),
    st.integers(0, 3),
)
frame = st.one_of(
    st.tuples(st.just("snapshot"), st.binary(min_size=0, max_size=3000)),
    st.tuples(st.just("datagrams"), st.lists(datagram, min_size=1, max_size=5)),
)


def _wire(frames: list[tuple[str, Any]], trailer: dict[str, Any]) -> bytes:
    """What an Offer sends for ``frames`` and then the end mark with ``trailer``."""
    a, b = socket.socketpair()
    try:
        offer = Offer(a)
        for kind, payload in frames:
            if kind == "snapshot":
                offer.snapshot(payload)
            else:
                offer.datagrams([(d, len(d), (h, p), e) for d, h, p, e in payload])
        raw = json.dumps(trailer).encode()
        a.sendall(_LEN.pack(0xFFFFFFFF) + _LEN.pack(len(raw)) + raw)
        a.close()
        chunks = []
        while chunk := b.recv(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        a.close()
        b.close()


def _parser() -> FrameParser:
    channel = socket.socket(socket.AF_UNIX)
    channel.close()  # the parser reads no socket: it is fed
    return Received({}, [], channel, b"").frame_parser()


@settings(max_examples=60, deadline=None)
@given(st.lists(frame, max_size=6), st.lists(st.integers(1, 400), max_size=30))
def test_frames_survive_any_split(frames: list[tuple[str, Any]], cuts: list[int]) -> None:
    wire = _wire(frames, {"guard": "{}"})
    parser = _parser()
    got: list[tuple[str, Any]] = []
    pos = 0
    for cut in cuts:
        got += parser.feed(wire[pos : pos + cut])
        pos += cut
    got += parser.feed(wire[pos:])
    assert got[-1] == ("end", {"guard": "{}"}) and parser.ended
    assert parser.received.trailer == {"guard": "{}"}
    expected: list[tuple[str, Any]] = []
    for kind, payload in frames:
        if kind == "snapshot":
            expected.append((kind, payload))
        else:
            expected.append((kind, [(d, len(d), (h, p), e) for d, h, p, e in payload]))
    assert got[:-1] == expected


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_handoff_error_or_waits(data: bytes) -> None:
    """Whatever arrives, the parser returns frames, waits for more, or raises
    HandoffError; never another exception."""
    parser = _parser()
    try:
        parser.feed(data)
    except HandoffError:
        pass


def test_oversized_frames_are_refused() -> None:
    with pytest.raises(HandoffError, match="over the limit"):
        _parser().feed(_LEN.pack(0x80000000 | (64 << 20)))
    with pytest.raises(HandoffError, match="over the limit"):
        _parser().feed(_LEN.pack((1 << 30) + 1))


def test_progress_reports_then_the_answer() -> None:
    """The successor's progress reports reach the old process without blocking it, and
    its final answer after them is read by finish()."""
    a, b = socket.socketpair()
    try:
        offer = Offer(a, timeout=5)
        received = Received({}, [], b, b"")
        assert offer.progress() == 0  # nothing yet: returns at once
        received.report_progress(3)
        received.report_progress(7)
        assert offer.progress() == 7
        received.report_progress(9)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(offer.finish, {"guard": "{}"})
            assert list(received.frames()) == [] and received.trailer == {"guard": "{}"}
            received.acknowledge({"restored": 9})
            assert answer.result(timeout=5) == {"restored": 9}
    finally:
        a.close()
        b.close()


def test_forwarded_datagram_with_a_bad_host_is_refused() -> None:
    message = struct.pack("!HHBB", 443, 1, 0, 2) + b"\xff\xfe" + b"x"
    body = _LEN.pack(len(message)) + message
    with pytest.raises(HandoffError, match="malformed forwarded datagram"):
        _parser().feed(_LEN.pack(0x80000000 | len(body)) + body)
