"""HTTP/3 protocol errors: a hand-driven peer breaks one rule of RFC 9114 / 9204 at a time
against quicflow's HTTP/3 server and we read the error code it closes (or resets) with.
Plus hypothesis tests of the frame parser and SETTINGS decoding.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quicflow
from quicflow.aio.errors import ConnectionClosedError, StreamResetError
from quicflow.h3 import aio as h3
from quicflow.h3 import errors as E
from quicflow.h3 import frames as F
from quicflow.h3.errors import H3Error
from quicflow.wire.varint import encode_varint
from tests.support.prereq import have_module
from tests.support.quic_helpers import run
from tests.test_h3_loopback import app, body_of, h3_client_config, h3_server_config

SETTINGS = F.encode_frame(F.SETTINGS, F.encode_settings({}))
GET_PATH = "/bytes/10"


@pytest.fixture(autouse=True)
def _lsqpack(require: Callable[[bool, str], None]) -> None:
    require(have_module("pylsqpack"), "pylsqpack not installed (pip install 'quicflow[h3]')")


def request_block(headers: list[tuple[bytes, bytes]], stream_id: int = 0) -> bytes:
    import pylsqpack

    _, block = pylsqpack.Encoder().encode(stream_id, headers)  # static table only
    return F.encode_frame(F.HEADERS, block)


GOOD_HEAD = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"localhost"),
             (b":path", GET_PATH.encode())]


async def raw_peer(misbehave: Callable[[quicflow.QuicConnection], Awaitable[Any]]) -> Any:
    """A bare QUIC client speaking ALPN h3 by hand against our HTTP/3 server."""
    server = await h3.serve(app, "127.0.0.1", 0, configuration=h3_server_config())
    try:
        async with quicflow.connect("127.0.0.1", server.address[1],
                                    configuration=h3_client_config()) as conn:
            return await misbehave(conn)
    finally:
        server.close()


async def control_stream(conn: quicflow.QuicConnection, payload: bytes, fin: bool = False
                         ) -> None:
    _, writer = await conn.create_stream(bidirectional=False)
    writer.write(encode_varint(F.STREAM_CONTROL) + payload)
    if fin:
        writer.write_eof()


async def closed_with(conn: quicflow.QuicConnection) -> int:
    await conn.wait_closed()
    with pytest.raises(ConnectionClosedError) as info:
        conn.raise_if_closed()
    assert info.value.by_peer
    return info.value.error_code


def expect_close(code: int, action: Callable[[quicflow.QuicConnection], Awaitable[None]]) -> None:
    async def go(conn: quicflow.QuicConnection) -> int:
        await action(conn)
        return await closed_with(conn)

    assert run(raw_peer(go), timeout=20) == code


def test_second_control_stream_is_h3_stream_creation_error() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        await control_stream(conn, SETTINGS)
        await control_stream(conn, SETTINGS)

    expect_close(E.H3_STREAM_CREATION_ERROR, act)


def test_closing_the_control_stream_is_h3_closed_critical_stream() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        await control_stream(conn, SETTINGS, fin=True)

    expect_close(E.H3_CLOSED_CRITICAL_STREAM, act)


def test_control_stream_not_starting_with_settings_is_h3_missing_settings() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        await control_stream(conn, F.encode_frame(F.GOAWAY, encode_varint(0)))

    expect_close(E.H3_MISSING_SETTINGS, act)


def test_data_frame_on_control_stream_is_h3_frame_unexpected() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        await control_stream(conn, SETTINGS + F.encode_frame(F.DATA, b"x"))

    expect_close(E.H3_FRAME_UNEXPECTED, act)


def test_http2_setting_is_h3_settings_error() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        await control_stream(conn, F.encode_frame(F.SETTINGS, F.encode_settings({0x2: 1})))

    expect_close(E.H3_SETTINGS_ERROR, act)


def test_push_promise_on_request_stream_is_h3_frame_unexpected() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        await control_stream(conn, SETTINGS)
        _, writer = await conn.create_stream()
        writer.write(request_block(GOOD_HEAD) + F.encode_frame(F.PUSH_PROMISE, b"\x00\x00"))

    expect_close(E.H3_FRAME_UNEXPECTED, act)


def test_request_stream_ending_inside_a_frame_is_h3_frame_error() -> None:
    async def act(conn: quicflow.QuicConnection) -> None:
        await control_stream(conn, SETTINGS)
        _, writer = await conn.create_stream()
        writer.write(request_block(GOOD_HEAD) + encode_varint(F.DATA) + encode_varint(100)
                     + b"short")
        writer.write_eof()

    expect_close(E.H3_FRAME_ERROR, act)


def test_malformed_request_is_reset_with_h3_message_error_and_connection_lives() -> None:
    async def go(conn: quicflow.QuicConnection) -> bytes:
        await control_stream(conn, SETTINGS)
        reader, writer = await conn.create_stream()
        writer.write(request_block(GOOD_HEAD + [(b"Upper", b"x")]))
        writer.write_eof()
        with pytest.raises(StreamResetError) as info:
            await reader.read()
        assert info.value.error_code == E.H3_MESSAGE_ERROR
        # the next well-formed request on the same connection is served
        reader, writer = await conn.create_stream()
        writer.write(request_block(GOOD_HEAD, reader.stream_id))
        writer.write_eof()
        return await reader.read()

    raw = run(raw_peer(go), timeout=20)
    assert raw.endswith(body_of(10))  # HEADERS frame, then DATA carrying the 10 bytes


def test_grease_streams_frames_and_settings_are_ignored() -> None:
    async def go(conn: quicflow.QuicConnection) -> bytes:
        grease_frame = F.encode_frame(0x21 + 0x1F * 3, b"ignore me")
        await control_stream(conn, F.encode_frame(F.SETTINGS, F.encode_settings({0x5A5A: 7}))
                             + grease_frame)
        _, odd = await conn.create_stream(bidirectional=False)
        odd.write(encode_varint(0x21 + 0x1F * 9) + b"unknown stream type")
        reader, writer = await conn.create_stream()
        writer.write(grease_frame + request_block(GOOD_HEAD) + grease_frame)
        writer.write_eof()
        return await reader.read()

    assert run(raw_peer(go), timeout=20).endswith(body_of(10))


# ---------------------------------------------------------------- parsers (hypothesis)

frame_types = st.sampled_from([F.DATA, F.HEADERS, F.SETTINGS, F.GOAWAY, 0x21, 0x5A5A])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(frame_types, st.binary(max_size=300)), max_size=8),
       st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20))
def test_frame_parser_reassembles_frames_split_anywhere(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    wire = b"".join(F.encode_frame(t, p) for t, p in frames)
    parser = F.FrameParser()
    got: list[tuple[int, bytes]] = []
    pos, i = 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        parser.feed(wire[pos:pos + step])
        pos += step
        i += 1
        while (item := parser.next()) is not None:
            got.append(item)
    assert not parser.in_frame
    # DATA arrives in pieces (an empty frame as one empty piece); known frames whole;
    # unknown frames vanish
    merged: list[tuple[int, bytes]] = []
    for t, p in got:
        if t == F.DATA and merged and merged[-1][0] == F.DATA:
            merged[-1] = (F.DATA, merged[-1][1] + p)
        else:
            merged.append((t, p))
    expected: list[tuple[int, bytes]] = []
    for t, p in frames:
        if t in F.KNOWN_FRAMES:  # (an empty DATA frame too: an empty piece)
            if t == F.DATA and expected and expected[-1][0] == F.DATA:
                expected[-1] = (F.DATA, expected[-1][1] + p)
            else:
                expected.append((t, p))
    assert merged == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_frame_parser_and_settings_raise_only_h3_errors(data: bytes) -> None:
    parser = F.FrameParser(max_frame_size=64)
    parser.feed(data)
    try:
        while parser.next() is not None:
            pass
    except H3Error as exc:
        assert exc.code in (E.H3_FRAME_ERROR, E.H3_EXCESSIVE_LOAD)
    try:
        F.parse_settings(data)
    except H3Error as exc:
        assert exc.code in (E.H3_FRAME_ERROR, E.H3_SETTINGS_ERROR)


@given(st.integers(min_value=0, max_value=(1 << 60) - 1).map(lambda q: q * 4),
       st.binary(max_size=100))
def test_datagram_quarter_stream_id_round_trip(stream_id: int, payload: bytes) -> None:
    assert F.parse_datagram(F.encode_datagram(stream_id, payload)) == (stream_id, payload)


def test_datagram_quarter_stream_id_rfc9297_example() -> None:
    # stream 4 -> quarter stream ID 1
    assert F.encode_datagram(4, b"hi") == b"\x01hi"
    with pytest.raises(ValueError):
        F.encode_datagram(1, b"")


def test_missing_pylsqpack_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from quicflow.h3.connection import H3Connection
    from quicflow.transport.connection import Connection

    monkeypatch.setitem(sys.modules, "pylsqpack", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'quicflow\[h3\]'"):
        H3Connection(Connection.__new__(Connection), is_client=True)


def test_qpack_blocked_request_waits_for_the_encoder_stream() -> None:
    """A HEADERS frame that references dynamic-table entries not yet received blocks the
    stream (RFC 9204 §2.1.2); it is decoded and served once the encoder stream arrives."""
    import asyncio

    import pylsqpack

    async def go(conn: quicflow.QuicConnection) -> tuple[bytes, int]:
        await control_stream(conn, SETTINGS)
        encoder = pylsqpack.Encoder()
        setup = encoder.apply_settings(4096, 16)
        head = GOOD_HEAD + [(b"x-big", b"v" * 100), (b"x-other", b"w" * 50)]
        encoder.encode(1000, head)  # lsqpack inserts fields on their second use
        reader, writer = await conn.create_stream()
        inserts, block = encoder.encode(reader.stream_id, head)
        assert inserts and len(block) < 20  # refers to the entries inserted just now
        writer.write(F.encode_frame(F.HEADERS, block))
        writer.write_eof()
        await asyncio.sleep(0.2)  # the server holds the section, blocked
        blocked = servers[0].connections[0].h3.counters.blocked_sections
        _, enc = await conn.create_stream(bidirectional=False)
        enc.write(encode_varint(F.STREAM_QPACK_ENCODER) + setup + inserts)
        return await reader.read(), blocked

    servers: list[h3.H3Server] = []

    async def peer() -> tuple[bytes, int]:
        server = await h3.serve(app, "127.0.0.1", 0, configuration=h3_server_config())
        servers.append(server)
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=h3_client_config()) as conn:
                return await go(conn)
        finally:
            server.close()

    raw, blocked = run(peer(), timeout=20)
    assert blocked == 1
    assert raw.endswith(body_of(10))


def test_garbage_on_request_and_control_streams_never_harms_the_server() -> None:
    """Random and mutated bytes on a request stream or the control stream: the server
    answers with an H3/QPACK error code (or a response), never crashes, and serves the
    next connection."""
    import asyncio
    import random

    rng = random.Random(9114)
    good = request_block(GOOD_HEAD)
    payloads: list[tuple[bool, bytes]] = []
    for i in range(16):
        if i % 3 == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
        else:
            mutated = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        payloads.append((i % 2 == 0, data))
    codes = set(E.ERROR_NAMES) | {0}

    async def go() -> list[int | str]:
        server = await h3.serve(app, "127.0.0.1", 0, configuration=h3_server_config())
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx.get("exception")))
        outcomes: list[int | str] = []
        try:
            for on_request, data in payloads:
                async with quicflow.connect("127.0.0.1", server.address[1],
                                            configuration=h3_client_config()) as conn:
                    outcome: int | str | None = None
                    if on_request:
                        await control_stream(conn, SETTINGS)
                        reader, writer = await conn.create_stream()
                        writer.write(data)
                        writer.write_eof()
                        try:
                            await asyncio.wait_for(reader.read(), 0.5)
                            outcome = "answered"
                        except StreamResetError as exc:
                            outcome = exc.error_code
                        except (ConnectionClosedError, TimeoutError):
                            pass
                    else:
                        await control_stream(conn, data)
                    if outcome is None:
                        try:
                            await asyncio.wait_for(conn.wait_closed(), 0.5)
                            outcome = await closed_with(conn)
                        except TimeoutError:
                            outcome = "open"
                    outcomes.append(outcome)
            # the server still works
            async with h3.connect("127.0.0.1", server.address[1],
                                  configuration=h3_client_config()) as client:
                resp = await client.get(GET_PATH)
                assert await resp.read() == body_of(10)
        finally:
            server.close()
        assert not [e for e in errors if e is not None], errors
        return outcomes

    outcomes = run(go(), timeout=60)
    assert len(outcomes) == len(payloads)
    for outcome in outcomes:
        assert outcome in ("answered", "open") or outcome in codes, hex(int(outcome))
    assert any(isinstance(o, int) and o != 0 for o in outcomes)  # some were refused


def test_peer_allowing_fewer_than_3_uni_streams_is_refused() -> None:
    """RFC 9114 §6.2: the control and both QPACK streams must fit; a server allowing
    only 2 unidirectional streams gets H3_GENERAL_PROTOCOL_ERROR from our client."""
    from dataclasses import replace

    async def go() -> int:
        config = replace(h3_server_config(), max_streams_uni=2)
        server = await h3.serve(app, "127.0.0.1", 0, configuration=config)
        try:
            async with h3.connect("127.0.0.1", server.address[1],
                                  configuration=h3_client_config()) as client:
                await client.face.wait_closed()
                with pytest.raises(ConnectionClosedError) as info:
                    client.face.raise_if_closed()
                assert not info.value.by_peer
                return info.value.error_code
        finally:
            server.close()

    assert run(go(), timeout=20) == E.H3_GENERAL_PROTOCOL_ERROR
