"""The runner's map of source addresses to their normalized form (``PEER_CACHE``) is
bounded: datagrams from more source addresses than it holds empty it instead of growing
it, and the endpoint goes on working (real loopback sockets, the bound made small)."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

import quicflow
import quicflow.aio.runner as runner_module
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config

SENDERS = 12
BOUND = 4


def test_source_address_map_stays_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "PEER_CACHE", BOUND)

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with quicflow.client_endpoint(
                "127.0.0.1", configuration=client_config()
            ) as ep:
                runner = ep.runner
                counters = runner.transport.counters
                before = counters.datagrams_received
                sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                           for _ in range(SENDERS)]
                try:
                    for i, s in enumerate(sockets):  # junk from SENDERS source ports
                        s.sendto(bytes([0x40 | i]) + bytes(40), ep.address)
                        await asyncio.sleep(0.005)
                    for _ in range(200):
                        if counters.datagrams_received - before >= SENDERS:
                            break
                        await asyncio.sleep(0.01)
                    assert counters.datagrams_received - before >= SENDERS
                    assert 0 < len(runner._peers) <= BOUND
                finally:
                    for s in sockets:
                        s.close()
                # the endpoint still works: a hash-checked exchange through it
                async with ep.connect("127.0.0.1", server.address[1]) as conn:
                    reader, writer = await conn.create_stream()
                    result = await echo_proto.client_exchange(
                        reader, writer, upload=os.urandom(1000), download=5000, seed=1)
                    assert result["ok"], result
                assert len(runner._peers) <= BOUND
        finally:
            server.close()

    run(main(), 30)
