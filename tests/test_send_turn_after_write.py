"""An ACK that wakes a blocked writer: the connection's send turn waits for what it writes.

A server's writer blocks in ``drain()`` while its connection holds more written,
unacknowledged bytes than ``send_buffer_per_connection``. An ACK that frees room wakes
it; it writes its next chunk in the loop's next pass. The runner used to take the
connection's send turn at once, after the ACK: by then everything written was often
sent already, so that turn built nothing, and the write's own flush was a second turn
(issue 11, 256 x 16 MiB: 3.5 k of 12.8 k turns after ACKs per 4 GiB built nothing).
The turn now comes right after the writer's step: one build for both.

Traced over real loopback sockets, in the order the server did them: the events
handed to the connection's face (an ACK round's StreamWritable and buffer
accounting, which is where its writer is woken), its send turns (empty or not) and its
writer's writes. The pattern that went away: events, then a turn that built nothing,
then the write.
"""

from __future__ import annotations

from typing import Any

import pytest

import quicflow
from quicflow.aio import connection as face_mod
from quicflow.aio import runner as runner_mod
from quicflow.aio import streams as streams_mod
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config

DOWNLOAD = 16 * echo_proto.CHUNK  # written in 1 MiB chunks, drain() after each


def test_ack_that_wakes_the_writer_gives_one_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    # the server's: "e" events handed over, "0" an empty turn, "+" a turn that sent,
    # "w" a write
    events: list[str] = []
    send = runner_mod.EndpointRunner._send
    write = streams_mod.QuicStreamWriter.write
    handle = face_mod.QuicConnection.handle_events

    def counted_send(self: Any, conn: Any) -> None:
        before = conn.counters.datagrams_sent
        send(self, conn)
        if not conn.is_client:
            events.append("+" if conn.counters.datagrams_sent > before else "0")

    def counted_write(self: Any, data: Any) -> None:
        if not self.connection.conn.is_client:
            events.append("w")
        write(self, data)

    def traced_events(self: Any, batch: Any) -> Any:
        if not self.conn.is_client:
            events.append("e")
        return handle(self, batch)

    monkeypatch.setattr(runner_mod.EndpointRunner, "_send", counted_send)
    monkeypatch.setattr(face_mod.QuicConnection, "handle_events", traced_events)
    monkeypatch.setattr(streams_mod.QuicStreamWriter, "write", counted_write)

    async def main() -> dict[str, object]:
        # a bound below one chunk: the writer waits after every write until the
        # chunk is nearly all acknowledged, i.e. sent
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(send_buffer_per_connection=256 * 1024),
        )
        try:
            port = server.address[1]
            async with quicflow.connect("127.0.0.1", port,
                                        configuration=client_config()) as conn:
                reader, writer = await conn.create_stream()
                return await echo_proto.client_exchange(
                    reader, writer, upload=b"", download=DOWNLOAD, seed=7)
        finally:
            server.close()

    result = run(main(), 60)
    assert result["ok"], result
    trace = "".join(events)
    chunks = DOWNLOAD // echo_proto.CHUNK
    assert trace.count("w") == chunks + 1  # the response header, then the chunks
    # the ACK round that woke the writer, its empty turn, the write (before: for 12-15
    # of the 16 chunks)
    assert trace.count("e0w") == 0, trace
    assert trace.count("ew") >= chunks // 2, trace  # (the round, the write, its turn)
