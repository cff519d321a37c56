"""Client migration and preferred address with aioquic (RFC 9000 §9, §9.6): our client
migrating to aioquic's server, aioquic's client rebinding to a new port (with a fresh
connection ID) on our server, and aioquic's client following our preferred address.
Transfers are checked by SHA-256; each side's view of the new path is checked."""

from __future__ import annotations

import asyncio
import hashlib

import quicflow
from quicflow.datapath.connected import SocketPolicy
from tests.support.aioquic_migrate import data
from tests.support.aioquic_peer import AioquicProcess
from tests.support.quic_helpers import client_config, record_socket_peers, run, server_config
from tests.test_client_migration import _free_port, _sink_and_source, _transfer
from tests.test_interop_aioquic import pem  # noqa: F401  (fixture)

MODULE = "tests.support.aioquic_migrate"


def test_quicflow_client_migrates_to_aioquic_server(pem: tuple[str, str]) -> None:  # noqa: F811
    cert, key = pem
    up, down = 1_500_000, 3_000_000

    async def main() -> None:
        async with AioquicProcess("server", "--cert", cert, "--key", key,
                                  module=MODULE) as peer:
            assert peer.port is not None
            async with quicflow.connect("127.0.0.1", peer.port,
                                        configuration=client_config()) as conn:
                half = asyncio.Event()
                task = asyncio.ensure_future(_transfer(conn, up, down, half))
                await half.wait()
                new_local = await conn.migrate()
                up_digest, down_digest = await task
                assert up_digest == hashlib.sha256(data(up, 1)).digest()
                assert down_digest == hashlib.sha256(data(down, 2)).digest()
                served = await peer.next_event("served")
                assert served["upload_sha256"] == hashlib.sha256(data(up, 1)).hexdigest()
                # aioquic's server sends to our new port
                assert served["peer"][1] == new_local[1]
                assert conn.stats()["connection"]["migrations"] == 1

    run(main(), timeout=90)


def test_aioquic_client_rebinds_on_quicflow_server(pem: tuple[str, str]) -> None:  # noqa: F811
    """Half-way through the download aioquic's client moves to a new port with a fresh
    connection ID; then a second download, wholly on the new path (``--again``: it is
    what shows the server followed; see the qh3 twin of this test)."""
    cert, _ = pem
    down, up, again = 3_000_000, 500_000, 200_000

    async def main() -> None:
        server = await quicflow.serve(
            _sink_and_source, "127.0.0.1", 0, configuration=server_config(),
            connection_sockets=16, socket_policy=SocketPolicy(min_bytes=0, min_age=0),
        )
        opened = record_socket_peers(server)  # (aioquic closes right after its result)
        async with server:
            async with AioquicProcess("client", "--port", str(server.address[1]),
                                      "--cafile", cert, "--download", str(down),
                                      "--upload", str(up), "--rebind",
                                      "--again", str(again), module=MODULE) as peer:
                rebound = await peer.next_event("rebound")
                result = await peer.next_event("result")
                assert result["ok"], result
                assert result["sha256"] == hashlib.sha256(data(down, 2)).hexdigest()
                assert result["again_sha256"] == hashlib.sha256(data(again, 2)).hexdigest()
                conns = server.connections
                assert len(conns) == 1
                stats = conns[0].stats()["connection"]
                assert stats["path_changes"] >= 1
                assert tuple(stats["peer_address"])[1] == rebound["new_port"]
                # the per-connection socket followed the client to its new 4-tuple (it
                # is closed already if the client's close came in)
                assert opened and opened[-1] == rebound["new_port"], opened
                sock = server.runner.connection_socket(conns[0].conn)
                assert sock is None or sock.getpeername()[1] == rebound["new_port"]
                assert await peer.wait_exit() == 0

    run(main(), timeout=90)


def test_aioquic_client_follows_our_preferred_address(pem: tuple[str, str]) -> None:  # noqa: F811
    cert, _ = pem
    down = 2_000_000

    async def main() -> None:
        pref = _free_port()
        server = await quicflow.serve(
            _sink_and_source, "127.0.0.1", 0,
            configuration=server_config(preferred_address=("127.0.0.1", pref)),
        )
        async with server:
            async with AioquicProcess("client", "--port", str(server.address[1]),
                                      "--cafile", cert, "--download", str(down),
                                      module=MODULE) as peer:
                result = await peer.next_event("result")
                assert result["ok"], result
                assert result["sha256"] == hashlib.sha256(data(down, 2)).hexdigest()
                assert result["server"][1] == pref  # aioquic moved to the preferred address
                listener = server.runner.listeners[0]
                conns = server.connections
                assert len(conns) == 1
                assert server.runner.home_listener(conns[0].conn) is listener
                assert listener.counters.bytes_sent >= down // 2
                assert await peer.wait_exit() == 0

    run(main(), timeout=90)
