"""quicflow client against quicflow server over real loopback UDP sockets.

Every transfer is checked end to end with SHA-256 (``tests/support/echo_proto.py``): the
server hashes what it received and sends the digest back; the client knows the digest of
what it must receive.
"""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

import quicflow
from quicflow.crypto.suites import CipherSuite
from tests.support import echo_proto
from tests.support.quic_helpers import (
    SilentUdpPort,
    client_config,
    run,
    server_config,
)
from tests.support.relay import LossyUdpRelay

MB = 1024 * 1024


async def exchange(conn: quicflow.QuicConnection, *, upload: int, download: int,
                   seed: int) -> dict[str, object]:
    reader, writer = await conn.create_stream()
    data = echo_proto.payload(1_000_000 + seed, upload)
    return await echo_proto.client_exchange(
        reader, writer, upload=data, download=download, seed=seed
    )


class Accepted:
    """A connection_handler that keeps the server's QuicConnection objects."""

    def __init__(self) -> None:
        self.faces: list[quicflow.QuicConnection] = []
        self.event = asyncio.Event()

    def __call__(self, face: quicflow.QuicConnection) -> None:
        self.faces.append(face)
        self.event.set()

    async def first(self) -> quicflow.QuicConnection:
        await asyncio.wait_for(self.event.wait(), 10)
        return self.faces[0]


# ---------------------------------------------------------------------------- handshake


def test_handshake_and_small_exchange() -> None:
    async def main() -> None:
        accepted = Accepted()
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config(),
            connection_handler=accepted,
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                assert conn.alpn_protocol == "perf"
                assert conn.conn.handshake_complete
                result = await exchange(conn, upload=1000, download=2000, seed=1)
                assert result["ok"], result
                face = await accepted.first()
                assert face.alpn_protocol == "perf"
                assert face.conn.cipher_suite == conn.conn.cipher_suite
            assert server.endpoint.counters.connections_accepted == 1
        finally:
            server.close()

    run(main(), 30)


# ---------------------------------------------------------------------------- bulk


@pytest.mark.slow
@pytest.mark.parametrize(
    ("upload", "download"), [(0, 50 * MB), (50 * MB, 0)], ids=["download", "upload"]
)
def test_50mb_on_one_stream(upload: int, download: int) -> None:
    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                result = await exchange(conn, upload=upload, download=download, seed=50)
                assert result["ok"], result
        finally:
            server.close()

    run(main(), 90)


def test_200_concurrent_bidirectional_streams() -> None:
    n = 200

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                # distinct sizes and contents per stream
                results = await asyncio.gather(*(
                    exchange(conn, upload=1000 + 37 * i, download=3000 + 53 * i, seed=i)
                    for i in range(n)
                ))
                bad = [(i, r) for i, r in enumerate(results) if not r["ok"]]
                assert not bad, bad[:5]
                assert conn.conn.counters.packets_received > n
        finally:
            server.close()

    run(main(), 60)


def test_more_concurrent_streams_than_the_peer_allows() -> None:
    """Streams over the peer's MAX_STREAMS limit wait in create_stream() and all proceed
    as the peer raises the limit (every waiter must be woken, not only the last one)."""
    n, limit = 100, 16

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(max_streams_bidi=limit),
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                results = await asyncio.gather(*(
                    exchange(conn, upload=100 + i, download=200 + i, seed=i) for i in range(n)
                ))
                bad = [(i, r) for i, r in enumerate(results) if not r["ok"]]
                assert not bad, bad[:5]
                assert conn.conn.bidi.opened_local == n
        finally:
            server.close()

    run(main(), 20)


# ---------------------------------------------------------------------------- cipher


def test_chacha20_poly1305_only() -> None:
    async def main() -> None:
        accepted = Accepted()
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config(),
            connection_handler=accepted,
        )
        try:
            ccfg = client_config(cipher_suites=[CipherSuite.CHACHA20_POLY1305_SHA256])
            async with quicflow.connect("127.0.0.1", server.address[1], configuration=ccfg) as conn:
                assert conn.conn.cipher_suite == CipherSuite.CHACHA20_POLY1305_SHA256
                face = await accepted.first()
                assert face.conn.cipher_suite == CipherSuite.CHACHA20_POLY1305_SHA256
                result = await exchange(conn, upload=2 * MB, download=2 * MB, seed=7)
                assert result["ok"], result
        finally:
            server.close()

    run(main(), 60)


# ---------------------------------------------------------------------------- loss


def test_transfer_through_10_percent_loss_and_reordering() -> None:
    async def main() -> dict[str, dict[str, int]]:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with LossyUdpRelay(server.address, loss=0.10, reorder=0.10, seed=3) as relay:
                async with quicflow.connect(
                    "127.0.0.1", relay.address[1], configuration=client_config()
                ) as conn:
                    result = await exchange(conn, upload=4 * MB, download=4 * MB, seed=11)
                    assert result["ok"], result
                    lost = conn.conn.counters.packets_lost
                return {**relay.stats(), "client": {"packets_lost": lost}}
        finally:
            server.close()

    stats = run(main(), 120)
    for direction in ("c2s", "s2c"):
        assert stats[direction]["dropped"] > 0, stats
        assert stats[direction]["reordered"] + stats[direction]["delayed"] > 0, stats
    assert stats["client"]["packets_lost"] > 0, stats  # the client noticed and resent


def test_transfer_through_corrupted_and_duplicated_datagrams() -> None:
    """10 % of the datagrams each way get one bit flipped and 5 % arrive twice (the
    interop runner's "transfercorruption"): a corrupted packet fails its AEAD check (or
    no longer parses) and is dropped and counted, never delivered; the sender resends,
    and both 4 MB transfers arrive intact."""
    async def main() -> dict[str, dict[str, int]]:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with LossyUdpRelay(server.address, corrupt=0.10, duplicate=0.05,
                                     seed=8) as relay:
                async with quicflow.connect(
                    "127.0.0.1", relay.address[1], configuration=client_config()
                ) as conn:
                    result = await exchange(conn, upload=4 * MB, download=4 * MB, seed=12)
                    assert result["ok"], result
                    counters = conn.conn.counters
                    client = {"dropped": counters.packets_dropped,
                              "duplicates": counters.duplicate_packets,
                              "lost": counters.packets_lost}
                return {**relay.stats(), "client": client}
        finally:
            server.close()

    stats = run(main(), 120)
    for direction in ("c2s", "s2c"):
        assert stats[direction]["corrupted"] > 100, stats
        assert stats[direction]["duplicated"] > 50, stats
    client = stats["client"]
    assert client["dropped"] > 100 and client["duplicates"] > 0, stats
    assert client["lost"] > 0, stats  # what the server dropped, the client sent again


def test_handshakes_through_30_percent_corruption() -> None:
    """Handshakes with 30 % of the datagrams corrupted each way ("handshakecorruption"):
    a corrupted Initial or Handshake packet is dropped like a lost one (a flipped bit in
    a connection ID or the version must not start a new connection or end this one),
    and each handshake completes and carries its exchange. One relay per connection:
    the relay forwards to the client that sent last."""
    async def main() -> list[int]:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        corrupted = []
        try:
            for i in range(4):
                async with LossyUdpRelay(server.address, corrupt=0.30, seed=40 + i) as relay:
                    async with quicflow.connect(
                        "127.0.0.1", relay.address[1], configuration=client_config()
                    ) as conn:
                        result = await exchange(conn, upload=20_000, download=20_000,
                                                seed=i)
                        assert result["ok"], result
                    stats = relay.stats()
                    corrupted.append(stats["c2s"]["corrupted"] + stats["s2c"]["corrupted"])
        finally:
            server.close()
        return corrupted

    corrupted = run(main(), 120)
    assert all(n > 0 for n in corrupted), corrupted


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("closer", ["client", "server"])
def test_application_close_reaches_peer(closer: str) -> None:
    code, reason = 0x1234, "going away for a test"

    async def main() -> None:
        seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        server_side: list[quicflow.QuicConnection] = []

        async def handler(reader: quicflow.QuicStreamReader,
                          writer: quicflow.QuicStreamWriter) -> None:
            await reader.readexactly(5)
            writer.write(b"ready")
            await writer.drain()
            if closer == "server":
                # close only once the client has the "ready": an immediate close may
                # discard stream data still unsent (RFC 9000 §10.2)
                await reader.readexactly(5)
                writer.connection.close(code, reason)
                return
            try:
                await reader.read(100)  # blocks until the client closes
                seen.set_result(AssertionError("read returned instead of raising"))
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                seen.set_result(exc)

        server = await quicflow.serve(
            handler, "127.0.0.1", 0, configuration=server_config(),
            connection_handler=server_side.append,
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                reader, writer = await conn.create_stream()
                writer.write(b"hello")
                await writer.drain()
                assert await reader.readexactly(5) == b"ready"
                if closer == "client":
                    conn.close(code, reason)
                    exc = await asyncio.wait_for(seen, 10)
                else:
                    writer.write(b"close")
                    try:
                        await asyncio.wait_for(reader.read(100), 10)
                        exc = AssertionError("read returned instead of raising")
                    except quicflow.ConnectionClosedError as e:
                        exc = e
                    with pytest.raises(quicflow.ConnectionClosedError):
                        writer.write(b"more")
            assert isinstance(exc, quicflow.ConnectionClosedError), repr(exc)
            assert exc.error_code == code
            assert exc.reason == reason
            assert exc.by_peer is True
            assert reason in str(exc)
        finally:
            server.close()

    run(main(), 30)


@pytest.mark.parametrize("resetter", ["client", "server"])
def test_stream_reset_reaches_peer(resetter: str) -> None:
    code = 0x77

    async def main() -> None:
        seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

        async def handler(reader: quicflow.QuicStreamReader,
                          writer: quicflow.QuicStreamWriter) -> None:
            if reader.stream_id != 0:  # later streams: the normal exchange
                await echo_proto.serve_stream(reader, writer)
                return
            await reader.readexactly(5)
            if resetter == "server":
                writer.write(b"partial")
                await writer.drain()
                writer.reset(code)
                return
            writer.write(b"ready")
            await writer.drain()
            try:
                while await reader.read(100):
                    pass
                seen.set_result(AssertionError("reached end of stream instead of a reset"))
            except BaseException as exc:  # noqa: BLE001
                seen.set_result(exc)

        server = await quicflow.serve(
            handler, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                reader, writer = await conn.create_stream()
                writer.write(b"hello")
                await writer.drain()
                if resetter == "client":
                    assert await reader.readexactly(5) == b"ready"
                    writer.write(b"some bytes that never complete")
                    writer.reset(code)
                    exc = await asyncio.wait_for(seen, 10)
                else:
                    try:
                        async def drain_all() -> None:
                            while await reader.read(100):
                                pass
                        await asyncio.wait_for(drain_all(), 10)
                        exc = AssertionError("reached end of stream instead of a reset")
                    except quicflow.StreamResetError as e:
                        exc = e
                assert isinstance(exc, quicflow.StreamResetError), repr(exc)
                assert exc.error_code == code
                assert exc.stream_id == reader.stream_id
                # the connection itself survives a stream reset
                result = await exchange(conn, upload=100, download=100, seed=5)
                assert result["ok"], result
        finally:
            server.close()

    run(main(), 30)


# ---------------------------------------------------------------------------- idle timeout


def test_connect_to_silent_port_times_out() -> None:
    async def main() -> tuple[quicflow.ConnectionClosedError, float]:
        with SilentUdpPort() as silent:
            start = time.monotonic()
            with pytest.raises(quicflow.ConnectionClosedError) as info:
                async with quicflow.connect(
                    "127.0.0.1", silent.port, configuration=client_config(idle_timeout=1)
                ):
                    pass
            return info.value, time.monotonic() - start

    exc, elapsed = run(main(), 20)
    assert "timed out" in str(exc), str(exc)
    assert 0.9 <= elapsed < 5, elapsed


def test_idle_timeout_when_peer_disappears() -> None:
    async def main() -> tuple[BaseException, float]:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            async with LossyUdpRelay(server.address) as relay:
                async with quicflow.connect(
                    "127.0.0.1", relay.address[1], configuration=client_config(idle_timeout=1)
                ) as conn:
                    result = await exchange(conn, upload=10, download=10, seed=2)
                    assert result["ok"], result
                    reader, writer = await conn.create_stream()
                    # the network goes dark in both directions: no CONNECTION_CLOSE can pass
                    relay.c2s.loss = relay.s2c.loss = 1.0
                    writer.write(echo_proto.request_header(10, 1))
                    start = time.monotonic()
                    try:
                        await reader.read(10)
                        exc: BaseException = AssertionError("read returned")
                    except quicflow.ConnectionClosedError as e:
                        exc = e
                    return exc, time.monotonic() - start
        finally:
            server.close()

    exc, elapsed = run(main(), 30)
    assert isinstance(exc, quicflow.ConnectionClosedError), repr(exc)
    assert "timed out" in str(exc), str(exc)
    assert not exc.by_peer
    assert elapsed < 6, elapsed


def test_handler_failing_on_a_peer_unidirectional_stream_is_contained() -> None:
    """A server handler that raises on the client's unidirectional stream: the stream is
    abandoned (STOP_SENDING, the client's send side ends reset with 0x101), the server
    serves the next streams, and no exception reaches the loop's exception handler (the
    clean-up used to try RESET_STREAM on the receive-only stream: ValueError)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        escaped: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: escaped.append(context))
        failed: asyncio.Future[int] = loop.create_future()
        server_side: list[quicflow.QuicConnection] = []

        async def handler(reader: quicflow.QuicStreamReader,
                          writer: quicflow.QuicStreamWriter) -> None:
            if reader.stream_id & 2:  # the client's unidirectional stream
                await reader.readexactly(4)
                failed.set_result(reader.stream_id)
                raise RuntimeError("handler bug")
            await echo_proto.serve_stream(reader, writer)

        server = await quicflow.serve(handler, "127.0.0.1", 0, configuration=server_config(),
                                      connection_handler=server_side.append)
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config()
            ) as conn:
                _, writer = await conn.create_stream(bidirectional=False)
                writer.write(b"ping")
                await writer.drain()
                sid = await asyncio.wait_for(failed, 10)
                # the server's STOP_SENDING resets our side (no FIN was sent: the stream
                # is only forgotten once that reset is acknowledged)
                codes: set[int | None] = set()
                for _ in range(5000):
                    stream = conn.conn.streams.get(sid)
                    if stream is None:
                        break
                    assert stream.send is not None
                    codes.add(stream.send.reset_code)
                    await asyncio.sleep(0.001)
                assert sid not in conn.conn.streams and codes <= {None, 0x101}
                for seed in (1, 2):
                    result = await exchange(conn, upload=200_000, download=100_000, seed=seed)
                    assert result["ok"], result
                assert not server_side[0].closed
        finally:
            server.close()
        gc.collect()  # a task whose exception was never retrieved is reported when freed
        await asyncio.sleep(0)
        assert escaped == []

    run(main())
