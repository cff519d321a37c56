"""Leaving ``async with ep.connect(...)`` on a shared client endpoint.

The exit sends the CONNECTION_CLOSE and returns: the connection stays in its closing
state (RFC 9000 §10.2) on the endpoint, which still answers late packets with the close
and repeats a lost one, so a sequential connect/close loop is not held up by each
connection's closing period (3 PTO, ~90 ms on loopback). ``quicflow.connect()`` (a
socket of its own) returns the same way and closes its socket once the closing period
is over, or when the event loop ends first (RFC 9000 §10.2 lets an endpoint that can
close its UDP socket end the period early).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

import quicflow
from quicflow.transport.state import CLOSING
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config
from tests.support.relay import LossyUdpRelay


async def _echo(reader: quicflow.QuicStreamReader, writer: quicflow.QuicStreamWriter) -> None:
    writer.write(await reader.read())
    writer.write_eof()


def _peer_error(face: quicflow.QuicConnection) -> tuple[int, str, bool]:
    try:
        face.raise_if_closed()
    except quicflow.ConnectionClosedError as exc:
        return exc.error_code, exc.reason, exc.by_peer
    raise AssertionError("the server connection is not closed")


def test_sequential_connect_close_loop_returns_while_each_connection_is_closing() -> None:
    count = 5

    async def main() -> None:
        server_side: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config(),
            connection_handler=server_side.append,
        )
        try:
            async with quicflow.client_endpoint(configuration=client_config()) as ep:
                left = []
                for i in range(count):
                    async with ep.connect("127.0.0.1", server.address[1]) as conn:
                        conn.close(0x30 + i, f"done {i}")
                    # the exit returned before the closing period ended, every time
                    assert conn.conn.state == CLOSING and not conn.conn.terminated, i
                    assert conn.closed and conn not in ep.connections
                    left.append(conn)
                # the closing periods still end on the endpoint's timer
                await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in left)), 10)
                assert all(c.conn.terminated for c in left)
                assert ep.runner.faces == {}  # and are forgotten then
            await asyncio.wait_for(
                asyncio.gather(*(f.wait_closed() for f in server_side)), 10)
            assert sorted(_peer_error(f) for f in server_side) == [
                (0x30 + i, f"done {i}", True) for i in range(count)]
        finally:
            server.close()

    run(main(), 30)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-endpoint", "own-socket"])
def test_lost_close_is_repeated_after_the_exit_and_the_server_sees_the_code(
    shared: bool,
) -> None:
    """Through a relay that drops the client's first CONNECTION_CLOSE: the exit has
    returned, and the client still gets the close to the server (its backoff repeat or
    its answer to the server's next packet) within the closing period, on a shared
    client endpoint and on a connect() socket of its own alike (the server's idle
    timeout is 60 s)."""
    code, reason = 0x2B, f"bye after the exit ({'shared' if shared else 'own'})"

    async def main() -> None:
        server_side: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            _echo, "127.0.0.1", 0, configuration=server_config(idle_timeout=60.0),
            connection_handler=server_side.append,
        )
        relay = await LossyUdpRelay(server.address, seed=2 if shared else 3).start()
        try:
            cfg = client_config(idle_timeout=60.0)
            async with AsyncExitStack() as stack:
                if shared:
                    ep = await stack.enter_async_context(
                        quicflow.client_endpoint("127.0.0.1", configuration=cfg))
                    opened = ep.connect("127.0.0.1", relay.address[1])
                else:
                    opened = quicflow.connect("127.0.0.1", relay.address[1],
                                              configuration=cfg)
                async with opened as conn:
                    reader, writer = await conn.create_stream()
                    writer.write(b"hello")
                    writer.write_eof()
                    assert await reader.read() == b"hello"
                    for _ in range(500):  # nothing in flight either way
                        if (conn.conn.loss.bytes_in_flight == 0 and server_side
                                and server_side[0].conn.loss.bytes_in_flight == 0):
                            break
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.1)  # the last ACKs have gone through
                    relay.c2s.drop_next = 1
                    conn.close(code, reason)
                assert conn.conn.state == CLOSING  # the exit did not wait
                await asyncio.wait_for(server_side[0].wait_closed(), 10)  # idle: 60 s
                assert _peer_error(server_side[0]) == (code, reason, True)
                sent_again = conn.conn.counters.close_resends + conn.conn.close_packets_seen
                assert sent_again >= 1
                assert relay.stats()["c2s"]["dropped"] == 1
        finally:
            await relay.close()
            server.close()

    run(main(), 30)


def test_connect_with_its_own_socket_returns_and_closes_the_socket_after_the_period() -> (
    None
):
    async def main() -> None:
        server_side: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config(),
            connection_handler=server_side.append,
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                conn.close(0x21, "own socket")
            # the exit did not wait for the closing period; the socket is still open to
            # answer late packets with the close
            assert conn.conn.state == CLOSING and not conn.conn.terminated
            sock = conn.runner.transport.socket
            assert sock.fileno() >= 0
            await asyncio.wait_for(conn.wait_closed(), 10)
            for _ in range(100):  # the background task closes it right after
                if sock.fileno() < 0:
                    break
                await asyncio.sleep(0.01)
            assert conn.conn.terminated and sock.fileno() < 0
            await asyncio.wait_for(server_side[0].wait_closed(), 10)
            assert _peer_error(server_side[0]) == (0x21, "own socket", True)
        finally:
            server.close()

    run(main(), 30)


def test_event_loop_ending_during_the_closing_period_closes_the_socket() -> None:
    """The program ends right after the block (asyncio.run returns): the closing period
    is cut short and the socket closed, with no warning about a pending task or an
    unclosed socket."""
    import gc
    import warnings

    held: list[quicflow.QuicConnection] = []

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                held.append(conn)
            assert conn.conn.state == CLOSING
        finally:
            server.close()

    gc.collect()  # (subprocess pipes earlier tests left are not this test's)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(main())
        gc.collect()
    (conn,) = held
    assert conn.runner.transport.socket.fileno() < 0
    assert conn.runner._closed
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [
        str(w.message) for w in caught]
