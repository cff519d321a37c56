"""The HTTP/3 state capture (``h3/snapshot.py``) driven by a hand-made peer: what it
refuses, what it keeps (partial frames, an incomplete decoder-stream instruction), that a
captured state restores to the same state, and that a malformed one installs nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import quicflow
from quicflow.h3 import aio as h3
from quicflow.h3 import frames as F
from quicflow.h3.connection import H3Connection, complete_instructions
from quicflow.h3.snapshot import H3CaptureError, capture_h3, restore_h3
from quicflow.wire.varint import encode_varint
from tests.support.prereq import have_module
from tests.support.quic_helpers import run
from tests.test_h3_errors import GOOD_HEAD, request_block
from tests.test_h3_loopback import app, h3_client_config, h3_server_config

SETTINGS = F.encode_frame(F.SETTINGS, F.encode_settings({}))


@pytest.fixture(autouse=True)
def _lsqpack(require: Callable[[bool, str], None]) -> None:
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")


async def with_raw_peer(act: Callable[[quicflow.QuicConnection], Any],
                        inspect: Callable[[H3Connection], Any]) -> Any:
    """A bare QUIC client speaking h3 by hand (``act``) against a migratable server;
    ``inspect`` gets the server side's H3Connection once the server has read it all."""
    server = await h3.serve(app, "127.0.0.1", 0, configuration=h3_server_config(),
                            migratable=True)
    try:
        async with quicflow.connect("127.0.0.1", server.address[1],
                                    configuration=h3_client_config()) as conn:
            _, control = await conn.create_stream(bidirectional=False)
            control.write(encode_varint(F.STREAM_CONTROL) + SETTINGS)
            await act(conn)
            await asyncio.sleep(0.3)  # let the server read it
            [face] = server.connections
            return inspect(face.h3)
    finally:
        server.close()


async def uni(conn: quicflow.QuicConnection, stype: int, data: bytes) -> None:
    _, writer = await conn.create_stream(bidirectional=False)
    writer.write(encode_varint(stype) + data)


def test_encoder_instruction_beyond_capacity_0_is_refused() -> None:
    """A peer that starts an Insert on its encoder stream (the decoder would hold half an
    instruction) makes the connection uncapturable; "Set Dynamic Table Capacity 0" does
    not."""

    def outcome(data: bytes) -> str:
        def inspect(h3c: H3Connection) -> str:
            try:
                capture_h3(h3c)
            except H3CaptureError as exc:
                return str(exc)
            return "captured"

        return str(run(with_raw_peer(lambda c: uni(c, F.STREAM_QPACK_ENCODER, data),
                                     inspect), timeout=20))

    assert outcome(b"\x20\x20") == "captured"
    # Set Dynamic Table Capacity 0 (the first instruction must set it: RFC 9204 §3.2.2),
    # then an Insert With Name Reference, cut
    assert "beyond capacity 0" in outcome(b"\x20\xc0")


def test_partial_state_is_captured_and_restores_to_the_same_state() -> None:
    """Half a HEADERS frame on a request stream and half a Stream Cancellation on the
    decoder stream are kept as plain data: capture -> JSON -> restore into a fresh
    connection -> capture gives the same state."""
    head = request_block(GOOD_HEAD)

    async def act(conn: quicflow.QuicConnection) -> None:
        await uni(conn, F.STREAM_QPACK_DECODER, b"\x7f")  # 6-bit prefix full: more follows
        _, writer = await conn.create_stream()
        writer.write(head[: len(head) // 2])

    def inspect(h3c: H3Connection) -> tuple[dict[str, Any], dict[str, Any]]:
        state = json.loads(json.dumps(capture_h3(h3c)))
        fresh = H3Connection(h3c.quic, is_client=False, capturable=True)
        restore_h3(fresh, state)
        return state, capture_h3(fresh)

    state, again = run(with_raw_peer(act, inspect), timeout=20)
    assert state == again
    assert state["decoder_partial"] == "fw=="  # b"\x7f"
    [request] = state["requests"]
    assert request["headers_done"] is False
    assert request["parser"]["type"] == F.HEADERS and request["parser"]["payload"] != ""


def test_malformed_state_installs_nothing() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        _, writer = await conn.create_stream()
        writer.write(request_block(GOOD_HEAD)[:3])

    def inspect(h3c: H3Connection) -> list[str]:
        state = capture_h3(h3c)
        errors = []
        for key, bad in (("requests", [{"id": "0"}]), ("max_peer_bidi", None),
                         ("decoder_partial", "!!"), ("format", 2), ("is_client", True)):
            fresh = H3Connection(h3c.quic, is_client=False, capturable=True)
            with pytest.raises(H3CaptureError) as info:
                restore_h3(fresh, {**state, key: bad})
            assert not fresh.started and not fresh.requests and fresh.peer_settings is None
            errors.append(str(info.value))
        with pytest.raises(H3CaptureError):  # a connection with a dynamic table
            restore_h3(H3Connection(h3c.quic, is_client=False), state)
        return errors

    assert len(run(with_raw_peer(act, inspect), timeout=20)) == 5


@given(st.lists(st.tuples(st.sampled_from([0x80, 0x40, 0x00]),
                          st.integers(0, 1 << 40)), max_size=20),
       st.lists(st.integers(1, 7), max_size=40))
def test_decoder_stream_is_cut_at_whole_instructions(
    instructions: list[tuple[int, int]], cuts: list[int]
) -> None:
    """Fed in pieces of any size, complete_instructions passes on exactly the
    instructions (each one whole) and keeps only an incomplete tail."""

    def encode(flag: int, value: int) -> bytes:
        bits = 7 if flag == 0x80 else 6
        mask = (1 << bits) - 1
        if value < mask:
            return bytes([flag | value])
        out = [flag | mask]
        value -= mask
        while value >= 128:
            out.append(0x80 | value & 0x7F)
            value >>= 7
        return bytes([*out, value])

    encoded = [encode(f, v) for f, v in instructions]
    stream = b"".join(encoded)
    boundaries = {0}
    pos = 0
    for item in encoded:
        pos += len(item)
        boundaries.add(pos)
    partial = bytearray()
    passed = b""
    offset = 0
    for size in [*cuts, len(stream)]:
        piece = stream[offset:offset + size]
        offset += len(piece)
        out = complete_instructions(partial, piece)
        passed += out
        assert len(passed) in boundaries  # never half an instruction
    assert passed == stream and not partial
