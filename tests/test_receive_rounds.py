"""A receive round's kernel buffers of one flight reach the endpoint in one call.

The kernel hands GRO-coalesced datagrams over in buffers of at most 64 KiB; a round reads
up to sixteen. The runner gives the endpoint those read back to back from one peer in one
``Endpoint.receive_batches`` call, where a run of one connection goes on from buffer to
buffer: a round of one connection's download costs one lookup and one bookkeeping pass,
not one per kernel buffer (issue 11: at 256 connections a round held 3-4 buffers of one
connection)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from quicflow.datapath import probe_capabilities

CAPS = probe_capabilities(socket.AF_INET)


def test_a_download_costs_one_lookup_per_receive_round(
        require: Callable[[bool, str], None]) -> None:
    """16 MiB over loopback in 1200-byte datagrams: the client's endpoint looks up a
    connection about once per receive call (58-60 lookups for 52-53 calls; 297 for 54 when
    every kernel buffer was looked up on its own), and the bytes arrive intact."""
    require(CAPS.gso and CAPS.gro, "UDP GSO/GRO not available on this kernel")
    from tests.support.quic_helpers import loopback_download

    stats, _ = loopback_download(16 << 20, seed=5)
    datapath, endpoint = stats["datapath"], stats["endpoint"]
    assert datapath["segments_per_recv_batch"] >= 20, datapath  # GRO did coalesce
    assert endpoint["lookups"] <= 1.5 * datapath["batches_received"], (endpoint, datapath)
    assert endpoint["segments_received"] >= 16 << 20 // 1200


def test_a_full_round_and_a_few_more_buffers_are_answered_with_one_ack() -> None:
    """About twenty of the server's packets wait in the client's socket (the basic
    backend: no GRO, so a kernel buffer each) when the client reads it: one receive
    round takes them all, and the client answers with one ACK. With rounds of sixteen
    buffers and nothing read ahead the remainder was a round of its own and cost a
    second ACK (issue 11: at 256 connections a socket read often found a full round
    and a burst or two more)."""
    import asyncio

    import quicflow
    from quicflow.aio.runner import RECV_BATCH, RECV_TAIL
    from tests.support.quic_helpers import client_config, run, server_config

    sent = 19
    ready = asyncio.Event()

    async def handler(reader: quicflow.QuicStreamReader,
                      writer: quicflow.QuicStreamWriter) -> None:
        await reader.read(2)
        for _ in range(sent):  # each write its own flush, so its own datagram
            writer.write(b"x" * 100)
            await asyncio.sleep(0)
        ready.set()
        await reader.read()  # (until the client's FIN)

    async def main() -> None:
        # (without the ACK Frequency extension the client acknowledges every second
        # ack-eliciting packet, so a round of more than one answers at once)
        server = await quicflow.serve(handler, "127.0.0.1", 0,
                                      configuration=server_config(ack_frequency=False))
        try:
            # (a long max_ack_delay keeps the server's probe timeout from firing while
            # the client reads nothing: its probes would add to the packets waiting)
            async with quicflow.connect("127.0.0.1", server.address[1], backend="basic",
                                        configuration=client_config(max_ack_delay=0.5),
                                        ) as conn:
                reader, writer = await conn.create_stream()
                await asyncio.sleep(0.2)  # the handshake's last packets come and go
                runner = conn.runner
                fd = runner.transport.fileno()
                runner.loop.remove_reader(fd)  # the client reads nothing for a while
                writer.write(b"go")
                await asyncio.wait_for(ready.wait(), 5)
                await asyncio.sleep(0.05)  # (anything paced has left by now)
                before = conn.stats()
                runner.read_now()
                after = conn.stats()
                runner.loop.add_reader(fd, runner.read_now)
                read = (after["datapath"]["datagrams_received"]
                        - before["datapath"]["datagrams_received"])
                assert RECV_BATCH < read < RECV_BATCH + RECV_TAIL, (before, after)
                acks = (after["connection"]["ack_frames_sent"]
                        - before["connection"]["ack_frames_sent"])
                assert acks == 1, (read, before, after)
                got = b""
                while len(got) < 100 * sent:
                    got += await reader.read(1 << 16)
                assert got == b"x" * 100 * sent
                writer.write_eof()
        finally:
            server.close()

    run(main(), 30)
