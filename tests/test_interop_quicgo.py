"""Interoperability with quic-go (Debian's packaged sources), in both roles, over hq-interop.

quic-go runs as our own peer program (``tests/peers/quicgo/main.go``, built once per cache
key by ``tests/support/quicgo.py``) in a process of its own; quicflow runs in the test's
event loop. Every file is compared by SHA-256 with the served one. Roles: ``qf-client``
is quicflow's hq client against quic-go's server, ``qf-server`` quic-go's client against
quicflow's hq server.

quic-go facts used here: its TLS stack (qtls) lets a client restrict the TLS 1.3 suites
(``tls.Config.CipherSuites``); it starts key updates by itself after a packet count that
its API does not expose (the peer sets the internal ``KeyUpdateInterval`` variable); its
server sends Retry when ``Config.RequireAddressValidation`` says so. quicflow's server
does not send Retry yet, so Retry is tested with quicflow as the client only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.apps import hq
from quicflow.crypto.suites import CipherSuite
from tests.support import quicgo
from tests.support.quic_helpers import run, self_signed
from tests.support.quicgo import QuicGoProcess
from tests.support.relay import LossyUdpRelay

pytestmark = pytest.mark.interop

KB, MB = 1024, 1024 * 1024
ROLES = ["qf-client", "qf-server"]
SUITES = {
    "aes128": CipherSuite.AES_128_GCM_SHA256,
    "aes256": CipherSuite.AES_256_GCM_SHA384,
    "chacha20": CipherSuite.CHACHA20_POLY1305_SHA256,
}


@dataclass
class Site:
    """A served directory, the certificate files and a download directory."""

    root: Path
    out: Path
    cert: str
    key: str
    files: dict[str, str] = field(default_factory=dict)  # "/name" -> sha256

    def add(self, name: str, size: int) -> str:
        data = os.urandom(size)
        (self.root / name).write_bytes(data)
        self.files["/" + name] = hashlib.sha256(data).hexdigest()
        return "/" + name


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    why = quicgo.missing()
    require(why is None, why or "")
    quicgo.build()
    (tmp_path / "root").mkdir()
    (tmp_path / "out").mkdir()
    cert, key = self_signed().write(tmp_path, "server")
    return Site(tmp_path / "root", tmp_path / "out", cert, key)


def client_config(**kw: Any) -> quicflow.Configuration:
    return quicflow.Configuration(
        alpn_protocols=[hq.ALPN], cadata=self_signed().cert_pem, server_name="localhost", **kw
    )


def server_config(**kw: Any) -> quicflow.Configuration:
    cred = self_signed()
    return hq.server_configuration([cred.cert], cred.key, **kw)


def check_downloads(site: Site, downloads: list[tuple[str, int, str]]) -> None:
    """Every served file arrived whole: (path, bytes, sha256) as the server has it."""
    assert sorted(p for p, _, _ in downloads) == sorted(site.files)
    for path, size, sha in downloads:
        assert size == (site.root / path.lstrip("/")).stat().st_size, path
        assert sha == site.files[path], f"{path}: content differs"


# ---------------------------------------------------------------------------- the two roles


@dataclass
class Outcome:
    peer: dict[str, Any]  # quic-go's "closed" event (and "handshake" under "handshake")
    conn_stats: dict[str, Any]  # what quicflow's Connection saw
    close: quicflow.ConnectionClosedError | None = None  # quicflow server: how it ended


def _quicflow_view(face: quicflow.QuicConnection) -> dict[str, Any]:
    c = face.conn
    return {"cipher_suite": int(c.cipher_suite) if c.cipher_suite is not None else None,
            "alpn": face.alpn_protocol, "key_updates_received": c.key_updates_received,
            "retried": c.retry_scid is not None}  # fmt: skip


async def start_key_update(face: quicflow.QuicConnection) -> None:
    """Start a key update once the previous one (if any) was answered by the peer."""
    for _ in range(5000):
        if not face.conn.key_update_pending and face.conn.handshake_confirmed:
            face.conn.initiate_key_update()
            face.flush()
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the peer did not answer the previous key update within 5 s")


async def as_client(site: Site, *, peer_args: tuple[str, ...] = (), loss: float = 0.0,
                    key_updates: bool = False, **config: Any) -> Outcome:  # fmt: skip
    """quicflow's client downloads every file of the site from quic-go's server (all at
    once; with ``key_updates``, one after the other with a key update before each)."""
    async with QuicGoProcess("server", "-cert", site.cert, "-key", site.key,
                             "-root", str(site.root), *peer_args) as peer:  # fmt: skip
        assert peer.port is not None
        port = peer.port
        relay = None
        if loss:
            relay = await LossyUdpRelay(("127.0.0.1", port), loss=loss, reorder=loss,
                                        seed=7).start()  # fmt: skip
            port = relay.address[1]
        try:
            async with quicflow.connect("127.0.0.1", port,
                                        configuration=client_config(**config)) as face:
                if key_updates:
                    results = []
                    for p in site.files:
                        await start_key_update(face)
                        results.append(await hq.fetch(face, p))
                else:
                    results = await asyncio.gather(*(hq.fetch(face, p) for p in site.files))
                view = _quicflow_view(face)
            downloads = [(p, n, sha) for p, (n, sha) in zip(site.files, results, strict=True)]
            check_downloads(site, downloads)
            closed = await peer.next_event("closed", timeout=30)
        finally:
            if relay is not None:
                await relay.close()
        closed["handshake"] = await peer.next_event("handshake")
    return Outcome(closed, view)


async def as_server(site: Site, *, peer_args: tuple[str, ...] = (), loss: float = 0.0,
                    key_updates: bool = False, **config: Any) -> Outcome:  # fmt: skip
    """quic-go's client downloads every file of the site from quicflow's server (all at
    once; with ``key_updates``, one after the other, quicflow starting a key update
    before it answers each request)."""
    faces: list[quicflow.QuicConnection] = []
    handler = hq.HqServerHandler(str(site.root))

    async def serve_stream(reader: quicflow.QuicStreamReader,
                           writer: quicflow.QuicStreamWriter) -> None:  # fmt: skip
        if key_updates:
            await start_key_update(writer.connection)
        await handler(reader, writer)

    server = await quicflow.serve(serve_stream, "127.0.0.1", 0,
                                  configuration=server_config(**config),
                                  connection_handler=faces.append)  # fmt: skip
    if key_updates:
        peer_args = (*peer_args, "-sequential")
    port = server.address[1]
    relay = None
    if loss:
        relay = await LossyUdpRelay(("127.0.0.1", port), loss=loss, reorder=loss,
                                    seed=7).start()  # fmt: skip
        port = relay.address[1]
    try:
        async with QuicGoProcess("client", "-connect", f"127.0.0.1:{port}",
                                 "-ca", site.cert, "-server-name", "localhost",
                                 "-out", str(site.out), *peer_args, *site.files) as peer:
            result = await peer.next_event("result", timeout=120)
            closed = await peer.next_event("closed", timeout=30)
            closed["handshake"] = await peer.next_event("handshake")
            assert await peer.wait_exit(30) == 0
        assert len(faces) == 1
        face = faces[0]
        await asyncio.wait_for(face.wait_closed(), 10)
        close: quicflow.ConnectionClosedError | None = None
        try:
            face.raise_if_closed()
        except quicflow.ConnectionClosedError as e:
            close = e
        view = _quicflow_view(face)
    finally:
        if relay is not None:
            await relay.close()
        server.close()
    downloads = [(f["path"], f["bytes"], f["sha256"]) for f in result["files"]]
    check_downloads(site, downloads)
    for path, _, sha in downloads:  # the files quic-go wrote are the served ones too
        assert hashlib.sha256((site.out / path.lstrip("/")).read_bytes()).hexdigest() == sha
    assert handler.stats.requests == len(site.files)
    return Outcome(closed, view, close)


def exchange(role: str, site: Site, timeout: float = 120, **kw: Any) -> Outcome:
    body: Callable[..., Awaitable[Outcome]] = as_client if role == "qf-client" else as_server
    return run(body(site, **kw), timeout=timeout)


# ---------------------------------------------------------------------------- cases


@pytest.mark.parametrize("role", ROLES)
def test_handshake_and_close_with_code_0(site: Site, role: str) -> None:
    site.add("hello.txt", 13)
    out = exchange(role, site)
    assert out.peer["handshake"]["alpn"] == hq.ALPN
    assert out.conn_stats["alpn"] == hq.ALPN
    assert out.peer["handshake"]["cipher_suite"] == out.conn_stats["cipher_suite"]
    # the side that did not close saw an application close with code 0 from its peer
    assert out.peer["application"] is True and out.peer["code"] == 0
    if role == "qf-client":
        assert out.peer["remote"] is True  # quic-go's server saw our CONNECTION_CLOSE(0)
    else:
        assert out.close is not None and out.close.by_peer and out.close.application
        assert out.close.error_code == 0


@pytest.mark.parametrize("role", ROLES)
def test_multistream_transfer(site: Site, role: str) -> None:
    for i, size in enumerate([0, 1, 1200, 64 * KB + 1, 300 * KB, 1 * MB, 3 * MB, 7]):
        site.add(f"f{i}.bin", size)
    exchange(role, site)


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("role", ROLES)
def test_cipher_suite_alone(site: Site, role: str, suite: str) -> None:
    """The client offers one suite only (quicflow's Configuration.cipher_suites, quic-go's
    tls.Config.CipherSuites); the connection uses it and transfers intact."""
    site.add("data.bin", 512 * KB)
    if role == "qf-client":
        out = exchange(role, site, cipher_suites=[SUITES[suite]])
    else:
        out = exchange(role, site, peer_args=("-suite", suite))
    assert out.conn_stats["cipher_suite"] == int(SUITES[suite])
    assert out.peer["handshake"]["cipher_suite"] == int(SUITES[suite])


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicflow(site: Site, role: str) -> None:
    """Three files one after the other, quicflow starting a key update before each: quic-go
    follows all three, and quicflow sees each answered."""
    for name in ("a.bin", "b.bin", "c.bin"):
        site.add(name, 1 * MB)
    out = exchange(role, site, key_updates=True)
    assert out.peer["key_updates_remote"] == 3
    assert out.peer["key_updates_local"] == 0
    assert out.conn_stats["key_updates_received"] == 3  # the peer's answers


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicgo(site: Site, role: str) -> None:
    site.add("a.bin", 4 * MB)
    out = exchange(role, site, peer_args=("-key-update", "200"))
    assert out.peer["key_updates_local"] >= 2
    assert out.conn_stats["key_updates_received"] == out.peer["key_updates_local"]


def test_retry_from_quicgo_server(site: Site) -> None:
    """quic-go's server demands address validation: quicflow's client follows the Retry
    (new token, retry_source_connection_id checked) and the transfer completes."""
    site.add("a.bin", 1 * MB)
    out = exchange("qf-client", site, peer_args=("-retry",))
    assert out.conn_stats["retried"] is True


@pytest.mark.parametrize("role", ROLES)
def test_loss_and_reordering(site: Site, role: str) -> None:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    for i in range(4):
        site.add(f"l{i}.bin", 256 * KB)
    exchange(role, site, loss=0.05, timeout=150)
