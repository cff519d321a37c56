"""Fast failure (issue 8 item 10): a client whose Initial is answered by ICMP port
unreachable fails at once with "connection refused: nothing listens on HOST port PORT",
not after the idle timeout; with the asyncio API and with `quicflow perf client`."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

import quicflow
from quicflow.aio.paths import apply_unreachable
from tests.support.quic_helpers import client_config, run


def _closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_connect_to_a_closed_port_is_refused_at_once() -> None:
    port = _closed_port()
    faces: list[quicflow.QuicConnection] = []

    async def main() -> None:
        with pytest.raises(quicflow.ConnectionClosedError) as info:
            async with quicflow.connect(
                "127.0.0.1", port, configuration=client_config(idle_timeout=30.0),
                wait_connected=False,
            ) as conn:
                faces.append(conn)
                await conn.wait_connected()
        assert str(info.value) == f"connection refused: nothing listens on 127.0.0.1 port {port}"

    run(main(), 20)
    conn = faces[0].conn
    # refused before any retransmission: one Initial datagram went out, no PTO fired
    assert conn.counters.datagrams_sent == 1 and conn.loss.pto_fired == 0
    assert faces[0].stats()["datapath"]["unreachable"] >= 1


def test_a_host_name_is_named_as_given() -> None:
    port = _closed_port()

    async def main() -> None:
        with pytest.raises(quicflow.ConnectionClosedError,
                           match=f"^connection refused: nothing listens on localhost port {port}$"):
            async with quicflow.connect("localhost", port, configuration=client_config()):
                pass

    run(main(), 20)


def test_perf_client_reports_connection_refused() -> None:
    port = _closed_port()
    r = subprocess.run(
        [sys.executable, "-m", "quicflow", "perf", "client", "--host", "127.0.0.1",
         "--port", str(port), "--insecure", "--timeout", "20"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 1
    assert r.stderr.strip().endswith(
        f"connection refused: nothing listens on 127.0.0.1 port {port}"), r.stderr


def test_unreachable_after_the_server_answered_is_ignored() -> None:
    """ICMP is not authenticated: once the server has answered, a port-unreachable report
    does not end the connection (RFC 9000 §14.2.1)."""
    from tests.support import echo_proto
    from tests.support.quic_helpers import server_config

    async def main() -> None:
        server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                      configuration=server_config())
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=client_config()) as conn:
                conn.runner.transport.unreachable_events.append(None)
                apply_unreachable(conn.runner)
                assert not conn.closed
                _, writer = await conn.create_stream()
                writer.write(b"still here")
                writer.write_eof()
                await asyncio.sleep(0)
        finally:
            server.close()

    run(main(), 20)
