"""Interoperability with qh3, in both roles, over real loopback UDP sockets.

qh3 runs in a process of its own (``tests/support/aioquic_peer.py --library qh3``: qh3's
asyncio API mirrors aioquic's) so bulk transfers use both cores; quicflow runs in the
test's event loop.  Both sides speak the checked protocol of ``tests/support/echo_proto.py``:
every byte is verified by SHA-256.

Certificates are verified on both sides.  qh3 accepts only CA certificates as trust
anchors, so the server certificate (EC P-256: qh3's client does not offer Ed25519) is
issued by a test CA whose PEM is qh3's ``cafile`` and our client's ``cadata``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.crypto.suites import CipherSuite
from tests.support import echo_proto
from tests.support.aioquic_peer import PeerProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import ca, client_config, issued, run, server_config
from tests.support.relay import LossyUdpRelay

pytestmark = pytest.mark.interop

MB = 1024 * 1024
BULK = 20 * MB
LOSSY_SIZE = 1 * MB
CHACHA = CipherSuite.CHACHA20_POLY1305_SHA256
CA_NAME = "qh3-interop"


@dataclass(frozen=True)
class Pki:
    cert: str  # server certificate (PEM file), issued by the CA
    key: str
    cafile: str  # the CA certificate (PEM file): qh3's trust anchor
    ca_pem: bytes  # the same, for our client's cadata


@pytest.fixture
def pki(tmp_path: Path, require: Callable[[bool, str], None]) -> Pki:
    """qh3 is present (or the test fails under QUICFLOW_REQUIRE_ALL=1); a CA and a
    server certificate for ``localhost`` issued by it, as PEM files."""
    require(have_module("qh3"), "Python package 'qh3' not installed (make venv)")
    authority = ca(CA_NAME)
    cert, key = issued(CA_NAME, "localhost").write(tmp_path, "server")
    cafile, _ = authority.write(tmp_path, "ca")
    return Pki(cert, key, cafile, authority.cert_pem)


def qh3_process(*args: str) -> PeerProcess:
    return PeerProcess(*args, library="qh3")


async def our_exchange(conn: quicflow.QuicConnection, *, upload: int, download: int,
                       seed: int) -> dict[str, object]:
    reader, writer = await conn.create_stream()
    data = echo_proto.payload(3_000_000 + seed, upload)
    return await echo_proto.client_exchange(
        reader, writer, upload=data, download=download, seed=seed
    )


async def with_qh3_server(
    pki: Pki,
    body: Callable[[quicflow.QuicConnection], Any],
    *,
    qh3_args: tuple[str, ...] = (),
    client_kw: dict[str, Any] | None = None,
    loss: float = 0.0,
    reorder: float = 0.0,
) -> tuple[Any, PeerProcess, dict[str, Any] | None]:
    """Our client against a qh3 server (optionally through the lossy relay)."""
    async with qh3_process("server", "--cert", pki.cert, "--key", pki.key, *qh3_args) as peer:
        assert peer.port is not None
        target: tuple[str, int] = ("127.0.0.1", peer.port)
        relay: LossyUdpRelay | None = None
        if loss or reorder:
            relay = await LossyUdpRelay(target, loss=loss, reorder=reorder, seed=7).start()
            target = ("127.0.0.1", relay.address[1])
        try:
            async with quicflow.connect(
                target[0], target[1],
                configuration=client_config(cadata=pki.ca_pem, **(client_kw or {})),
            ) as conn:
                result = await body(conn)
            # (through the relay our close can be lost: the lossy test gives qh3 a 10 s
            # idle timeout, which then ends it; see test_interop_aioquic.with_aioquic_server)
            await peer.next_event("terminated", timeout=15 if loss or reorder else 10)
            errors = [ev for ev in peer.events if ev["event"] == "stream_error"]
            assert not errors, f"qh3 server stream handler failed: {errors}"
            return result, peer, relay.stats() if relay else None
        finally:
            if relay is not None:
                await relay.close()


async def with_qh3_client(
    pki: Pki,
    *client_args: str,
    server_kw: dict[str, Any] | None = None,
    loss: float = 0.0,
    reorder: float = 0.0,
    timeout: float = 120.0,
    relay_kw: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], PeerProcess, list[quicflow.QuicConnection], dict[str, Any] | None]:
    """A qh3 client against our server; returns its result event (through the lossy
    relay with ``loss``/``reorder``, or with ``relay_kw``'s settings)."""
    accepted: list[quicflow.QuicConnection] = []
    server = await quicflow.serve(
        echo_proto.serve_stream, "127.0.0.1", 0,
        configuration=server_config(issued(CA_NAME, "localhost"), **(server_kw or {})),
        connection_handler=accepted.append,
    )
    relay: LossyUdpRelay | None = None
    try:
        port = server.address[1]
        if loss or reorder or relay_kw:
            relay = await LossyUdpRelay(server.address, loss=loss, reorder=reorder,
                                        seed=8, **(relay_kw or {})).start()
            port = relay.address[1]
        async with qh3_process(
            "client", "--port", str(port), "--cafile", pki.cafile, "--server-name", "localhost",
            "--timeout", str(timeout), *client_args,
        ) as peer:
            await peer.wait_exit(timeout + 10)
            for ev in peer.events:
                if ev["event"] == "error":
                    raise AssertionError(f"qh3 client failed: {ev}; events {peer.events}")
            result = await peer.next_event("result", timeout=1)
        return result, peer, accepted, relay.stats() if relay else None
    finally:
        if relay is not None:
            await relay.close()
        server.close()


def _handshake_of(peer: PeerProcess) -> dict[str, Any]:
    hs = [ev for ev in peer.events if ev["event"] == "handshake"]
    assert hs, peer.events
    return hs[0]


# ---------------------------------------------------------------------------- handshake


def test_handshake_with_qh3_server(pki: Pki) -> None:
    async def body(conn: quicflow.QuicConnection) -> tuple[str | None, int, dict[str, object]]:
        alpn, suite = conn.alpn_protocol, int(conn.conn.cipher_suite)
        return alpn, suite, await our_exchange(conn, upload=1234, download=4321, seed=1)

    (alpn, suite, result), peer, _ = run(with_qh3_server(pki, body), 60)
    assert result["ok"], result
    assert alpn == "perf"
    assert suite in (CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384, CHACHA)
    hs = _handshake_of(peer)
    assert hs["alpn"] == "perf"
    assert hs["cipher_suite"] == suite  # both ends agree on the suite
    closes = [ev for ev in peer.events if ev["event"] == "terminated"]
    assert closes and closes[0]["error_code"] == 0, closes  # a clean close reached qh3


def test_handshake_with_qh3_client(pki: Pki) -> None:
    result, peer, accepted, _ = run(
        with_qh3_client(pki, "--upload", "1234", "--download", "4321"), 60
    )
    assert result["ok"], result
    assert len(accepted) == 1
    ours = accepted[0]
    assert ours.alpn_protocol == "perf"
    suite = int(ours.conn.cipher_suite)
    assert suite in (CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384, CHACHA)
    hs = _handshake_of(peer)
    assert hs["alpn"] == "perf"
    assert hs["cipher_suite"] == suite


# ---------------------------------------------------------------------------- bulk


@pytest.mark.slow
@pytest.mark.parametrize(
    ("upload", "download"), [(0, BULK), (BULK, 0)], ids=["download", "upload"]
)
def test_20mb_with_qh3_server(pki: Pki, upload: int, download: int) -> None:
    async def body(conn: quicflow.QuicConnection) -> dict[str, object]:
        return await our_exchange(conn, upload=upload, download=download, seed=20)

    result, _, _ = run(with_qh3_server(pki, body), 90)
    assert result["ok"], result
    assert result["upload_len_seen_by_server"] == upload
    assert result["download_len"] == download


@pytest.mark.slow
@pytest.mark.parametrize(
    ("upload", "download"), [(0, BULK), (BULK, 0)], ids=["download", "upload"]
)
def test_20mb_with_qh3_client(pki: Pki, upload: int, download: int) -> None:
    result, _, _, _ = run(
        with_qh3_client(pki, "--upload", str(upload), "--download", str(download),
                        timeout=80), 90
    )
    assert result["ok"], result
    assert result["streams"][0]["upload_len_seen_by_server"] == upload
    assert result["streams"][0]["download_len"] == download


# ---------------------------------------------------------------------------- streams


def test_100_streams_with_qh3_server(pki: Pki) -> None:
    async def body(conn: quicflow.QuicConnection) -> list[dict[str, object]]:
        return list(await asyncio.gather(*(
            our_exchange(conn, upload=500 + 31 * i, download=2000 + 17 * i, seed=i)
            for i in range(100)
        )))

    results, _, _ = run(with_qh3_server(pki, body), 45)
    assert len(results) == 100
    bad = [(i, r) for i, r in enumerate(results) if not r["ok"]]
    assert not bad, bad[:5]


def test_100_streams_with_qh3_client(pki: Pki) -> None:
    result, _, accepted, _ = run(
        with_qh3_client(pki, "--streams", "100", "--upload", "3000", "--download", "5000",
                        timeout=45), 60,
    )
    assert len(result["streams"]) == 100
    bad = [(i, r) for i, r in enumerate(result["streams"]) if not r["ok"]]
    assert not bad, bad[:5]
    assert len(accepted) == 1  # all 100 streams on one connection


# ---------------------------------------------------------------------------- cipher


@pytest.mark.parametrize("restricted", ["qh3", "quicflow"])
def test_chacha20_only_with_qh3_server(pki: Pki, restricted: str) -> None:
    """ChaCha20-Poly1305 as the only suite one side accepts: it is what both use."""

    async def body(conn: quicflow.QuicConnection) -> tuple[int, dict[str, object]]:
        return int(conn.conn.cipher_suite), await our_exchange(
            conn, upload=300_000, download=300_000, seed=3
        )

    (suite, result), peer, _ = run(with_qh3_server(
        pki, body,
        qh3_args=("--chacha",) if restricted == "qh3" else (),
        client_kw={"cipher_suites": [CHACHA]} if restricted == "quicflow" else None,
    ), 60)
    assert result["ok"], result
    assert suite == CHACHA
    assert _handshake_of(peer)["cipher_suite"] == CHACHA


@pytest.mark.parametrize("restricted", ["qh3", "quicflow"])
def test_chacha20_only_with_qh3_client(pki: Pki, restricted: str) -> None:
    result, peer, accepted, _ = run(with_qh3_client(
        pki, "--upload", "300000", "--download", "300000",
        *(("--chacha",) if restricted == "qh3" else ()),
        server_kw={"cipher_suites": [CHACHA]} if restricted == "quicflow" else None,
    ), 60)
    assert result["ok"], result
    assert accepted[0].conn.cipher_suite == CHACHA
    assert _handshake_of(peer)["cipher_suite"] == CHACHA


# ---------------------------------------------------------------------------- loss


def _assert_relay_disturbed(stats: dict[str, Any] | None) -> None:
    assert stats is not None
    for direction in ("c2s", "s2c"):
        assert stats[direction]["dropped"] > 0, stats
        assert stats[direction]["reordered"] + stats[direction]["delayed"] > 0, stats


def test_loss_and_reordering_with_qh3_server(pki: Pki) -> None:
    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], int]:
        result = await our_exchange(conn, upload=LOSSY_SIZE, download=LOSSY_SIZE, seed=9)
        return result, conn.conn.counters.packets_lost

    (result, lost), _, stats = run(with_qh3_server(
        pki, body, qh3_args=("--idle-timeout", "10"), loss=0.10, reorder=0.10,
    ), 90)
    assert result["ok"], result
    _assert_relay_disturbed(stats)
    assert lost > 0  # our client detected the losses and sent again


def test_loss_and_reordering_with_qh3_client(pki: Pki) -> None:
    result, _, accepted, stats = run(with_qh3_client(
        pki, "--upload", str(LOSSY_SIZE), "--download", str(LOSSY_SIZE), "--idle-timeout", "10",
        loss=0.10, reorder=0.10, timeout=60,
    ), 90)
    assert result["ok"], result
    _assert_relay_disturbed(stats)
    assert accepted[0].conn.counters.packets_lost > 0  # our server resent what was lost


def test_small_windows_of_qh3_client_with_loss_bursts(pki: Pki) -> None:
    """qh3's client allows 48 KiB on the connection and 16 KiB per stream and exchanges
    150 KiB up and 120 KiB down on 12 streams at once, through bursts of loss (5-60 ms,
    both ways): our server spends most of the transfer at the connection limit with
    bytes of other streams lost. Those go out again without new credit (RFC 9000 §4.1),
    or qh3, its window full of the bytes after the gap, never raises the limit and both
    wait silently until the idle timeout (on main before c36477f: 4 of 4 runs stalled)."""
    kib = 1024
    result, _, accepted, stats = run(with_qh3_client(
        pki, "--streams", "12", "--upload", str(150 * kib), "--download", str(120 * kib),
        "--max-data", str(48 * kib), "--max-stream-data", str(16 * kib),
        server_kw={"idle_timeout": 5.0}, relay_kw={"burst": 0.005}, timeout=40,
    ), 60)
    assert result["ok"], result
    assert stats is not None and stats["s2c"]["bursts"] + stats["c2s"]["bursts"] > 0, stats
    assert accepted[0].conn.counters.packets_lost > 0


class _DropFirstShortHeader(LossyUdpRelay):
    """Loses the first short-header (1-RTT) datagram the server sends — the server's first
    1-RTT packet, which carries HANDSHAKE_DONE — on top of the configured loss."""

    dropped_first = False

    def _relay(self, d: Any, data: bytes) -> None:
        if d is self.s2c and not self.dropped_first and not data[0] & 0x80:
            self.dropped_first = True
            d.received += 1
            d.dropped += 1
            return
        super()._relay(d, data)


def test_lost_handshake_done_with_qh3_client(pki: Pki) -> None:
    """Our server's first 1-RTT packet (HANDSHAKE_DONE) is lost, and 10 % of the
    client's datagrams: the handshake must still be confirmed at the qh3 client and a
    1 MB upload finish.

    qh3's client confirms the handshake only on HANDSHAKE_DONE.  Until then it keeps
    probing in the Handshake space (never acknowledged: we discarded those keys), and
    once its 1-RTT data is congestion-blocked it sends nothing else — not even an ACK
    of our 1-RTT PING probes — so our server never learns by acknowledgment that
    HANDSHAKE_DONE was lost.  The way out is for the server's 1-RTT PTO probes to carry
    the unacknowledged HANDSHAKE_DONE again (RFC 9002 §6.2.4: probes SHOULD carry data;
    RFC 9000 §13.3: HANDSHAKE_DONE is sent until acknowledged).  Seed 3 of the c2s loss
    stalls the handshake every time with bare PING probes.
    """

    async def go() -> tuple[dict[str, Any], list[quicflow.QuicConnection], bool]:
        accepted: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(issued(CA_NAME, "localhost")),
            connection_handler=accepted.append,
        )
        relay = await _DropFirstShortHeader(server.address, c2s_loss=0.10, seed=3).start()
        try:
            async with qh3_process(
                "client", "--port", str(relay.address[1]), "--cafile", pki.cafile,
                "--upload", str(MB), "--download", "1000",
                "--idle-timeout", "5", "--timeout", "15",
            ) as peer:
                await peer.wait_exit(25)
                errors = [ev for ev in peer.events if ev["event"] == "error"]
                assert not errors, (
                    f"qh3 client failed: {errors}; events {peer.events}; our server: "
                    f"{accepted[0].stats()['connection'] if accepted else None}"
                )
                result = await peer.next_event("result", timeout=1)
            return result, accepted, relay.dropped_first
        finally:
            await relay.close()
            server.close()

    result, accepted, dropped = run(go(), 40)
    assert dropped  # the HANDSHAKE_DONE packet really was lost
    assert result["ok"], result
    assert len(accepted) == 1
