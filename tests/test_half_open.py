"""A flood of spoofed Initials from many addresses on 127.0.0.0/8 (issue 10 item 9, issue 8
item 1): the half-open bound holds the server's connections and memory, Retry under load
answers the flood, and a real client still connects and transfers intact."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc

import quicflow
from quicflow.endpoint.tokens import TokenCache
from quicflow.transport.config import Configuration
from quicflow.transport.factory import client_connection
from quicflow.transport.send import datagrams_to_send
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config
from tests.test_interop_aioquic import our_exchange

SOURCES = 40  # spoofed source addresses 127.0.0.10 .. 127.0.0.49
PER_SOURCE = 8
MIB = 1 << 20


def _initials(port: int, count: int) -> list[bytes]:
    """Valid client Initials (each a new connection: own DCID, own ClientHello)."""
    cfg = Configuration(alpn_protocols=["perf"], verify_peer=False)
    out = []
    for _ in range(count):
        conn = client_connection(cfg, ("127.0.0.1", port), 0.0, server_name="localhost")
        out.append(datagrams_to_send(conn, 0.0)[0])
    return out


async def _flood(port: int, initials: list[bytes]) -> None:
    socks = []
    for i in range(SOURCES):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.0.{10 + i}", 0))
        s.setblocking(False)
        socks.append(s)
    try:
        for n, datagram in enumerate(initials):
            try:
                socks[n % SOURCES].sendto(datagram, ("127.0.0.1", port))
            except BlockingIOError:
                pass
            if n % 16 == 15:
                await asyncio.sleep(0.002)  # let the server read
    finally:
        for s in socks:
            s.close()


async def _transfer(port: int, cache: TokenCache | None, seed: int) -> quicflow.QuicConnection:
    async with quicflow.connect("127.0.0.1", port,
                                configuration=client_config(token_cache=cache)) as conn:
        result = await our_exchange(conn, upload=300_000, download=500_000, seed=seed)
        assert result["ok"], result
        for _ in range(100):
            if cache is None or len(cache):
                break
            await asyncio.sleep(0.01)
        return conn


def test_half_open_bound_under_a_spoofed_flood() -> None:
    """retry=never: at most max_half_open connections are held, the rest of the flood is
    dropped and counted; a client with a NEW_TOKEN token is validated and still served."""
    bound = 32

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(retry="never", max_half_open=bound),
        )
        port = server.address[1]
        initials = await asyncio.to_thread(_initials, port, SOURCES * PER_SOURCE)
        cache = TokenCache()
        try:
            await _transfer(port, cache, 1)  # earns a token
            assert len(cache) == 1
            tracemalloc.start()
            try:
                flood = asyncio.ensure_future(_flood(port, initials))
                await asyncio.sleep(0.05)
                await _transfer(port, cache, 2)  # during the flood, with the token
                await flood
                await asyncio.sleep(0.2)
                held, _ = tracemalloc.get_traced_memory()  # allocated since and still held
            finally:
                tracemalloc.stop()
            stats = server.stats()["endpoint"]
            live = len(server.endpoint.all_connections)
            print(f"half-open {stats['half_open']}, connections {live}, dropped by the"
                  f" bound {stats['dropped_half_open']}, memory held {held / MIB:.1f} MiB")
            assert stats["half_open"] <= bound
            assert live <= bound + 2
            assert stats["dropped_half_open"] >= SOURCES * PER_SOURCE // 2
            assert stats["new_tokens_accepted"] == 1
            # ~20 KB of Python objects per half-open connection (6.8 MiB held without
            # the bound in the same run)
            assert held < bound * 120_000
        finally:
            server.close()

    run(main(), 120)


def test_retry_under_load_answers_the_flood() -> None:
    """retry=load: past the threshold the flood gets Retries (no state), and a new client
    without a token goes through its Retry and transfers intact during the flood."""
    threshold = 16

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(retry="load", retry_threshold=threshold,
                                        max_half_open=64),
        )
        port = server.address[1]
        initials = await asyncio.to_thread(_initials, port, SOURCES * PER_SOURCE)
        try:
            flood = asyncio.ensure_future(_flood(port, initials))
            await asyncio.sleep(0.1)
            conn = await _transfer(port, None, 3)
            await flood
            await asyncio.sleep(0.2)
            stats = server.stats()["endpoint"]
            print(f"half-open {stats['half_open']}, Retries {stats['retries_sent']}")
            assert conn.conn.retry_scid is not None  # the real client was retried too
            assert stats["retries_sent"] >= SOURCES * PER_SOURCE // 2
            assert stats["half_open"] <= threshold
            assert stats["dropped_half_open"] == 0
            assert len(server.endpoint.all_connections) <= threshold + 2
        finally:
            server.close()

    run(main(), 120)


def test_half_open_connection_has_a_short_life() -> None:
    """A handshake that does not progress ends after half_open_timeout, not after the
    idle timeout, and leaves the half-open set; a validated one gets the idle timeout."""
    from quicflow.endpoint.endpoint import Endpoint

    server = Endpoint(server_config(retry="never", half_open_timeout=5.0, idle_timeout=30.0),
                      is_server=True)
    initial = _initials(4433, 1)[0]
    conn = server.receive(initial, ("127.0.0.5", 40000), 100.0)
    assert conn is not None and len(server.admission.half_open) == 1
    timer = conn.timer()
    assert timer is not None and timer <= 105.0
    conn.handle_timer(105.0)
    assert conn.terminated
    server.forget(conn)
    assert not server.admission.half_open and not server.all_connections
