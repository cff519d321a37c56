"""A one-stream transfer is held by the receiver's connection window, not by a smaller
stream window: ``Configuration.max_stream_data`` defaults to ``max_data`` (4 MiB).

A connection's unread data is bounded by its connection window whatever its stream
windows; a stream window below it only made a single-stream download stop at 1 MiB, and
at each doubling after it, for STREAM_DATA_BLOCKED and MAX_STREAM_DATA (and the ACKs of
both) while the connection still had room (issue 11, 256 x 4 MiB: about 2.5 such stalls
per connection, a tenth of both processes' Python calls per connection).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import quicflow
from quicflow.transport.streams import SendStream
from tests.support.quic_helpers import client_config, run, server_config

MIB = 1024 * 1024
#: the whole response: as large as the client's initial connection window
RESPONSE = bytes(range(256)) * (4 * MIB // 256)


def test_an_unread_stream_gets_the_whole_connection_window() -> None:
    """The client's application reads nothing until the server has sent what the
    client's default windows allow: all 4 MiB leave without the sender ever waiting at a
    stream limit (with a 1 MiB stream window it stopped at 1 MiB and said so); then the
    bytes read are the bytes written."""
    faces: list[Any] = []

    async def respond(reader: quicflow.QuicStreamReader,
                      writer: quicflow.QuicStreamWriter) -> None:
        await reader.read()
        writer.write(RESPONSE)
        writer.write_eof()
        await writer.drain()

    async def main() -> None:
        server = await quicflow.serve(respond, "127.0.0.1", 0, configuration=server_config(),
                                      connection_handler=faces.append)
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=client_config()) as conn:
                reader, writer = await conn.create_stream()
                writer.write(b"get")
                writer.write_eof()
                sid = writer.stream_id
                send: SendStream | None = None
                for _ in range(4000):  # until it has sent all, or waits at a limit
                    if send is None and faces:  # (kept: a finished stream is dropped)
                        stream = faces[0].conn.streams.get(sid)
                        send = stream.send if stream is not None else None
                    if send is not None and (send.next_offset >= len(RESPONSE)
                                             or send.is_flow_blocked()):
                        break
                    await asyncio.sleep(0.005)
                assert send is not None
                assert send.blocked_sent_at == -1  # it never waited at a stream limit
                assert send.next_offset == len(RESPONSE)  # all of it before a read
                got = bytearray()
                while chunk := await reader.read(MIB):
                    got += chunk
                assert hashlib.sha256(got).digest() == hashlib.sha256(RESPONSE).digest()
        finally:
            server.close()

    run(main(), 60)
