"""The client's first Handshake datagram (its Finished) is lost, over real loopback UDP
through a relay that drops exactly that datagram (issue 10, item 1): the handshake still
completes and the data arrives intact, with aioquic's client and with ours. The server
neither processes nor acknowledges 1-RTT before its handshake completes (RFC 9001 §5.7),
so a client that takes such an ACK as handshake confirmation (quic-go does) still resends
Finished; the in-memory test in test_hardening_protocol.py shows that part with such a
client, this one the whole path with sockets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import quicflow
from tests.support import echo_proto
from tests.support.aioquic_peer import AioquicProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import client_config, run, self_signed, server_config
from tests.support.relay import LossyUdpRelay, packet_kinds

MB = 1024 * 1024


def test_relay_classifies_coalesced_packets() -> None:
    from tests.support.memory_pair import MemoryPair

    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_complete)
    pair_datagrams = pair.client_ep.datagrams_to_send(pair.client, pair.now)
    assert "handshake" in packet_kinds(pair_datagrams[0])
    assert packet_kinds(b"\x40" + bytes(30)) == ["1rtt"]


async def _through_dropping_relay(client: Callable[[int], object]) -> tuple[object, dict]:
    accepted: list[quicflow.QuicConnection] = []
    server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                  configuration=server_config(),
                                  connection_handler=accepted.append)
    relay = await LossyUdpRelay(server.address, c2s_drop_nth=[("handshake", 1)]).start()
    try:
        result = await client(relay.address[1])  # type: ignore[misc]
        assert relay.c2s.dropped_on_purpose == [("handshake", 1)]
        stats = accepted[0].stats()["connection"]
        return result, stats
    finally:
        await relay.close()
        server.close()


def test_lost_finished_with_our_client() -> None:
    async def client(port: int) -> dict[str, object]:
        async with quicflow.connect("127.0.0.1", port, configuration=client_config()) as conn:
            reader, writer = await conn.create_stream()
            return await echo_proto.client_exchange(
                reader, writer, upload=echo_proto.payload(3, 2 * MB), download=3 * MB, seed=4)

    result, _ = run(_through_dropping_relay(client), timeout=60)
    assert result["ok"], result  # type: ignore[index]


@pytest.mark.interop
def test_lost_finished_with_aioquic_client(tmp_path: Path,
                                           require: Callable[[bool, str], None]) -> None:
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")
    cert, _ = self_signed().write(tmp_path, "server")

    async def client(port: int) -> dict[str, object]:
        async with AioquicProcess(
            "client", "--port", str(port), "--cafile", cert, "--server-name", "localhost",
            "--timeout", "30", "--upload", str(2 * MB), "--download", str(3 * MB),
        ) as peer:
            await peer.wait_exit(40)
            errors = [ev for ev in peer.events if ev["event"] == "error"]
            assert not errors, peer.events
            return await peer.next_event("result", timeout=1)

    result, _ = run(_through_dropping_relay(client), timeout=60)
    assert result["ok"], result  # type: ignore[index]
    assert result["streams"][0]["upload_len_seen_by_server"] == 2 * MB  # type: ignore[index]


