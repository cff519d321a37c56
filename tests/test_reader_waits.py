"""A stream reader that drained its stream and reads again waits for the next data
without reading (issue 11: at 256 downloads a reader's every wake-up was a read that
found the data and a read that found nothing, half of the client's stream reads)."""

from __future__ import annotations

import asyncio
import struct

import pytest

import quicflow
from quicflow.apps.perf import CHUNK, CHUNK_SIZE, PerfServerHandler
from quicflow.transport.connection import Connection

from .support.quic_helpers import client_config, run, server_config

MIB = 1 << 20


def test_a_drained_reader_waits_without_reading_and_gets_every_byte() -> None:
    connections = 4
    size = 4 * MIB
    reads = {"data": 0, "nothing": 0}
    original = Connection.read_stream

    def counting(self: Connection, stream_id: int, max_bytes: int = -1,
                 now: float | None = None) -> bytes:
        data = original(self, stream_id, max_bytes, now)
        if data:
            reads["data"] += 1
        elif not self.stream_at_eof(stream_id):
            reads["nothing"] += 1  # a read that found nothing and then waited
        return data

    async def fetch(port: int) -> bytes:
        async with quicflow.connect("127.0.0.1", port, configuration=client_config()) as c:
            reader, writer = await c.create_stream()
            writer.write(struct.pack("!Q", size))
            writer.write_eof()
            got = bytearray()
            while True:  # as the perf client reads
                chunk = await reader.read(MIB)
                if not chunk:
                    return bytes(got)
                got += chunk

    async def main() -> None:
        server = await quicflow.serve(PerfServerHandler(), "127.0.0.1", 0,
                                      configuration=server_config())
        try:
            got = await asyncio.gather(*(fetch(server.address[1]) for _ in range(connections)))
        finally:
            server.close()
            await server.wait_closed()
        expected = (CHUNK * (size // CHUNK_SIZE + 1))[:size]
        assert all(data == expected for data in got)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Connection, "read_stream", counting)
        run(main(), timeout=60)
    assert reads["data"] >= connections * size // MIB  # (reads of at most 1 MiB)
    # (none on a clean path; a FIN that overtakes lost data makes the stream's end
    # known before its last bytes, and a reader woken then reads and finds nothing)
    assert reads["nothing"] <= connections, reads
