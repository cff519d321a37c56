"""A connection's send turn takes the flush scheduled for it (real loopback sockets).

A write or a read's window update schedules a flush of its connection for later in the
loop; when a turn of that connection comes first (a receive round's, most often: with a
socket per connection the next round of a download often comes before the flush), it
sends what the flush would have, and the flush is dropped instead of building nothing
(issue 11: about 700 of 3,700 client turns per GiB at 256 connections)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import quicflow
from quicflow.aio.runner import EndpointRunner
from quicflow.endpoint.endpoint import Endpoint
from tests.support.quic_helpers import client_config, run, server_config


def test_a_turn_takes_the_flush_scheduled_for_its_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[bytes] = []

    async def handler(reader: quicflow.QuicStreamReader,
                      writer: quicflow.QuicStreamWriter) -> None:
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            got.append(chunk)
        writer.write_eof()

    async def main() -> None:
        server = await quicflow.serve(handler, "127.0.0.1", 0, configuration=server_config())
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=client_config()) as conn:
                reader, writer = await conn.create_stream()
                writer.write(b"first")
                await asyncio.sleep(0.2)  # sent, acknowledged, nothing left to do
                runner = conn.runner
                build = Endpoint.build_datagrams
                flush = EndpointRunner._flush_dirty
                in_flush = False
                builds: list[int] = []  # datagrams of each build, in the flush: -1 - n

                def counting(endpoint: Endpoint, *args: Any) -> Any:
                    result = build(endpoint, *args)
                    if endpoint is runner.endpoint:
                        n = len(result[1])
                        builds.append(-1 - n if in_flush else n)
                    return result

                def flushing(self: EndpointRunner) -> None:
                    nonlocal in_flush
                    in_flush = self is runner
                    try:
                        flush(self)
                    finally:
                        in_flush = False

                monkeypatch.setattr(Endpoint, "build_datagrams", counting)
                monkeypatch.setattr(EndpointRunner, "_flush_dirty", flushing)
                writer.write(b"second")  # schedules a flush
                runner._send(conn.conn)  # a turn of the connection comes first
                assert builds == [1]  # it sent the write
                for _ in range(3):
                    await asyncio.sleep(0)  # the scheduled flush's time has come
                # (the server's ACK may have come meanwhile and made a turn of its own)
                assert not [n for n in builds if n < 0], builds  # the flush built nothing
                writer.write_eof()
                assert await reader.read() == b""
            assert b"".join(got) == b"firstsecond"
        finally:
            server.close()

    run(main(), 30)
