"""A short connection's datagrams beyond its handshake: one request, one response, close.

Over real loopback sockets (through the test relay, no loss unless said). The asyncio
runner sends a round's answer after the application code the round made runnable when
that code is likely to send at once (aio/runner.py ``defer_send``):

- a client that reads a response to its end and closes right away sends its close and
  nothing else: no ACK of the response's last packets first, and so no blind copies of
  the close either (the server, missing that ACK, would repeat its packets were the
  close lost: transport/closing.py);
- a server's handler answers a request in the datagram that acknowledges it.

Before, the client sent an ACK, its close and three blind copies of it (five datagrams
where one does), and the server an ACK-only datagram before its response.
"""

from __future__ import annotations

import asyncio
import struct

import quicflow
from tests.support.quic_helpers import client_config, run, server_config
from tests.support.relay import LossyUdpRelay

RESPONSE = 16 * 1024  # more than one packet: a receiver acknowledges it at once


async def _settled(conn: quicflow.QuicConnection, server_side: list[quicflow.QuicConnection]
                   ) -> None:
    """Until neither side has anything in flight or an ACK to send (so what is counted
    next is the exchange's own)."""
    for _ in range(500):
        if (conn.conn.loss.bytes_in_flight == 0 and server_side
                and server_side[0].conn.loss.bytes_in_flight == 0):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.15)  # delayed ACKs (max_ack_delay 25 ms) and their repeats


def _perf_server(go: asyncio.Event, closed: asyncio.Future[BaseException]) -> object:
    async def handler(reader: quicflow.QuicStreamReader,
                      writer: quicflow.QuicStreamWriter) -> None:
        head = await reader.readexactly(8)
        (size,) = struct.unpack("!Q", head)
        if size == 0:  # the probe stream: reply, then wait for the client's close
            writer.write(b"ready")
            writer.write_eof()
            try:
                await reader.read(100)
                await asyncio.sleep(30)
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                if not closed.done():
                    closed.set_result(exc)
            return
        while await reader.read(65536):
            pass
        await go.wait()
        writer.write(b"r" * size)
        writer.write_eof()

    return handler


def test_a_client_that_closes_after_a_response_sends_only_its_close() -> None:
    async def main() -> tuple[int, dict[str, int], BaseException, dict[str, dict[str, int]]]:
        # (counters.datagrams_sent counts no close datagram; close_resends its copies)
        go = asyncio.Event()
        closed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        server_side: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            _perf_server(go, closed), "127.0.0.1", 0,  # type: ignore[arg-type]
            configuration=server_config(idle_timeout=60.0), connection_handler=server_side.append,
        )
        relay = await LossyUdpRelay(server.address, seed=1).start()
        try:
            async with quicflow.connect(
                "127.0.0.1", relay.address[1], configuration=client_config(idle_timeout=60.0)
            ) as conn:
                probe_r, probe_w = await conn.create_stream()
                probe_w.write(struct.pack("!Q", 0))
                assert await probe_r.read() == b"ready"
                reader, writer = await conn.create_stream()
                writer.write(struct.pack("!Q", RESPONSE))
                writer.write_eof()
                await _settled(conn, server_side)
                sent_before = conn.conn.counters.datagrams_sent
                go.set()
                got = 0
                while data := await reader.read(65536):
                    got += len(data)
                assert got == RESPONSE
            # the closing period's end (connect() no longer waits for it): every copy of
            # the close has gone by then, so close_resends counts them all
            await asyncio.wait_for(conn.wait_closed(), 10)
            exc = await asyncio.wait_for(closed, 10)
            counters = {"sent": conn.conn.counters.datagrams_sent - sent_before,
                        "close_resends": conn.conn.counters.close_resends,
                        "server_unacked": server_side[0].conn.loss.bytes_in_flight}
            return got, counters, exc, relay.stats()
        finally:
            await relay.close()
            server.close()

    got, counters, exc, stats = run(main(), 30)
    assert isinstance(exc, quicflow.ConnectionClosedError) and exc.by_peer, repr(exc)
    assert exc.error_code == 0
    # the close went once (before: three blind copies followed it) ...
    assert counters["close_resends"] == 0, counters
    # ... in place of the ACK of the response's last packets (``sent`` counts the
    # client's other datagrams since the response was asked for: the ACKs of its
    # earlier rounds; the relay hands the packets over one by one)
    assert counters["server_unacked"] > 0, counters
    assert stats["c2s"]["dropped"] == 0


def test_a_lost_close_after_a_response_still_reaches_the_server() -> None:
    """The close is the client's only datagram after the response and it is lost: the
    server, whose last packets nobody acknowledged, sends again at its PTO and gets the
    close as the answer, long before its idle timeout."""

    async def main() -> tuple[BaseException, dict[str, dict[str, int]], float]:
        go = asyncio.Event()
        closed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        server_side: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            _perf_server(go, closed), "127.0.0.1", 0,  # type: ignore[arg-type]
            configuration=server_config(idle_timeout=60.0), connection_handler=server_side.append,
        )
        relay = await LossyUdpRelay(server.address, seed=1).start()
        loop = asyncio.get_running_loop()
        try:
            conn_cm = quicflow.connect("127.0.0.1", relay.address[1],
                                       configuration=client_config(idle_timeout=60.0))
            async with conn_cm as conn:
                probe_r, probe_w = await conn.create_stream()
                probe_w.write(struct.pack("!Q", 0))
                assert await probe_r.read() == b"ready"
                reader, writer = await conn.create_stream()
                writer.write(struct.pack("!Q", 1000))  # one packet: no ACK owed at once
                writer.write_eof()
                await _settled(conn, server_side)
                relay.c2s.drop_next = 1  # the client's next datagram: its close
                go.set()
                assert await reader.read() == b"r" * 1000
                started = loop.time()
            exc = await asyncio.wait_for(closed, 10)  # the idle timeout is 60 s
            return exc, relay.stats(), loop.time() - started
        finally:
            await relay.close()
            server.close()

    exc, stats, took = run(main(), 30)
    assert isinstance(exc, quicflow.ConnectionClosedError) and exc.by_peer, repr(exc)
    assert exc.error_code == 0
    assert stats["c2s"]["dropped"] == 1, stats
    assert took < 5.0
