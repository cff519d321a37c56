"""Snapshot and restore of running connections (DESIGN.md, "Connectivity migration")."""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
import random
import zlib
from collections.abc import Callable
from typing import Any

import pytest

from quicflow.endpoint.endpoint import Endpoint
from quicflow.tls.certs import generate_self_signed
from quicflow.transport import codec as codec_mod
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.events import StreamReadable
from quicflow.transport.snapshot import (
    CLASSES,
    CODEC,
    TIME_FIELDS,
    SnapshotError,
    new_snapshot_key,
    open_snapshot,
    restore_connection,
    seal_snapshot,
    snapshot_connection,
    snapshot_info,
)
from tests.support.snapshot_peer import (
    CLIENT_ADDR,
    SERVER_ADDR,
    ClientApp,
    LocalSide,
    Peer,
    RemoteSide,
    ServerApp,
    adopt,
    payload,
)

SIZE = 5 * 1024 * 1024
DELAY = 0.005  # one-way
_CERT = generate_self_signed(["localhost"])


class Net:
    """Two peers joined by a link with a fixed one-way delay and random loss."""

    def __init__(self, client: Peer, server: Peer | None, now: float, loss: float = 0.0,
                 seed: int = 1) -> None:
        self.client = client
        self.server = server
        self.now = now
        self.loss = loss
        self.rng = random.Random(seed)
        self.queue: list[tuple[float, int, bool, bytes]] = []  # (arrival, seq, to_server, d)
        self.seq = 0
        self.delivered_to_server = 0

    def _send(self, datagrams: list[bytes], to_server: bool) -> None:
        for d in datagrams:
            if self.loss and self.rng.random() < self.loss:
                continue
            self.seq += 1
            heapq.heappush(self.queue, (self.now + DELAY, self.seq, to_server, d))

    def in_flight(self, to_server: bool) -> int:
        return sum(1 for q in self.queue if q[2] == to_server)

    def drop_in_flight(self, to_server: bool) -> int:
        before = len(self.queue)
        self.queue = [q for q in self.queue if q[2] != to_server]
        heapq.heapify(self.queue)
        return before - len(self.queue)

    def run_for(self, duration: float) -> None:
        end = self.now + duration
        self.run(lambda: self.now >= end, stop_at=end)

    def run(self, until: Callable[[], bool], max_time: float = 60.0,
            stop_at: float = math.inf) -> None:
        deadline = self.now + max_time
        for _ in range(2_000_000):
            if until():
                return
            assert self.now < deadline, "simulation made no progress"
            to_client: list[bytes] = []
            to_server: list[bytes] = []
            while self.queue and self.queue[0][0] <= self.now:
                _, _, srv, d = heapq.heappop(self.queue)
                (to_server if srv else to_client).append(d)
            self._send(self.client.step(self.now, to_client), True)
            if self.server is not None:
                self.delivered_to_server += len(to_server)
                self._send(self.server.step(self.now, to_server), False)
            times = [self.queue[0][0]] if self.queue else []
            for peer in (self.client, self.server):
                t = peer.timer() if peer is not None else None
                if t is not None:
                    times.append(t)
            nxt = min(times) if times else self.now + 0.01
            self.now = min(max(nxt, self.now + 1e-6), max(stop_at, self.now))
        raise AssertionError("too many steps")


def _server_endpoint() -> Endpoint:
    cert, key = _CERT
    config = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key)
    return Endpoint(config, is_server=True)


def _start(size: int = SIZE, loss: float = 0.0) -> tuple[Net, LocalSide, LocalSide]:
    now = 1000.0
    cli_ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False), is_server=False)
    conn = cli_ep.connect(SERVER_ADDR, now, server_name="localhost")
    client = LocalSide(cli_ep, ClientApp(size), SERVER_ADDR, conn)
    server = LocalSide(_server_endpoint(), ServerApp(), CLIENT_ADDR)
    return Net(client, server, now, loss=loss), client, server


def _received(side: LocalSide) -> int:
    app: ClientApp = side.app
    return len(app.received)


def _check_download(side_app: ClientApp, size: int = SIZE) -> None:
    assert side_app.done
    assert len(side_app.received) == size
    assert side_app.digest() == hashlib.sha256(payload(size)).hexdigest()


# ---------------------------------------------------------------------- in process


def test_server_snapshot_restore_mid_download() -> None:
    net, client, server = _start(loss=0.002)
    # capture while the server's datagrams are on the link (lost with the old server): the
    # moment it has none there depends on how the pacer spaces its runs
    net.run(lambda: _received(client) >= 1024 * 1024 and net.in_flight(to_server=False) > 0)
    old = server.conn
    assert old is not None and old.handshake_confirmed
    assert old.loss.bytes_in_flight > 0, "want packets in flight at capture time"
    in_flight = sum(len(sp.sent) for sp in old.loss.spaces)
    old_cids = old.host_cid_list()
    capture = net.now
    blob = snapshot_connection(old, capture, app_state=server.app.state())
    info = snapshot_info(blob)
    assert info["format"] == "quicflow-connection-snapshot" and info["version"] == 4
    assert info["role"] == "server" and info["created"] == capture
    sealed = seal_snapshot(blob, key := new_snapshot_key())

    # the old server is gone: what reaches it now is dropped, and what it sent last is
    # lost too; the client goes on alone for a while
    net.server = None
    net.drop_in_flight(to_server=True)
    assert net.drop_in_flight(to_server=False) > 0
    net.run_for(0.03)
    net.drop_in_flight(to_server=True)

    new_ep = _server_endpoint()
    conn, app_state = restore_connection(
        open_snapshot(sealed, key), engine=new_ep.engine, now=net.now,
        configuration=new_ep.configuration,
    )
    assert conn is not old and conn.engine is new_ep.engine
    assert conn.tls is None and conn.send_protectors == [None] * 4
    assert all(isinstance(e, StreamReadable) for e in conn.events)
    assert conn.host_cid_list() == old_cids
    assert conn.loss.bytes_in_flight == 0 and conn.counters.packets_lost >= in_flight
    assert conn.send_queue, "lost frames must be queued again"
    delta = net.now - capture
    assert conn.idle_deadline == pytest.approx(old.idle_deadline + delta)
    assert conn._now_hint == net.now
    adopt(new_ep, conn)
    new_server = LocalSide(new_ep, ServerApp(app_state), CLIENT_ADDR, conn)
    net.server = new_server
    net.run(lambda: client.app.done)
    _check_download(client.app)
    assert net.delivered_to_server > 0
    assert conn.state < 2  # not closing


def test_client_snapshot_restore_mid_download() -> None:
    net, client, server = _start()
    net.run(lambda: _received(client) >= 1024 * 1024)
    old = client.conn
    assert old is not None
    capture = net.now
    blob = snapshot_connection(old, capture, app_state=client.app.state())
    key = new_snapshot_key()
    sealed = seal_snapshot(blob, key)
    # the client vanishes for a while: datagrams to it are lost
    net.client = _Blackhole()
    net.drop_in_flight(to_server=False)
    net.run_for(0.05)
    net.drop_in_flight(to_server=False)

    new_ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False), is_server=False)
    conn, app_state = restore_connection(open_snapshot(sealed, key), engine=new_ep.engine,
                                         now=net.now)
    assert conn.is_client
    assert conn.configuration.certificate_chain == [] and conn.configuration.private_key is None
    adopt(new_ep, conn)
    app = ClientApp(state=app_state)
    assert len(app.received) == len(client.app.received)
    net.client = LocalSide(new_ep, app, SERVER_ADDR, conn)
    net.run(lambda: app.done)
    _check_download(app)


class _Blackhole:
    def step(self, now: float, incoming: list[bytes]) -> list[bytes]:
        return []

    def timer(self) -> float | None:
        return None


# ---------------------------------------------------------------------- two processes


@pytest.mark.timeout(300)
def test_server_restored_in_another_process() -> None:
    net, client, server = _start(loss=0.002)
    net.run(lambda: _received(client) >= 1024 * 1024)
    conn = server.conn
    assert conn is not None and conn.loss.bytes_in_flight > 0
    key = new_snapshot_key()
    sealed = seal_snapshot(snapshot_connection(conn, net.now, server.app.state()), key)
    net.server = None
    net.drop_in_flight(to_server=True)
    net.drop_in_flight(to_server=False)
    net.run_for(0.02)
    net.drop_in_flight(to_server=True)
    remote = RemoteSide(sealed, key, net.now)
    try:
        net.server = remote
        net.run(lambda: client.app.done)
        summary = remote.close()
    finally:
        remote.kill()
    _check_download(client.app)
    assert summary["pid"] != 0 and summary["packets_lost"] > 0


@pytest.mark.timeout(300)
def test_client_restored_in_another_process() -> None:
    net, client, server = _start()
    net.run(lambda: _received(client) >= 1024 * 1024)
    conn = client.conn
    assert conn is not None
    key = new_snapshot_key()
    sealed = seal_snapshot(snapshot_connection(conn, net.now, client.app.state()), key)
    net.client = _Blackhole()
    net.drop_in_flight(to_server=False)
    remote = RemoteSide(sealed, key, net.now)
    try:
        net.client = remote

        def finished() -> bool:
            # the server forgets its stream once the client acknowledged every byte + FIN
            srv = server.conn
            return srv is not None and not srv.streams and srv.loss.bytes_in_flight == 0

        net.run(finished)
        summary = remote.close()
    finally:
        remote.kill()
    assert summary["done"] is True
    assert summary["received"] == SIZE
    assert summary["sha256"] == hashlib.sha256(payload(SIZE)).hexdigest()


# ---------------------------------------------------------------------- errors


def _established() -> tuple[Net, LocalSide, LocalSide]:
    net, client, server = _start(size=200_000)
    net.run(lambda: client.app.stream_id is not None and server.conn is not None
            and server.conn.handshake_confirmed and client.conn is not None
            and client.conn.handshake_confirmed)
    return net, client, server


def test_snapshot_before_handshake_is_refused() -> None:
    cli_ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False), is_server=False)
    conn = cli_ep.connect(SERVER_ADDR, 5.0, server_name="localhost")
    with pytest.raises(SnapshotError, match="handshake"):
        snapshot_connection(conn, 5.0)


def test_snapshot_of_closing_connection_is_refused() -> None:
    net, client, _ = _established()
    assert client.conn is not None
    client.conn.close(0, "bye", now=net.now)
    with pytest.raises(SnapshotError, match="clos"):
        snapshot_connection(client.conn, net.now)


def test_sealed_snapshot_wrong_key_and_tampering() -> None:
    net, client, _ = _established()
    assert client.conn is not None
    blob = snapshot_connection(client.conn, net.now, b"app")
    key = new_snapshot_key()
    sealed = seal_snapshot(blob, key)
    assert blob not in sealed and open_snapshot(sealed, key) == blob
    assert seal_snapshot(blob, key) != sealed  # random nonce
    with pytest.raises(SnapshotError, match="authentication"):
        open_snapshot(sealed, new_snapshot_key())
    for index in (0, 20, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(SnapshotError):
            open_snapshot(bytes(tampered), key)
    with pytest.raises(SnapshotError):
        open_snapshot(sealed[:10], key)
    with pytest.raises(ValueError):
        seal_snapshot(blob, b"short")


def _rewrite(blob: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc, tail = codec_mod.document(blob)
    edit(doc)
    return codec_mod.assemble(doc, tail)


def test_unknown_class_version_and_garbage_are_rejected() -> None:
    net, client, _ = _established()
    assert client.conn is not None
    blob = snapshot_connection(client.conn, net.now)
    engine = Endpoint(Configuration(alpn_protocols=["perf"]), is_server=False).engine

    def evil_class(doc: dict[str, Any]) -> None:
        doc["body"]["$d"][0][1]["f"]["configuration"]["$c"] = "os.system"

    with pytest.raises(SnapshotError, match="unknown class 'os.system'"):
        restore_connection(_rewrite(blob, evil_class), engine=engine, now=1.0)

    def evil_enum(doc: dict[str, Any]) -> None:
        doc["body"]["$d"][0][1]["f"]["cipher_suite"]["$e"] = "Popen"

    with pytest.raises(SnapshotError, match="unknown enum class 'Popen'"):
        restore_connection(_rewrite(blob, evil_enum), engine=engine, now=1.0)

    def new_version(doc: dict[str, Any]) -> None:
        doc["version"] = 5

    with pytest.raises(SnapshotError, match="version 5"):
        restore_connection(_rewrite(blob, new_version), engine=engine, now=1.0)

    def old_version(doc: dict[str, Any]) -> None:  # a build before out-of-band bytes
        doc["version"] = 3

    with pytest.raises(SnapshotError, match="version 3"):
        restore_connection(_rewrite(blob, old_version), engine=engine, now=1.0)

    def other_format(doc: dict[str, Any]) -> None:
        doc["format"] = "something-else"

    with pytest.raises(SnapshotError, match="format"):
        restore_connection(_rewrite(blob, other_format), engine=engine, now=1.0)

    def extra_field(doc: dict[str, Any]) -> None:
        doc["body"]["$d"][0][1]["f"]["flow"]["f"]["bogus"] = 1

    with pytest.raises(SnapshotError, match="bogus"):
        restore_connection(_rewrite(blob, extra_field), engine=engine, now=1.0)

    for garbage in (b"", b"hello", codec_mod.MAGIC + b"not zlib",
                    codec_mod.MAGIC + zlib.compress(b"[1, 2]"),
                    codec_mod.MAGIC + zlib.compress(b"{\"format\": NaN}"),
                    blob[:-5]):
        with pytest.raises(SnapshotError):
            restore_connection(garbage, engine=engine, now=1.0)


def test_codec_round_trips_values() -> None:
    @dataclasses.dataclass(slots=True)
    class Leaf:
        a: Any = None
        b: float = 0.0

    codec = codec_mod.Codec(format_name="t", version=3, classes=[Leaf], enums=[])
    value = {
        1: (b"\x00\xff", bytearray(b"ab"), [1.5, math.inf, -math.inf]),
        "k": {(1, 2): None, False: True},
        2**70: Leaf(a=[Leaf(), {3}], b=-0.0),
        None: frozenset({"x"}),
    }
    header, out = codec.decode(codec.encode({"note": "x"}, value))
    assert header == {"format": "t", "version": 3, "note": "x"}
    assert out == value
    assert type(out[1]) is tuple and type(out[1][1]) is bytearray
    assert math.isnan(codec.decode(codec.encode({}, math.nan))[1])
    with pytest.raises(SnapshotError, match="cannot encode"):
        codec.encode({}, object())
    with pytest.raises(SnapshotError, match="nested too deeply"):
        deep: Any = []
        for _ in range(100):
            deep = [deep]
        codec.decode(codec.encode({}, deep))
    small = codec_mod.Codec(format_name="t", version=3, classes=[], max_size=1000)
    with pytest.raises(SnapshotError, match="larger"):
        small.decode(small.encode({}, b"\x00" * 10_000))


def test_time_fields_cover_every_clock_field() -> None:
    """Every float field that looks like an absolute time is shifted on restore."""
    not_times = {"idle_timeout", "max_ack_delay", "latest_rtt", "smoothed_rtt", "rttvar",
                 "min_rtt", "cubic_cwnd_epoch", "half_open_timeout",
                 "retry_token_lifetime", "new_token_lifetime"}
    for cls in CLASSES:
        for f in dataclasses.fields(cls):
            name = f.name
            looks_like_time = any(w in name for w in ("time", "deadline", "anchor", "epoch"))
            if looks_like_time and "float" in str(f.type) and name not in not_times:
                assert name in TIME_FIELDS.get(cls, ()), f"{cls.__name__}.{name}"


def test_restore_shifts_times_and_keeps_state() -> None:
    net, client, _ = _established()
    conn = client.conn
    assert conn is not None
    blob = snapshot_connection(conn, net.now, b"state")
    engine = Endpoint(Configuration(alpn_protocols=["perf"]), is_server=False).engine
    later = net.now + 500.0
    restored, app = restore_connection(blob, engine=engine, now=later)
    assert app == b"state"
    assert isinstance(restored, Connection)
    assert restored.idle_deadline == pytest.approx(conn.idle_deadline + 500.0)
    assert restored.now_created == pytest.approx(conn.now_created + 500.0)
    assert restored.spaces[2].largest_received == conn.spaces[2].largest_received
    assert restored.spaces[2].received == conn.spaces[2].received
    assert restored.one_rtt_ready and restored.key_phase == conn.key_phase
    assert restored.peer_params == conn.peer_params
    assert (restored.flow.data_sent, restored.flow.max_data, restored.flow.peer_max_data) == (
        conn.flow.data_sent, conn.flow.max_data, conn.flow.peer_max_data)
    assert restored.cc.cwnd == conn.cc.cwnd and restored.cipher_suite is conn.cipher_suite
    assert set(restored.cid_changes) == {(True, c) for c in conn.host_cid_list()}
    timer = restored.timer()
    assert timer is not None and timer >= later - 1.0
    assert CODEC.version == 4


class _LazyClient(ClientApp):
    """Opens the request but never reads: received data stays buffered."""

    def process(self, conn: Connection) -> None:
        conn.pop_events()
        if self.stream_id is None and conn.handshake_complete:
            self.stream_id = conn.open_stream()
            conn.send_stream_data(self.stream_id, self.size.to_bytes(8, "big"), True)


def test_unread_data_survives_and_is_announced_again() -> None:
    net, client, _ = _start(size=300_000)
    client.app = _LazyClient(300_000)

    def buffered() -> int:
        conn, sid = client.conn, client.app.stream_id
        if conn is None or sid is None or sid not in conn.streams:
            return 0
        recv = conn.streams[sid].recv
        return 0 if recv is None else recv.readable

    net.run(lambda: buffered() >= 100_000)
    conn = client.conn
    assert conn is not None
    sid = client.app.stream_id
    assert sid is not None
    blob = snapshot_connection(conn, net.now)
    engine = Endpoint(Configuration(alpn_protocols=["perf"]), is_server=False).engine
    restored, _ = restore_connection(blob, engine=engine, now=net.now + 1.0)
    assert StreamReadable(sid) in restored.events
    expected = conn.read_stream(sid)
    assert len(expected) >= 100_000
    assert restored.read_stream(sid) == expected == payload(300_000)[: len(expected)]
