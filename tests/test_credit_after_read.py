"""A credit update that an application read makes owed goes out at once (real loopback
sockets): the read that ends a peer's stream frees a stream slot (MAX_STREAMS, RFC 9000
§4.6), as a read that frees window space owes MAX_STREAM_DATA / MAX_DATA (§4.2).

Such a read runs outside a receive turn, so nothing else may send soon: here the server's
application reads late, once the connection has gone quiet, and both sides
acknowledge at once (``max_ack_delay=0``: no ACK timer is left to carry the frame, the
server's ACK left in the turn that brought the FIN) and probe no path MTU
(``pmtud=False``), and the client, at the server's limit of one unidirectional stream,
waits for MAX_STREAMS with nothing in flight. Without the flush each next stream waited
for the idle timeout. The client, for its part, says it is blocked (STREAMS_BLOCKED) when
it finds the limit, not with whatever it sends next.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import quicflow
from tests.support import transfer as T
from tests.support.quic_helpers import run

STREAMS = 3
#: how long the server's application waits before it reads (see the handler)
QUIET = 0.2


async def _uploads(final_read_empty: bool, qlog_dir: str | None = None,
                   streams: int = STREAMS, client_pause: float = 0.0) -> int:
    async def handler(reader: quicflow.QuicStreamReader,
                      writer: quicflow.QuicStreamWriter) -> None:  # fmt: skip
        if final_read_empty:
            # the data is read before its FIN comes: the end comes with a read of b""
            await reader.readexactly(100)
        # read late, when the connection has gone quiet: everything is acknowledged,
        # the client waits for the stream slot
        await asyncio.sleep(QUIET)
        while await reader.read(1 << 20):
            pass

    server_cfg = T.server_configuration(max_streams_uni=1, max_ack_delay=0.0, pmtud=False,
                                        idle_timeout=5.0)
    client_cfg = T.client_configuration(max_ack_delay=0.0, pmtud=False, idle_timeout=5.0,
                                        qlog_dir=qlog_dir)
    server = await quicflow.serve(handler, "127.0.0.1", 0, configuration=server_cfg)
    done = 0
    try:
        async with quicflow.connect("127.0.0.1", server.address[1],
                                    configuration=client_cfg) as face:  # fmt: skip
            for _ in range(streams):
                await asyncio.sleep(client_pause)  # (a quiet connection: see the callers)
                _, writer = await face.create_stream(bidirectional=False)
                writer.write(b"x" * 100)
                if final_read_empty:
                    await asyncio.sleep(0.02)  # the data first, its FIN later
                writer.write_eof()
                await writer.wait_closed()
                done += 1
    finally:
        server.close()
    return done


def test_a_read_that_ends_a_stream_sends_max_streams() -> None:
    assert run(_uploads(final_read_empty=False), timeout=30) == STREAMS


def test_an_empty_read_at_the_end_sends_max_streams() -> None:
    assert run(_uploads(final_read_empty=True), timeout=30) == STREAMS


def _frames(trace: Path) -> list[tuple[str, str, Any]]:
    """(event name, frame type, frame) of every frame in a qlog JSON-SEQ trace."""
    out = []
    for chunk in trace.read_bytes().split(b"\x1e")[1:]:
        record = json.loads(chunk)
        for frame in record.get("data", {}).get("frames", []):
            out.append((record["name"], frame["frame_type"], frame))
    return out


def test_a_client_at_the_stream_limit_says_so_at_once(tmp_path: Path) -> None:
    """STREAMS_BLOCKED (RFC 9000 §4.6) leaves when ``create_stream`` finds the limit, not
    with whatever the client sends next (here: its ACK of the MAX_STREAMS it waited
    for). The client asks for its next stream once the connection has gone quiet (its
    upload acknowledged, the server's ACK repeats over), before the server reads."""
    assert run(_uploads(final_read_empty=False, qlog_dir=str(tmp_path), streams=2,
                        client_pause=QUIET / 2), timeout=30) == 2
    (trace,) = [p for p in tmp_path.iterdir() if p.name.endswith("_client.sqlog")]
    frames = _frames(trace)
    blocked = [i for i, (name, kind, _) in enumerate(frames)
               if name.endswith("packet_sent") and kind == "streams_blocked"]
    raised = [i for i, (name, kind, f) in enumerate(frames)
              if name.endswith("packet_received") and kind == "max_streams"]
    assert blocked and raised
    assert blocked[0] < raised[0]  # before the server raised the limit
