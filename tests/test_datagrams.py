"""DATAGRAM frames (RFC 9221): negotiation by transport parameter, both directions, never
retransmitted, drops counted, limits enforced; quicflow<->quicflow and aioquic both ways."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

import quicflow
from quicflow.crypto.epoch import Epoch
from quicflow.transport.errors import PROTOCOL_VIOLATION
from quicflow.transport.events import ConnectionTerminated, DatagramReceived
from quicflow.wire import frames as F
from tests.support import echo_proto
from tests.support.aioquic_peer import AioquicProcess
from tests.support.memory_pair import MemoryPair
from tests.support.quic_helpers import client_config, run, server_config
from tests.test_interop_aioquic import pem  # noqa: F401  (fixture)
from tests.test_retry_tokens import client_config as mem_client
from tests.test_retry_tokens import server_config as mem_server


@given(st.binary(max_size=2000))
def test_datagram_frame_round_trip(data: bytes) -> None:
    out = bytearray()
    F.encode_frame(F.Datagram(data), out)
    assert F.parse_frames(bytes(out)) == [F.Datagram(data)]
    assert F.parse_frames(b"\x30" + data) == [F.Datagram(data, with_length=False)]  # to the end


def _pair(loss: float = 0.0, **kw: object) -> MemoryPair:
    return MemoryPair(loss=loss, seed=3,
                      server_config=mem_server(max_datagram_frame_size=1200, **kw),
                      client_config=mem_client(max_datagram_frame_size=1200))


def _received(conn: object) -> list[bytes]:
    return [e.data for e in conn.pop_events()  # type: ignore[attr-defined]
            if isinstance(e, DatagramReceived)]


def test_datagrams_both_ways_in_memory() -> None:
    pair = _pair()
    pair.run(lambda: pair.client.handshake_confirmed)
    server = pair.server_conns[0]
    server.pop_events()
    pair.client.pop_events()
    sent = [f"up {i}".encode() * 20 for i in range(30)]
    for d in sent:
        pair.client.send_datagram(d)
    for i in range(30):
        server.send_datagram(f"down {i}".encode())
    got_up: list[bytes] = []
    got_down: list[bytes] = []

    def done() -> bool:
        got_up.extend(_received(server))
        got_down.extend(_received(pair.client))
        return len(got_up) == 30 and len(got_down) == 30

    pair.run(done)
    assert got_up == sent
    assert got_down == [f"down {i}".encode() for i in range(30)]
    assert pair.client.counters.datagram_frames_sent == 30
    assert server.counters.datagram_frames_received == 30


def test_lost_datagrams_are_not_retransmitted() -> None:
    pair = _pair(loss=0.3)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    server = pair.server_conns[0]
    server.pop_events()
    for i in range(100):
        pair.client.send_datagram(f"{i:04d}".encode() * 150)  # one per packet
    sid = pair.client.open_stream()  # reliable data after them keeps the clock going
    pair.client.send_stream_data(sid, b"x" * 50_000, end_stream=True)
    got: list[bytes] = []
    read = [0]

    def done() -> bool:
        got.extend(_received(server))
        read[0] += len(server.read_stream(sid))
        return read[0] == 50_000 and server.stream_at_eof(sid)

    pair.run(done)
    assert pair.client.counters.datagram_frames_sent == 100  # each sent once, lost or not
    assert len(got) == len(set(got)) < 100  # some lost, none twice
    assert pair.client.counters.packets_lost > 0


def test_send_queue_drops_the_oldest_and_counts() -> None:
    pair = _pair(max_datagram_queue=4)
    pair.run(lambda: pair.client.handshake_confirmed)
    server = pair.server_conns[0]
    pair.client.pop_events()
    for i in range(10):
        server.send_datagram(bytes([i]))
    assert server.counters.datagram_frames_dropped == 6
    assert server.datagrams_pending == [bytes([i]) for i in range(6, 10)]


def test_limits() -> None:
    pair = _pair()
    pair.run(lambda: pair.client.handshake_confirmed)
    with pytest.raises(ValueError, match="does not fit"):
        pair.client.send_datagram(bytes(1200))
    plain = MemoryPair()  # DATAGRAM frames not negotiated
    plain.run(lambda: plain.client.handshake_confirmed)
    with pytest.raises(ValueError, match="does not accept"):
        plain.client.send_datagram(b"x")


def test_unannounced_datagram_frame_is_a_protocol_violation() -> None:
    """A peer that sends DATAGRAM frames we never allowed is closed with
    PROTOCOL_VIOLATION (RFC 9221 §3)."""
    pair = MemoryPair(server_config=mem_server(),
                      client_config=mem_client(max_datagram_frame_size=1200))
    pair.run(lambda: pair.client.handshake_confirmed)
    server = pair.server_conns[0]
    assert pair.client.peer_params is not None
    pair.client.peer_params.max_datagram_frame_size = 1200  # a client that ignores it
    pair.client.send_datagram(b"unwanted")
    pair.run(lambda: pair.client.state >= 2 and server.state >= 2)
    closes = [e for e in pair.client.pop_events() if isinstance(e, ConnectionTerminated)]
    assert closes and closes[-1].error_code == 0x0A and closes[-1].frame_type == 0x31


@pytest.mark.parametrize("frame_type", [0x30, 0x31])
def test_datagram_frame_size_limit_counts_type_length_and_data(frame_type: int) -> None:
    """RFC 9221 §3, §5: max_datagram_frame_size is the whole frame's size (type, Length
    field of a 0x31 frame, data); a larger frame closes with PROTOCOL_VIOLATION. Before,
    a 0x31 frame up to 2 bytes over (its Length field) was taken."""
    from .support.forge import forge

    limit = 100
    length_field = 1 if frame_type == 0x31 else 0
    for over in (0, 1):
        pair = MemoryPair(server_config=mem_server(max_datagram_frame_size=limit),
                          client_config=mem_client(max_datagram_frame_size=limit))
        pair.run(lambda: pair.client.handshake_confirmed  # noqa: B023
                 and bool(pair.server_conns)  # noqa: B023
                 and pair.server_conns[0].handshake_confirmed)  # noqa: B023
        server = pair.server_conns[0]
        size = limit + over
        data_len = size - 1 - 2 * length_field  # (a 2-byte Length field)
        head = bytes([frame_type]) + ((0x4000 | data_len).to_bytes(2, "big")
                                      if length_field else b"")
        frame = head + bytes(data_len)
        assert len(frame) == size  # (0x30: its data runs to the packet's end)
        received = server.counters.datagram_frames_received
        pair.server.receive(forge(pair.client, Epoch.ONE_RTT, frame), pair.client_addr,
                            pair.now)
        if over:
            assert server.close_error is not None
            assert server.close_error[0] == PROTOCOL_VIOLATION
        else:
            assert server.close_error is None
            assert server.counters.datagram_frames_received == received + 1


def test_datagrams_over_loopback_between_quicflow_peers() -> None:
    async def main() -> None:
        async def echo(conn: quicflow.QuicConnection) -> None:
            while True:
                try:
                    conn.send_datagram(await conn.receive_datagram())
                except quicflow.ConnectionClosedError:
                    return

        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(max_datagram_frame_size=1500),
            connection_handler=echo,
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1],
                configuration=client_config(max_datagram_frame_size=1500),
            ) as conn:
                sent = {f"datagram {i}".encode() * 10 for i in range(50)}
                for d in sorted(sent):
                    conn.send_datagram(d)
                got = set()
                while len(got) < len(sent):
                    got.add(await asyncio.wait_for(conn.receive_datagram(), 5))
                assert got == sent
        finally:
            server.close()

    run(main(), 30)


@pytest.mark.interop
def test_datagrams_with_aioquic_server(pem: tuple[str, str]) -> None:  # noqa: F811
    async def main() -> None:
        cert, key = pem
        async with AioquicProcess("server", "--cert", cert, "--key", key,
                                  "--datagrams") as peer:
            assert peer.port is not None
            async with quicflow.connect(
                "127.0.0.1", peer.port,
                configuration=client_config(max_datagram_frame_size=65536),
            ) as conn:
                sent = [f"to aioquic {i}".encode() for i in range(20)]
                for d in sent:
                    conn.send_datagram(d)
                got = [await asyncio.wait_for(conn.receive_datagram(), 5) for _ in sent]
                assert sorted(got) == sorted(sent)  # echoed by aioquic, intact

    run(main(), 60)


@pytest.mark.interop
def test_datagrams_with_aioquic_client(pem: tuple[str, str]) -> None:  # noqa: F811
    async def main() -> None:
        cert, _ = pem

        async def echo(conn: quicflow.QuicConnection) -> None:
            while True:
                try:
                    conn.send_datagram(await conn.receive_datagram())
                except quicflow.ConnectionClosedError:
                    return

        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(max_datagram_frame_size=65536),
            connection_handler=echo,
        )
        try:
            async with AioquicProcess(
                "client", "--port", str(server.address[1]), "--cafile", cert,
                "--datagrams", "--datagram-count", "20", "--upload", "1000",
            ) as peer:
                event = await peer.next_event("datagrams", timeout=30)
                await peer.wait_exit(30)
            assert sorted(event["echoed"]) == sorted(f"datagram {i}" for i in range(20))
        finally:
            server.close()

    run(main(), 60)
