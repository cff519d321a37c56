"""Interoperability with aioquic, in both roles, over real loopback UDP sockets.

aioquic runs in a process of its own (``tests/support/aioquic_peer.py``) so a 50 MB
transfer uses both cores; quicflow runs in the test's event loop.  Both sides speak the
checked protocol of ``tests/support/echo_proto.py``: every byte is verified by SHA-256.
Certificates are verified on both sides (aioquic's client gets our PEM as ``cafile``,
our client gets the same PEM as ``cadata``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.crypto.suites import CipherSuite
from tests.support import echo_proto
from tests.support.aioquic_peer import AioquicProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import client_config, run, self_signed, server_config
from tests.support.relay import LossyUdpRelay

pytestmark = pytest.mark.interop

MB = 1024 * 1024
CHACHA = CipherSuite.CHACHA20_POLY1305_SHA256
#: the aioquic server's idle timeout behind the lossy relay (seconds): see with_aioquic_server
LOSSY_IDLE_TIMEOUT = 5.0


@pytest.fixture
def pem(tmp_path: Path, require: Callable[[bool, str], None]) -> tuple[str, str]:
    """aioquic is present (or the test fails under QUICFLOW_REQUIRE_ALL=1); the server
    certificate and key as PEM files."""
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")
    return self_signed().write(tmp_path, "server")


async def our_exchange(conn: quicflow.QuicConnection, *, upload: int, download: int,
                       seed: int) -> dict[str, object]:
    reader, writer = await conn.create_stream()
    data = echo_proto.payload(2_000_000 + seed, upload)
    return await echo_proto.client_exchange(
        reader, writer, upload=data, download=download, seed=seed
    )


async def with_aioquic_server(
    pem: tuple[str, str],
    body: Callable[[quicflow.QuicConnection], Any],
    *,
    aioquic_args: tuple[str, ...] = (),
    client_kw: dict[str, Any] | None = None,
    loss: float = 0.0,
    reorder: float = 0.0,
) -> tuple[Any, AioquicProcess, dict[str, Any] | None]:
    """Our client against an aioquic server (optionally through the lossy relay)."""
    cert, key = pem
    # Through the lossy relay our CONNECTION_CLOSE can be lost, and then the peer may end
    # only at its idle timeout (RFC 9000 §10.2): while the peer has packets of its own
    # unacknowledged we answer its retransmissions rather than repeat the close blindly
    # (closing.py), and every answer inside our closing period (34 PTO at most) can be
    # lost too. A short idle timeout bounds that wait.
    lossy = bool(loss or reorder)
    if lossy:
        aioquic_args = ("--idle-timeout", str(LOSSY_IDLE_TIMEOUT), *aioquic_args)
    async with AioquicProcess("server", "--cert", cert, "--key", key, *aioquic_args) as peer:
        assert peer.port is not None
        target: tuple[str, int] = ("127.0.0.1", peer.port)
        relay: LossyUdpRelay | None = None
        if loss or reorder:
            relay = await LossyUdpRelay(target, loss=loss, reorder=reorder, seed=5).start()
            target = ("127.0.0.1", relay.address[1])
        try:
            async with quicflow.connect(
                target[0], target[1], configuration=client_config(**(client_kw or {}))
            ) as conn:
                result = await body(conn)
            await peer.next_event("terminated",
                                  timeout=10 + (LOSSY_IDLE_TIMEOUT if lossy else 0))
            return result, peer, relay.stats() if relay else None
        finally:
            if relay is not None:
                await relay.close()


async def with_aioquic_client(
    pem: tuple[str, str],
    *client_args: str,
    server_kw: dict[str, Any] | None = None,
    loss: float = 0.0,
    reorder: float = 0.0,
    timeout: float = 120.0,
) -> tuple[dict[str, Any], AioquicProcess, list[quicflow.QuicConnection], dict[str, Any] | None]:
    """An aioquic client against our server; returns its result event."""
    cert, _ = pem
    accepted: list[quicflow.QuicConnection] = []
    server = await quicflow.serve(
        echo_proto.serve_stream, "127.0.0.1", 0,
        configuration=server_config(**(server_kw or {})), connection_handler=accepted.append,
    )
    relay: LossyUdpRelay | None = None
    try:
        port = server.address[1]
        if loss or reorder:
            relay = await LossyUdpRelay(server.address, loss=loss, reorder=reorder,
                                        seed=6).start()
            port = relay.address[1]
        async with AioquicProcess(
            "client", "--port", str(port), "--cafile", cert, "--server-name", "localhost",
            "--timeout", str(timeout), *client_args,
        ) as peer:
            await peer.wait_exit(timeout + 10)
            for ev in peer.events:
                if ev["event"] == "error":
                    raise AssertionError(f"aioquic client failed: {ev}; events {peer.events}")
            result = await peer.next_event("result", timeout=1)
        return result, peer, accepted, relay.stats() if relay else None
    finally:
        if relay is not None:
            await relay.close()
        server.close()


def _suite_of(peer: AioquicProcess) -> int | None:
    for ev in peer.events:
        if ev["event"] == "handshake":
            return ev["cipher_suite"]  # type: ignore[no-any-return]
    return None


# ---------------------------------------------------------------------------- handshake


def test_handshake_with_aioquic_server(pem: tuple[str, str]) -> None:
    async def body(conn: quicflow.QuicConnection) -> dict[str, object]:
        assert conn.alpn_protocol == "perf"
        return await our_exchange(conn, upload=1234, download=4321, seed=1)

    result, peer, _ = run(with_aioquic_server(pem, body), 60)
    assert result["ok"], result
    hs = [ev for ev in peer.events if ev["event"] == "handshake"]
    assert hs and hs[0]["alpn"] == "perf"
    closes = [ev for ev in peer.events if ev["event"] == "terminated"]
    assert closes and closes[0]["error_code"] == 0, closes  # a clean close reached aioquic


def test_handshake_with_aioquic_client(pem: tuple[str, str]) -> None:
    result, peer, accepted, _ = run(
        with_aioquic_client(pem, "--upload", "1234", "--download", "4321"), 60
    )
    assert result["ok"], result
    assert len(accepted) == 1 and accepted[0].alpn_protocol == "perf"
    hs = [ev for ev in peer.events if ev["event"] == "handshake"]
    assert hs and hs[0]["alpn"] == "perf"
    assert _suite_of(peer) == int(accepted[0].conn.cipher_suite)


# ---------------------------------------------------------------------------- bulk


@pytest.mark.slow
@pytest.mark.parametrize(
    ("upload", "download"), [(0, 50 * MB), (50 * MB, 0)], ids=["download", "upload"]
)
def test_50mb_with_aioquic_server(pem: tuple[str, str], upload: int, download: int) -> None:
    async def body(conn: quicflow.QuicConnection) -> dict[str, object]:
        return await our_exchange(conn, upload=upload, download=download, seed=50)

    result, _, _ = run(with_aioquic_server(pem, body), 150)
    assert result["ok"], result


@pytest.mark.slow
@pytest.mark.parametrize(
    ("upload", "download"), [(0, 50 * MB), (50 * MB, 0)], ids=["download", "upload"]
)
def test_50mb_with_aioquic_client(pem: tuple[str, str], upload: int, download: int) -> None:
    result, _, _, _ = run(
        with_aioquic_client(pem, "--upload", str(upload), "--download", str(download)), 150
    )
    assert result["ok"], result
    assert result["streams"][0]["upload_len_seen_by_server"] == upload


def test_200_streams_with_aioquic_server(pem: tuple[str, str]) -> None:
    async def body(conn: quicflow.QuicConnection) -> list[dict[str, object]]:
        return list(await asyncio.gather(*(
            our_exchange(conn, upload=500 + 31 * i, download=2000 + 17 * i, seed=i)
            for i in range(200)
        )))

    # aioquic allows 128 streams at first and raises the limit as streams finish:
    # the streams beyond it must wait for MAX_STREAMS and then go on
    results, _, _ = run(with_aioquic_server(pem, body), 30)
    bad = [(i, r) for i, r in enumerate(results) if not r["ok"]]
    assert not bad, bad[:5]


def test_200_streams_with_aioquic_client(pem: tuple[str, str]) -> None:
    result, _, _, _ = run(
        with_aioquic_client(pem, "--streams", "200", "--upload", "3000", "--download", "5000"),
        90,
    )
    assert len(result["streams"]) == 200
    bad = [(i, r) for i, r in enumerate(result["streams"]) if not r["ok"]]
    assert not bad, bad[:5]


# ---------------------------------------------------------------------------- cipher


@pytest.mark.parametrize("restricted", ["aioquic", "quicflow"])
def test_chacha20_only_with_aioquic_server(pem: tuple[str, str], restricted: str) -> None:
    """ChaCha20-Poly1305 as the only suite one side accepts: it is what both use."""

    async def body(conn: quicflow.QuicConnection) -> tuple[int, dict[str, object]]:
        return int(conn.conn.cipher_suite), await our_exchange(
            conn, upload=300_000, download=300_000, seed=3
        )

    (suite, result), peer, _ = run(with_aioquic_server(
        pem, body,
        aioquic_args=("--chacha",) if restricted == "aioquic" else (),
        client_kw={"cipher_suites": [CHACHA]} if restricted == "quicflow" else None,
    ), 60)
    assert result["ok"], result
    assert suite == CHACHA
    assert _suite_of(peer) == CHACHA


@pytest.mark.parametrize("restricted", ["aioquic", "quicflow"])
def test_chacha20_only_with_aioquic_client(pem: tuple[str, str], restricted: str) -> None:
    result, peer, accepted, _ = run(with_aioquic_client(
        pem, "--upload", "300000", "--download", "300000",
        *(("--chacha",) if restricted == "aioquic" else ()),
        server_kw={"cipher_suites": [CHACHA]} if restricted == "quicflow" else None,
    ), 60)
    assert result["ok"], result
    assert accepted[0].conn.cipher_suite == CHACHA
    assert _suite_of(peer) == CHACHA


# ---------------------------------------------------------------------------- loss


LOSSY_SIZE = 1536 * 1024


def test_loss_and_reordering_with_aioquic_server(pem: tuple[str, str]) -> None:
    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], int]:
        result = await our_exchange(conn, upload=LOSSY_SIZE, download=LOSSY_SIZE, seed=9)
        return result, conn.conn.counters.packets_lost

    (result, lost), _, stats = run(
        with_aioquic_server(pem, body, loss=0.10, reorder=0.10), 120
    )
    assert result["ok"], result
    assert stats is not None
    for direction in ("c2s", "s2c"):
        assert stats[direction]["dropped"] > 0, stats
        assert stats[direction]["reordered"] + stats[direction]["delayed"] > 0, stats
    assert lost > 0  # our client detected the losses and sent again


def test_loss_and_reordering_with_aioquic_client(pem: tuple[str, str]) -> None:
    result, _, accepted, stats = run(with_aioquic_client(
        pem, "--upload", str(LOSSY_SIZE), "--download", str(LOSSY_SIZE),
        loss=0.10, reorder=0.10,
    ), 120)
    assert result["ok"], result
    assert stats is not None
    for direction in ("c2s", "s2c"):
        assert stats[direction]["dropped"] > 0, stats
        assert stats[direction]["reordered"] + stats[direction]["delayed"] > 0, stats
    assert accepted[0].conn.counters.packets_lost > 0  # our server resent what was lost
