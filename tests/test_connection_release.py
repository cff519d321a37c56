"""What a connection holds goes when it is done with: the reader and writer of each ended
stream of a long connection, and a whole ended connection's state, by reference counting
(the collector is off in these tests: nothing here waits for a collection)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hashlib
import socket
import weakref
from collections.abc import Iterator

import pytest

import quicflow
from quicflow.aio.connection import PRUNE_SLACK
from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.connection import Connection
from tests.support.transfer import client_configuration, server_configuration

STREAMS = 400


@pytest.fixture
def no_collector() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _echo(reader: quicflow.QuicStreamReader, writer: quicflow.QuicStreamWriter) -> None:
    data = await reader.read()
    writer.write(hashlib.sha256(data).digest())
    writer.write_eof()


async def _exchange(face: quicflow.QuicConnection, body: bytes) -> tuple[
        quicflow.QuicStreamReader, quicflow.QuicStreamWriter]:
    reader, writer = await face.create_stream()
    writer.write(body)
    writer.write_eof()
    assert await reader.read() == hashlib.sha256(body).digest()
    return reader, writer


def test_a_long_connection_lets_go_of_its_ended_streams(no_collector: None) -> None:
    server_faces: list[quicflow.QuicConnection] = []

    async def main() -> tuple[int, int, int, int, bytes]:
        server = await quicflow.serve(_echo, "127.0.0.1", 0,
                                      configuration=server_configuration())
        port = server.address[1]
        try:
            async with quicflow.connect("127.0.0.1", port,
                                        configuration=client_configuration()) as face:
                first_reader, _ = await _exchange(face, b"first")  # held by us to the end
                gone: list[weakref.ref[quicflow.QuicStreamReader]] = []
                for i in range(STREAMS):
                    reader, writer = await _exchange(face, b"request %d" % i)
                    gone.append(weakref.ref(reader))
                    del reader, writer
                await asyncio.sleep(0.2)  # the last streams' ends are acknowledged
                server_faces.extend(server.runner.faces.values())
                alive = sum(1 for ref in gone if ref() is not None)
                held = len(face._readers)
                server_held = max(len(f._readers) for f in server_faces)
                # a stream the connection let go of still reads as ended
                tail = await first_reader.read()
                return alive, held, server_held, len(face.conn.streams), tail
        finally:
            server.close()

    alive, held, server_held, open_streams, tail = asyncio.run(main())
    bound = 2 * open_streams + PRUNE_SLACK
    assert held <= bound and server_held <= bound  # not one pair per stream ever opened
    assert alive <= bound  # the readers we dropped are freed, not kept by the connection
    assert tail == b""


def test_an_ended_connection_is_freed_without_a_collection(no_collector: None) -> None:
    refs: list[weakref.ref[quicflow.QuicConnection]] = []

    async def main() -> int:
        server = await quicflow.serve(_echo, "127.0.0.1", 0,
                                      configuration=server_configuration())
        port = server.address[1]
        try:
            async with quicflow.client_endpoint(configuration=client_configuration()) as ep:
                for i in range(4):
                    async with ep.connect("127.0.0.1", port) as face:
                        await _exchange(face, b"short connection %d" % i)
                        refs.append(weakref.ref(face))
                        refs.extend(weakref.ref(f) for f in server.runner.faces.values())
                    del face
                for _ in range(100):  # the server forgets them after its closing period
                    if not server.runner.faces:
                        break
                    await asyncio.sleep(0.05)
                return len(server.runner.faces)
        finally:
            server.close()

    assert asyncio.run(main()) == 0
    assert len(refs) >= 8
    assert [ref for ref in refs if ref() is not None] == []


def test_a_connect_client_is_freed_without_a_collection(no_collector: None) -> None:
    """``quicflow.connect()`` gives each connection an endpoint of its own: once the
    connection is closed and let go of, the endpoint (its registry, its CID issuer) and
    the connection go by reference counting."""
    endpoints: list[weakref.ref[Endpoint]] = []
    faces: list[weakref.ref[quicflow.QuicConnection]] = []

    async def main() -> None:
        server = await quicflow.serve(_echo, "127.0.0.1", 0,
                                      configuration=server_configuration())
        port = server.address[1]
        try:
            for i in range(3):
                async with quicflow.connect("127.0.0.1", port,
                                            configuration=client_configuration()) as face:
                    await _exchange(face, b"client %d" % i)
                    endpoints.append(weakref.ref(face.runner.endpoint))
                    faces.append(weakref.ref(face))
                del face
        finally:
            server.close()

    asyncio.run(main())
    assert len(endpoints) == 3
    assert [ref for ref in endpoints + faces if ref() is not None] == []


@pytest.mark.parametrize("alpn", ["perf", "not-offered"])
def test_a_handshake_that_never_completes_leaves_no_cycle(no_collector: None,
                                                          alpn: str) -> None:
    """A client sends its Initial and vanishes (what an Initial flood is): the server's
    connection, forgotten at its idle timeout, leaves nothing for the collector; nor does
    one whose ClientHello the server refused with a TLS alert (no common ALPN), which the
    handshake keeps to raise again."""

    async def main() -> tuple[int, int]:
        server = await quicflow.serve(_echo, "127.0.0.1", 0,
                                      configuration=server_configuration(idle_timeout=0.3))
        port = server.address[1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _ in range(4):
                config = dataclasses.replace(client_configuration(), alpn_protocols=[alpn])
                client = Endpoint(configuration=config, is_server=False)
                conn = client.connect(("127.0.0.1", port), 0.0, server_name="localhost")
                for data in client.datagrams_to_send(conn, 0.0):
                    sock.sendto(data, ("127.0.0.1", port))
            endpoint = server.runner.endpoint
            for _ in range(50):
                await asyncio.sleep(0.02)
                if len(endpoint.all_connections) == 4:
                    break
            opened = len(endpoint.all_connections)
            for _ in range(200):  # three PTOs at least (RFC 9000 §10.1)
                if not endpoint.all_connections:
                    break
                await asyncio.sleep(0.05)
            return opened, len(endpoint.all_connections)
        finally:
            sock.close()
            server.close()

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        opened, left = asyncio.run(main())
        gc.collect()
        cyclic = [o for o in gc.garbage if type(o) is Connection and not o.is_client]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert opened == 4 and left == 0
    assert cyclic == []
