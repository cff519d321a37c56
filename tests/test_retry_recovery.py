"""A Retry restarts the client's congestion control and loss recovery (RFC 9002 §6.3):
the Initial it answers was received but not processed, so it is neither acknowledged
nor lost. Before, that Initial was declared lost once the new one was acknowledged: a
congestion event at the start of every connection that met a Retry (a server under load
sends them), and an upload then crawled from a window of 7 datagrams."""

from __future__ import annotations

import hashlib
import os

import pytest

import quicflow
from quicflow.transport.congestion import SSTHRESH_INFINITE
from tests.support.quic_helpers import client_config, run, server_config


async def _echo(reader: quicflow.QuicStreamReader, writer: quicflow.QuicStreamWriter) -> None:
    writer.write(await reader.read())
    writer.write_eof()


@pytest.mark.parametrize("retry", ["always", "never"])
def test_upload_after_a_retry_keeps_slow_start(retry: str) -> None:
    data = os.urandom(400_000)

    async def main() -> None:
        server = await quicflow.serve(
            _echo, "127.0.0.1", 0, configuration=server_config(retry=retry))
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=client_config()) as conn:
                reader, writer = await conn.create_stream()
                writer.write(data)
                writer.write_eof()
                got = await reader.read()
                assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
                c = conn.conn
                assert (c.retry_scid is not None) == (retry == "always")
                # no packet declared lost, no congestion event: the window grew in slow
                # start through the whole upload (loopback loses nothing)
                assert c.counters.packets_lost == 0
                assert c.loss.cc.congestion_events == 0
                assert c.loss.cc.ssthresh == SSTHRESH_INFINITE
                assert c.loss.cc.cwnd > 100_000
        finally:
            server.close()

    run(main(), 30)


def test_retry_resets_the_flight_and_gives_an_rtt_estimate() -> None:
    """Sans-I/O, with a clock: the client's first flight leaves at t, the Retry arrives
    at t + 12 ms. Nothing of that flight stays in flight or is ever declared lost, the
    PTO backoff is back to 0, and the 12 ms round trip is the first RTT estimate (RFC
    9002 §6.3 MAY), so a lost second Initial is probed after a PTO of that path rather
    than of the 333 ms default."""
    from quicflow.endpoint.endpoint import Endpoint
    from tests.support.snapshot_peer import CLIENT_ADDR, SERVER_ADDR

    server = Endpoint(server_config(retry="always"), is_server=True)
    client = Endpoint(client_config(), is_server=False)
    t = 1000.0
    conn = client.connect(SERVER_ADDR, t, server_name="localhost")
    first = client.datagrams_to_send(conn, t)
    assert conn.loss.cc.bytes_in_flight > 0
    for d in first:
        server.receive(bytes(d), CLIENT_ADDR, t + 0.006)
    retries = server.pop_stateless()
    assert len(retries) == 1 and not server.all_connections
    client.receive(retries[0][0], SERVER_ADDR, t + 0.012)
    assert conn.retry_scid is not None
    loss = conn.loss
    assert loss.cc.bytes_in_flight == 0 and loss.pto_count == 0
    assert all(not sp.sent for sp in loss.spaces)
    assert loss.rtt.has_sample and loss.rtt.smoothed_rtt == pytest.approx(0.012)
    second = client.datagrams_to_send(conn, t + 0.012)
    assert second and loss.cc.bytes_in_flight > 0  # the ClientHello again, new keys
    assert conn.counters.packets_lost == 0 and loss.cc.congestion_events == 0
    # the second flight's PTO: from the Retry's round trip, far below the default's ~1 s
    deadline = conn.timer()
    assert deadline is not None and deadline - (t + 0.012) < 0.1

