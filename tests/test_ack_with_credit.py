"""A download's ACK and the window credit its read owes leave in one datagram (real
loopback sockets, client qlog).

When a receive round gives a waiting reader data whose read will owe the peer window
credit (MAX_STREAM_DATA, MAX_DATA), the asyncio runner sends the round's ACK after the
reader's step (aio/runner.py ``defer_send``), so the update rides in the ACK's packet.
Before, the ACK left first and the update in a datagram of its own a callback later:
at 256 downloads of 4 MiB the client sent ~28 % more datagrams, each one more for the
server to read, open and process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import quicflow
from tests.support import transfer as T
from tests.support.quic_helpers import run

SIZE = 4 << 20
#: small windows that do not grow: many updates in a 4 MiB download
WINDOWS = {"max_stream_data": 128 << 10, "max_stream_data_window": 128 << 10,
           "max_data": 512 << 10, "max_data_window": 512 << 10}


def _sent_packets(trace: Path) -> list[list[str]]:
    """The frame types of each 1-RTT packet the client sent (qlog JSON-SEQ)."""
    out = []
    for chunk in trace.read_bytes().split(b"\x1e")[1:]:
        record: dict[str, Any] = json.loads(chunk)
        data = record.get("data", {})
        if record.get("name", "").endswith("packet_sent") and data.get("header", {}).get(
                "packet_type") == "1RTT":
            out.append([f["frame_type"] for f in data.get("frames", [])])
    return out


async def _download(qlog_dir: str) -> T.StreamResult:
    server = await quicflow.serve(T.serve_stream, "127.0.0.1", 0,
                                  configuration=T.server_configuration())
    try:
        cfg = T.client_configuration(qlog_dir=qlog_dir, **WINDOWS)
        async with quicflow.connect("127.0.0.1", server.address[1], configuration=cfg) as conn:
            return await T.download(conn, SIZE, seed=7)
    finally:
        server.close()


def test_window_updates_ride_with_the_ack(tmp_path: Path) -> None:
    result = run(_download(str(tmp_path)), timeout=60)
    assert result.ok and result.received == SIZE
    (trace,) = [p for p in tmp_path.iterdir() if p.name.endswith("_client.sqlog")]
    packets = _sent_packets(trace)
    updates = [p for p in packets if "max_stream_data" in p or "max_data" in p]
    alone = [p for p in updates if "ack" not in p]
    # 4 MiB through a 128 KiB stream window (and 512 KiB for the connection): 32 here
    assert len(updates) >= 16, (len(updates), len(packets))
    # each went with the ACK of the data whose read made it owed
    assert len(alone) <= len(updates) // 10, (len(alone), len(updates), alone[:5])
