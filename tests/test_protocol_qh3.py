"""Retry, QUIC v2 and DATAGRAM frames with qh3 in both roles (qh3 supports all three),
over real loopback sockets; the helpers and certificates of test_interop_qh3.py."""

from __future__ import annotations

import asyncio

import pytest

import quicflow
from quicflow.wire.packet import QUIC_V1, QUIC_V2
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, issued, run, server_config
from tests.test_interop_qh3 import (
    CA_NAME,
    Pki,
    our_exchange,
    pki,  # noqa: F401  (fixture)
    qh3_process,
    with_qh3_client,
    with_qh3_server,
)

pytestmark = pytest.mark.interop


def test_retry_from_qh3_server(pki: Pki) -> None:  # noqa: F811
    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], bool]:
        result = await our_exchange(conn, upload=100_000, download=300_000, seed=11)
        return result, conn.conn.retry_scid is not None

    (result, retried), _, _ = run(with_qh3_server(pki, body, qh3_args=("--retry",)), 60)
    assert result["ok"], result
    assert retried


def test_retry_to_qh3_client(pki: Pki) -> None:  # noqa: F811
    result, _, accepted, _ = run(with_qh3_client(
        pki, "--upload", "100000", "--download", "300000", server_kw={"retry": "always"}), 60)
    assert result["ok"], result
    assert accepted[0].conn.retry_scid is not None


def test_v2_with_qh3_server(pki: Pki) -> None:  # noqa: F811
    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], int]:
        result = await our_exchange(conn, upload=100_000, download=300_000, seed=12)
        return result, conn.conn.version

    (result, version), _, _ = run(with_qh3_server(
        pki, body, qh3_args=("--versions", "2,1"),
        client_kw={"versions": [QUIC_V2, QUIC_V1], "initial_version": QUIC_V1}), 60)
    assert result["ok"], result
    assert version == QUIC_V2


def test_v2_with_qh3_client(pki: Pki) -> None:  # noqa: F811
    result, _, accepted, _ = run(with_qh3_client(
        pki, "--upload", "100000", "--download", "300000", "--versions", "2,1",
        "--original-version", "1"), 60)
    assert result["ok"], result
    assert accepted[0].conn.version == QUIC_V2


def test_datagrams_with_qh3_server(pki: Pki) -> None:  # noqa: F811
    async def main() -> None:
        async with qh3_process("server", "--cert", pki.cert, "--key", pki.key,
                               "--datagrams") as peer:
            assert peer.port is not None
            async with quicflow.connect(
                "127.0.0.1", peer.port,
                configuration=client_config(cadata=pki.ca_pem, max_datagram_frame_size=65536),
            ) as conn:
                sent = [f"to qh3 {i}".encode() for i in range(20)]
                for d in sent:
                    conn.send_datagram(d)
                got = [await asyncio.wait_for(conn.receive_datagram(), 5) for _ in sent]
                assert sorted(got) == sorted(sent)

    run(main(), 60)


def test_datagrams_with_qh3_client(pki: Pki) -> None:  # noqa: F811
    async def main() -> None:
        async def echo(conn: quicflow.QuicConnection) -> None:
            while True:
                try:
                    conn.send_datagram(await conn.receive_datagram())
                except quicflow.ConnectionClosedError:
                    return

        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(issued(CA_NAME, "localhost"),
                                        max_datagram_frame_size=65536),
            connection_handler=echo,
        )
        try:
            async with qh3_process(
                "client", "--port", str(server.address[1]), "--cafile", pki.cafile,
                "--server-name", "localhost", "--datagrams", "--datagram-count", "20",
                "--upload", "1000",
            ) as peer:
                event = await peer.next_event("datagrams", timeout=30)
                await peer.wait_exit(30)
            assert sorted(event["echoed"]) == sorted(f"datagram {i}" for i in range(20))
        finally:
            server.close()

    run(main(), 60)
