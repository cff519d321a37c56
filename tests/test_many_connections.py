"""Many connections at once over real loopback sockets: bytes intact, batching kept.

The batching counters are the point: with many connections each one's pacing budget is
small, and handing out one datagram's worth at a time made every engine call build one
packet (issue 11: 1.03 packets per engine call with 64 connections). The pacer now holds
a connection's data back until a burst's worth of budget has built up.
"""

from __future__ import annotations

import asyncio

import quicflow
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config

CONNECTIONS = 64
DOWNLOAD = 512 * 1024
#: measured here: ~21 with the fix, 1.2 without it
PACKETS_PER_ENGINE_CALL_FLOOR = 8.0


async def _download(port: int, seed: int) -> dict[str, object]:
    async with quicflow.connect("127.0.0.1", port, configuration=client_config()) as conn:
        reader, writer = await conn.create_stream()
        return await echo_proto.client_exchange(
            reader, writer, upload=b"", download=DOWNLOAD, seed=seed
        )


def test_64_connections_bulk_keep_batching() -> None:
    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            port = server.address[1]
            results = await asyncio.gather(*(_download(port, s) for s in range(CONNECTIONS)))
            assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:2]
            stats = server.stats()
        finally:
            server.close()
        endpoint = stats["endpoint"]
        assert endpoint["connections_accepted"] == CONNECTIONS
        # the 64 downloads left through the engine, in 1200-byte datagrams
        assert endpoint["engine_packets_sealed"] * 1200 > CONNECTIONS * DOWNLOAD
        assert endpoint["packets_per_engine_call"] >= PACKETS_PER_ENGINE_CALL_FLOOR, endpoint
        assert stats["datapath"]["segments_per_gso_call"] >= PACKETS_PER_ENGINE_CALL_FLOOR

    run(main(), 120)
