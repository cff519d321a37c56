"""Waiting on a client connection: wait_connected(), wait_closed(), leaving the block.

Each wait makes its own future (no shield, no task per wait): a waiter cancelled alone
must leave the others waiting, and the end of a ``connect()`` block waits for the
closing period (bounded) without a ``wait_for`` task.
"""

from __future__ import annotations

import asyncio

import quicflow
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config


def test_a_cancelled_wait_leaves_the_other_waiters_waiting() -> None:
    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with quicflow.client_endpoint(configuration=client_config()) as ep:
                cm = ep.connect("127.0.0.1", server.address[1], wait_connected=False)
                conn = await cm.__aenter__()
                first = asyncio.ensure_future(conn.wait_connected())
                second = asyncio.ensure_future(conn.wait_connected())
                await asyncio.sleep(0)
                first.cancel()
                await asyncio.wait_for(second, 10)  # not cancelled with the first
                assert first.cancelled() and conn.conn.handshake_complete
                await conn.wait_connected()  # connected: returns at once

                closed_a = asyncio.ensure_future(conn.wait_closed())
                closed_b = asyncio.ensure_future(conn.wait_closed())
                await asyncio.sleep(0)
                closed_a.cancel()
                # a bounded wait that runs out says so and leaves the connection closing
                conn.close(0x17, "bye")
                assert await conn.wait_closed_for(0.001) is False
                assert not conn.conn.terminated
                await asyncio.wait_for(closed_b, 10)
                assert closed_a.cancelled() and conn.conn.terminated
                assert await conn.wait_closed_for(0.001) is True
                await cm.__aexit__(None, None, None)  # already closed: returns at once
                await conn.wait_closed()
                assert conn._close_waiters is None  # nothing left behind
        finally:
            server.close()

    run(main(), 30)


def test_wait_connected_raises_why_the_handshake_failed() -> None:
    """A refused certificate: every waiter gets the ConnectionClosedError, and the
    ``async with`` of a shared endpoint raises it too."""

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            cfg = client_config(server_name="not-this-server.example")  # name mismatch
            async with quicflow.client_endpoint(configuration=cfg) as ep:
                cm = ep.connect("127.0.0.1", server.address[1], wait_connected=False)
                conn = await cm.__aenter__()
                waits = [asyncio.ensure_future(conn.wait_connected()) for _ in range(3)]
                done = await asyncio.gather(*waits, return_exceptions=True)
                assert all(isinstance(e, quicflow.ConnectionClosedError) for e in done), done
                await cm.__aexit__(None, None, None)
                try:
                    async with ep.connect("127.0.0.1", server.address[1]):
                        raise AssertionError("connected despite the refused certificate")
                except quicflow.ConnectionClosedError as exc:
                    assert "certificate" in str(exc).lower(), exc
                assert ep.connections == []  # both forgotten
        finally:
            server.close()

    run(main(), 30)


def test_closing_the_client_endpoint_ends_every_wait_for_its_connections() -> None:
    """ep.close() takes the socket away: connections still in their closing period can
    never finish it, so whoever waits for their end (wait_closed) is released at once
    instead of waiting forever. (Leaving the ``async with`` of a connection does not wait
    for its closing period on a shared endpoint.)"""

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with quicflow.client_endpoint(configuration=client_config()) as ep:
                cms = [ep.connect("127.0.0.1", server.address[1]) for _ in range(3)]
                conns = [await cm.__aenter__() for cm in cms]
                await cms[0].__aexit__(None, None, None)  # returns while closing
                assert not conns[0].conn.terminated
                waiting = [asyncio.ensure_future(c.wait_closed()) for c in conns]
                await asyncio.sleep(0.01)  # all three wait: one closing, two open
                assert not any(w.done() for w in waiting)
                ep.close()
                await asyncio.wait_for(asyncio.gather(*waiting), 1.0)
                assert all(c.closed for c in conns)
        finally:
            server.close()

    run(main(), 30)
