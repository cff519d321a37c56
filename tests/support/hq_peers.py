"""hq-interop exchanges between quicflow and a foreign peer program, in both roles.

The peer is a process speaking the JSON-lines protocol of ``tests/peers/*`` (quic-go's
``QuicGoProcess``, quinn's ``QuinnProcess``): ``server --cert C --key K --root DIR ...``
answers ``{"event": "ready", "port": N}``; ``client --connect HOST:PORT --ca F
--server-name N --out DIR ... /path...`` answers ``{"event": "result", "files": [...]}``;
both report ``handshake`` and ``closed`` (``how``, ``remote``, ``code``). quicflow runs in
the test's event loop. Every file is compared by SHA-256 with the served one. Roles:
``qf-client`` is quicflow's hq client against the peer's server, ``qf-server`` the peer's
client against quicflow's hq server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import quicflow
from quicflow.apps import hq
from quicflow.crypto.suites import CipherSuite
from tests.support.aioquic_peer import AioquicProcess
from tests.support.quic_helpers import Credential, ca, issued, run, self_signed
from tests.support.relay import LossyUdpRelay

PeerClass = Callable[..., AioquicProcess]
ROLES = ["qf-client", "qf-server"]


@dataclass
class Site:
    """A served directory, the certificate files and a download directory. The server
    certificate (both sides use it) is self-signed unless the site was made with a CA
    (``make_site(..., ca_name=...)``): then ``ca`` is the CA's PEM file, which the
    clients trust."""

    root: Path
    out: Path
    cert: str
    key: str
    files: dict[str, str] = field(default_factory=dict)  # "/name" -> sha256
    credential: Credential = field(default_factory=self_signed)
    ca: str = ""
    ca_pem: bytes = b""

    def __post_init__(self) -> None:
        if not self.ca:
            self.ca, self.ca_pem = self.cert, self.credential.cert_pem

    def add(self, name: str, size: int) -> str:
        data = os.urandom(size)
        (self.root / name).write_bytes(data)
        self.files["/" + name] = hashlib.sha256(data).hexdigest()
        return "/" + name


def client_config(cadata: bytes | None = None, **kw: Any) -> quicflow.Configuration:
    return quicflow.Configuration(
        alpn_protocols=[hq.ALPN], cadata=cadata or self_signed().cert_pem,
        server_name="localhost", **kw
    )


def server_config(cred: Credential | None = None, **kw: Any) -> quicflow.Configuration:
    cred = cred or self_signed()
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
    peer: dict[str, Any]  # the peer's "closed" event (and "handshake" under "handshake")
    conn_stats: dict[str, Any]  # what quicflow's Connection saw
    close: quicflow.ConnectionClosedError | None = None  # quicflow server: how it ended


def _quicflow_view(face: quicflow.QuicConnection) -> dict[str, Any]:
    c = face.conn
    return {"cipher_suite": int(c.cipher_suite) if c.cipher_suite is not None else None,
            "alpn": face.alpn_protocol, "key_updates_received": c.key_updates_received,
            "retried": c.retry_scid is not None,
            "peer_min_ack_delay": c.peer_params.min_ack_delay if c.peer_params else None,
            "key_updates_started": c.counters.key_updates_started,
            "packets_sent": c.counters.packets_sent,
            "ack_frequency_sent": c.counters.ack_frequency_sent,
            "ack_frequency_received": c.counters.ack_frequency_received,
            "immediate_acks_received": c.counters.immediate_acks_received}  # fmt: skip


async def start_key_update(face: quicflow.QuicConnection) -> None:
    """Start a key update once the previous one (if any) was answered by the peer, and
    wait until it has started (RFC 9001 §6.5: the core defers an update asked for less
    than three PTOs after the previous one, and starts it by itself from its timer).

    The wait ends as soon as the update has started, not when it is answered: the peer
    can only answer once it receives a packet in the new key phase, and the caller's
    next request is what sends one. The update is asked for exactly once: a deferred
    update can start and be answered between two polls, so "not pending and not
    requested" alone does not tell that it still has to be asked for.
    """
    conn = face.conn
    asked = False
    for _ in range(5000):
        if not asked and not conn.key_update_pending and conn.handshake_confirmed:
            conn.initiate_key_update()
            face.flush()
            asked = True
        if asked and not conn.key_update_requested:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the previous key update was not answered, or this one did not "
                         f"start, within 5 s (asked={asked}, pending={conn.key_update_pending}, "
                         f"requested={conn.key_update_requested}, allowed_at="
                         f"{conn.key_update_allowed_at - asyncio.get_running_loop().time():.3f}"
                         " s from now)")


async def as_client(peer_class: PeerClass, site: Site, *, peer_args: tuple[str, ...] = (),
                    loss: float = 0.0, key_updates: bool = False, sequential: bool = False,
                    **config: Any) -> Outcome:  # fmt: skip
    """quicflow's client downloads every file of the site from the peer's server (all at
    once; with ``sequential``, one after the other; with ``key_updates`` too, quicflow
    starting a key update before each)."""
    async with peer_class("server", "--cert", site.cert, "--key", site.key,
                          "--root", str(site.root), *peer_args) as peer:  # fmt: skip
        assert peer.port is not None
        port = peer.port
        relay = None
        if loss:
            relay = await LossyUdpRelay(("127.0.0.1", port), loss=loss, reorder=loss,
                                        seed=7).start()  # fmt: skip
            port = relay.address[1]
        try:
            async with quicflow.connect(
                    "127.0.0.1", port,
                    configuration=client_config(site.ca_pem, **config)) as face:
                if key_updates or sequential:
                    results = []
                    for p in site.files:
                        if key_updates:
                            await start_key_update(face)
                        results.append(await hq.fetch(face, p))
                else:
                    results = await asyncio.gather(*(hq.fetch(face, p) for p in site.files))
                view = _quicflow_view(face)
            downloads = [(p, n, sha) for p, (n, sha) in zip(site.files, results, strict=True)]
            check_downloads(site, downloads)
            # through a lossy relay our one CONNECTION_CLOSE can be lost; a peer with
            # nothing left to send then learns of the end only at its idle timeout
            # (30 s for picoquic): RFC 9000 §10.2.1 resends a close only in answer to
            # the peer's packets (seen once in a CI run: 'closed' at ~30 s)
            closed = await peer.next_event("closed", timeout=45 if loss else 30)
        finally:
            if relay is not None:
                await relay.close()
        closed["handshake"] = await peer.next_event("handshake")
    return Outcome(closed, view)


async def as_server(peer_class: PeerClass, site: Site, *, peer_args: tuple[str, ...] = (),
                    loss: float = 0.0, key_updates: bool = False, sequential: bool = False,
                    **config: Any) -> Outcome:  # fmt: skip
    """The peer's client downloads every file of the site from quicflow's server (all at
    once; with ``key_updates``, one after the other, quicflow starting a key update
    before it answers each request)."""
    faces: list[quicflow.QuicConnection] = []
    handler = hq.HqServerHandler(str(site.root))
    if loss:
        # the peer exits right after its CONNECTION_CLOSE; when the relay drops that one
        # datagram nothing resends it and our side ends at its idle timeout (kept short)
        config.setdefault("idle_timeout", 5.0)

    async def serve_stream(reader: quicflow.QuicStreamReader,
                           writer: quicflow.QuicStreamWriter) -> None:  # fmt: skip
        if key_updates:
            await start_key_update(writer.connection)
        await handler(reader, writer)

    server = await quicflow.serve(serve_stream, "127.0.0.1", 0,
                                  configuration=server_config(site.credential, **config),
                                  connection_handler=faces.append)  # fmt: skip
    if key_updates or sequential:
        peer_args = (*peer_args, "--sequential")
    port = server.address[1]
    relay = None
    if loss:
        relay = await LossyUdpRelay(("127.0.0.1", port), loss=loss, reorder=loss,
                                    seed=7).start()  # fmt: skip
        port = relay.address[1]
    try:
        async with peer_class("client", "--connect", f"127.0.0.1:{port}",
                              "--ca", site.ca, "--server-name", "localhost",
                              "--out", str(site.out), *peer_args, *site.files) as peer:
            result = await peer.next_event("result", timeout=120)
            closed = await peer.next_event("closed", timeout=30)
            closed["handshake"] = await peer.next_event("handshake")
            assert await peer.wait_exit(30) == 0
        assert len(faces) == 1
        face = faces[0]
        await asyncio.wait_for(face.wait_closed(), 10 + config.get("idle_timeout", 0) * bool(loss))
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
    for path, _, sha in downloads:  # the files the peer wrote are the served ones too
        assert hashlib.sha256((site.out / path.lstrip("/")).read_bytes()).hexdigest() == sha
    assert handler.stats.requests == len(site.files)
    return Outcome(closed, view, close)


def exchange(peer_class: PeerClass, role: str, site: Site, timeout: float = 120,
             **kw: Any) -> Outcome:  # fmt: skip
    """Run one exchange in ``role`` ("qf-client" or "qf-server") against the peer."""
    body: Callable[..., Awaitable[Outcome]] = as_client if role == "qf-client" else as_server
    return run(body(peer_class, site, **kw), timeout=timeout)


def make_site(tmp_path: Path, ca_name: str | None = None) -> Site:
    """An empty site; with ``ca_name``, its certificate is issued by that test CA (for
    peers whose TLS does not take a self-signed leaf as its own trust anchor)."""
    (tmp_path / "root").mkdir()
    (tmp_path / "out").mkdir()
    if ca_name is None:
        cert, key = self_signed().write(tmp_path, "server")
        return Site(tmp_path / "root", tmp_path / "out", cert, key)
    credential = issued(ca_name, "localhost")
    cert, key = credential.write(tmp_path, "server")
    authority = ca(ca_name)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.cert_pem)
    return Site(tmp_path / "root", tmp_path / "out", cert, key, credential=credential,
                ca=str(ca_file), ca_pem=authority.cert_pem)


def peer_saw_close_0(event: dict[str, Any]) -> bool:
    """The peer's "closed" event reports an application close with code 0."""
    return event.get("how") == "application" and event.get("code") == 0


# ------------------------------------------------------------ cases shared by the peers
# Each runs one exchange through ``exchange`` (a test module's ``exchange(role, site,
# timeout=..., **kw)``) and asserts what holds for every peer; the test modules add the
# assertions that only their peer can report.

KB, MB = 1024, 1024 * 1024
SUITES = {
    "aes128": CipherSuite.AES_128_GCM_SHA256,
    "aes256": CipherSuite.AES_256_GCM_SHA384,
    "chacha20": CipherSuite.CHACHA20_POLY1305_SHA256,
}
Exchange = Callable[..., Outcome]


class Peer(Protocol):
    def missing(self) -> str | None: ...
    def build(self) -> Path: ...


def peer_site(peer: Peer, tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    """The site fixture of a foreign peer's tests: required (a CI skip fails), built, and
    an empty site to add files to."""
    why = peer.missing()
    require(why is None, why or "")
    peer.build()
    return make_site(tmp_path)


def multistream_transfer(exchange: Exchange, role: str, site: Site) -> Outcome:
    for i, size in enumerate([0, 1, 1200, 64 * KB + 1, 300 * KB, 1 * MB, 3 * MB, 7]):
        site.add(f"f{i}.bin", size)
    return exchange(role, site)


def more_streams_than_the_stream_limit(exchange: Exchange, role: str, site: Site) -> Outcome:
    """400 files at once: more streams than quicflow's server allows open at a time (256)
    and than the peers allow (100 for quic-go and quinn), so each client waits for
    MAX_STREAMS."""
    for i in range(400):
        site.add(f"s{i}.txt", 1000 + i)
    return exchange(role, site)


def cipher_suite_alone(exchange: Exchange, role: str, site: Site, suite: str,
                       peer_args: tuple[str, ...]) -> Outcome:  # fmt: skip
    """The client offers one suite only (quicflow's Configuration.cipher_suites; the peer's
    client through ``peer_args``); the connection uses it and the file arrives intact."""
    site.add("data.bin", 512 * KB)
    if role == "qf-client":
        out = exchange(role, site, cipher_suites=[SUITES[suite]])
    else:
        out = exchange(role, site, peer_args=peer_args)
    assert out.conn_stats["cipher_suite"] == int(SUITES[suite])
    return out


def key_updates_started_by_quicflow(exchange: Exchange, role: str, site: Site) -> Outcome:
    """Three files one after the other, quicflow starting a key update before each; the
    peer answers each one."""
    for name in ("a.bin", "b.bin", "c.bin"):
        site.add(name, 1 * MB)
    out = exchange(role, site, key_updates=True)
    assert out.conn_stats["key_updates_received"] == 3  # the peer's answers
    return out


def key_updates_at_a_packet_count(exchange: Exchange, role: str, site: Site) -> Outcome:
    """quicflow with ``key_update_after=20``: the key update it starts by itself at the
    AEAD confidentiality limit (RFC 9001 §6.6), made to come after 20 packets. In an 8 MB
    download (quicflow sends the data as server, the ACKs as client) it starts one soon
    after the handshake and more while the transfer lasts (each three PTOs after the
    peer answered the one before, RFC 9001 §6.5); the peer answers them, and the file
    arrives intact. (How many fit in the transfer's time varies: at least one.)"""
    site.add("a.bin", 8 * MB)
    out = exchange(role, site, key_update_after=20)
    started = out.conn_stats["key_updates_started"]
    # the peer answered them (the last may have started just before the end)
    assert 1 <= started and max(1, started - 1) <= out.conn_stats["key_updates_received"] <= started
    return out


def retry_from_peer_server(exchange: Exchange, site: Site) -> Outcome:
    """The peer's server answers the first Initial with a Retry: quicflow's client follows
    it (new token, retry_source_connection_id checked) and the transfer completes."""
    site.add("a.bin", 1 * MB)
    out = exchange("qf-client", site, peer_args=("--retry",))
    assert out.conn_stats["retried"] is True
    return out


def loss_and_reordering(exchange: Exchange, role: str, site: Site, timeout: float) -> Outcome:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    for i in range(4):
        site.add(f"l{i}.bin", 256 * KB)
    return exchange(role, site, loss=0.05, timeout=timeout)


def heavy_loss_download(exchange: Exchange, site: Site, timeout: float) -> Outcome:
    """quicflow's client downloads 1 MiB, 300 KiB and two small files through 20 % loss
    and 20 % reordering each way, with small receive windows that do not grow (64 KiB
    for the connection, 32 KiB per stream): quicflow takes the peer's retransmissions
    however they are cut up (picoquic resends in pieces of a few hundred bytes, some of
    6 to 30), each stored out of order within the window it gave (RFC 9000 §2.2)."""
    for i, size in enumerate([1200, 40 * KB, 300 * KB, 1 * MB]):
        site.add(f"h{i}.bin", size)
    return exchange("qf-client", site, loss=0.20, timeout=timeout, max_data=64 * KB,
                    max_data_window=64 * KB, max_stream_data=32 * KB,
                    max_stream_data_window=32 * KB)  # fmt: skip
