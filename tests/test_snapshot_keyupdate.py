"""Snapshot and restore at every point of a 1-RTT key update (issue 7, item 1).

Both sides send 200 KB on a stream of their own and answer the other's with its SHA-256,
so data is in flight both ways on streams opened in both directions when one side is
captured; the copy is restored into a fresh endpoint and both transfers must complete.
Reproduced defect: a capture after ``initiate_key_update()`` and before the peer answers
restored the receive keys with the send key phase, so the copy opened nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.snapshot import (
    new_snapshot_key,
    open_snapshot,
    restore_connection,
    seal_snapshot,
    snapshot_connection,
)
from quicflow.wire.packet import QUIC_V2
from tests.support.snapshot_peer import CLIENT_ADDR, SERVER_ADDR, LocalSide, adopt
from tests.support.twoway import TwoWayApp
from tests.test_snapshot import Net, _server_endpoint

SIZE = 200_000


def _start(loss: float, size: int = SIZE, versions: list[int] | None = None
           ) -> tuple[Net, LocalSide, LocalSide]:
    now = 1000.0
    config = Configuration(alpn_protocols=["perf"], verify_peer=False)
    if versions is not None:
        config.versions = versions
    cli_ep = Endpoint(config, is_server=False)
    conn = cli_ep.connect(SERVER_ADDR, now, server_name="localhost")
    client = LocalSide(cli_ep, TwoWayApp(True, size), SERVER_ADDR, conn)
    server = LocalSide(_server_endpoint(), TwoWayApp(False, size), CLIENT_ADDR)
    return Net(client, server, now, loss=loss, seed=5), client, server


def _conn(side: LocalSide) -> Connection:
    conn = side.conn
    assert conn is not None
    return conn


def _sent(side: LocalSide) -> int:
    app: TwoWayApp = side.app
    return app.sent


# Each point: (name, drive) where drive(net, me, peer) brings "me" (the side captured)
# to that point of a key update.
def _ours_unanswered(net: Net, me: LocalSide, peer: LocalSide) -> None:
    _conn(me).initiate_key_update()
    _until_started(net, _conn(me))  # (a server first waits for HANDSHAKE_DONE's ACK)
    assert _conn(me).key_update_pending


def _ours_in_flight(net: Net, me: LocalSide, peer: LocalSide) -> None:
    _conn(me).initiate_key_update()
    _until_started(net, _conn(me))
    net.run_for(0.002)  # new-phase packets on the wire, no answer yet (one-way 5 ms)
    assert _conn(me).key_update_pending


def _ours_answered(net: Net, me: LocalSide, peer: LocalSide) -> None:
    conn = _conn(me)
    before = conn.key_updates_received
    conn.initiate_key_update()
    net.run(lambda: conn.key_updates_received > before)
    assert not conn.key_update_pending and conn.send_key_phase == conn.recv_key_phase == 1


def _peers_in_flight(net: Net, me: LocalSide, peer: LocalSide) -> None:
    _conn(peer).initiate_key_update()
    net.run_for(0.002)
    assert _conn(me).key_updates_received == 0 and _conn(me).recv_key_phase == 0


def _peers_followed(net: Net, me: LocalSide, peer: LocalSide) -> None:
    conn = _conn(me)
    _conn(peer).initiate_key_update()
    net.run(lambda: conn.key_updates_received > 0)
    assert conn.send_key_phase == conn.recv_key_phase == 1


def _until_started(net: Net, conn: Connection) -> None:
    """Run until a requested key update has started: it waits three PTOs after the
    previous one (RFC 9001 §6.5). Small steps: ``Net.run`` would jump to the next timer
    (maybe the idle timeout) before it looked again."""
    for _ in range(10_000):
        if not conn.key_update_requested:
            return
        net.run_for(0.002)
    raise AssertionError("the key update never started")


def _two_updates(net: Net, me: LocalSide, peer: LocalSide) -> None:
    _ours_answered(net, me, peer)
    conn = _conn(me)
    conn.initiate_key_update()  # back to phase 0 for sending, unanswered
    _until_started(net, conn)
    assert conn.send_key_phase == 0 and conn.recv_key_phase == 1


POINTS: dict[str, Callable[[Net, LocalSide, LocalSide], None]] = {
    "none": lambda net, me, peer: None,
    "ours_unanswered": _ours_unanswered,
    "ours_in_flight": _ours_in_flight,
    "ours_answered": _ours_answered,
    "peers_in_flight": _peers_in_flight,
    "peers_followed": _peers_followed,
    "second_update_unanswered": _two_updates,
}


#: Points that take longer to reach: the second update waits three PTOs after the first
#: (RFC 9001 §6.5), so the transfers must be larger to still be in flight then (without
#: loss they go faster): point -> (size without loss, size with loss).
SIZES = {"second_update_unanswered": (12 * SIZE, 4 * SIZE)}


def _move(net: Net, side: LocalSide, is_client: bool, size: int = SIZE) -> LocalSide:
    """Capture ``side``, lose it for a moment, restore it into a fresh endpoint."""
    old = _conn(side)
    capture_phases = (old.send_key_phase, old.recv_key_phase)
    key = new_snapshot_key()
    app: TwoWayApp = side.app
    sealed = seal_snapshot(snapshot_connection(old, net.now, app.state()), key)
    assert old.released and old.terminated
    assert side.endpoint.datagrams_to_send(old, net.now) == [], "a captured source sent"
    gone: LocalSide | None = None
    if is_client:
        net.client = _Silent()  # type: ignore[assignment]
    else:
        net.server = gone
    net.run_for(0.01)
    if is_client:
        ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False),
                      is_server=False)
    else:
        ep = _server_endpoint()
    conn, state = restore_connection(open_snapshot(sealed, key), engine=ep.engine, now=net.now,
                                     configuration=ep.configuration)
    assert (conn.send_key_phase, conn.recv_key_phase) == capture_phases
    adopt(ep, conn)
    new = LocalSide(ep, TwoWayApp(is_client, size, state), SERVER_ADDR if is_client
                    else CLIENT_ADDR, conn)
    if is_client:
        net.client = new
    else:
        net.server = new
    return new


class _Silent:
    def step(self, now: float, incoming: list[bytes]) -> list[bytes]:
        return []

    def timer(self) -> float | None:
        return None


@pytest.mark.parametrize("loss", [0.0, 0.02], ids=["clean", "lossy"])
@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("point", list(POINTS))
def test_capture_at_every_point_of_a_key_update(point: str, role: str, loss: float) -> None:
    size = SIZES.get(point, (SIZE, SIZE))[1 if loss else 0]
    net, client, server = _start(loss, size)
    net.run(lambda: _sent(client) >= SIZE // 4 and _sent(server) >= SIZE // 4
            and len(_conn(client).streams) == 2 and len(_conn(server).streams) == 2)
    me, peer = (client, server) if role == "client" else (server, client)
    POINTS[point](net, me, peer)
    mine, theirs = _conn(me), _conn(peer)
    assert mine.loss.bytes_in_flight > 0 and theirs.loss.bytes_in_flight > 0
    assert len(mine.streams) == 2, "streams opened by both sides are open"
    new = _move(net, me, role == "client", size)
    other = peer
    net.run(lambda: new.app.done and other.app.done, max_time=120.0)
    restored = _conn(new)
    assert restored.counters.packets_received > 0
    # the copy opens the peer's packets: failures are only stragglers from before
    assert restored.counters.engine_open_failures <= 30
    assert not restored.terminated and not _conn(other).terminated
    # keys still work both ways: one more update, answered
    before = restored.key_updates_received
    restored.initiate_key_update()
    # the ping must go out in the new phase to be answered in it
    _until_started(net, restored)
    restored.send_stream_data(restored.open_stream(), b"ping", end_stream=True)
    net.run(lambda: restored.key_updates_received > before)


def test_path_under_validation_is_captured_whole() -> None:
    """A client rebinds to a new port; the server is captured while it validates the new
    path: the copy has the new path (unvalidated, its challenge and 3x counters) and the
    previous one, finishes the validation and both transfers complete."""
    net, client, server = _start(0.0)
    net.run(lambda: _sent(client) >= SIZE // 4 and len(_conn(server).streams) == 2)
    rebound = ("127.0.0.1", 6666)
    server.peer_address = rebound
    old = _conn(server)
    net.run(lambda: old.path_changes == 1)
    assert not old.address_validated and old.path_challenge
    assert old.previous_path is not None and old.previous_path.peer_address == CLIENT_ADDR
    challenge, received = old.path_challenge, old.bytes_received_unvalidated
    new = _move(net, server, is_client=False)
    new.peer_address = rebound
    conn = _conn(new)
    assert conn.peer_address == rebound and not conn.address_validated
    assert conn.path_challenge == challenge and conn.bytes_received_unvalidated >= received
    assert conn.previous_path is not None and conn.previous_path.peer_address == CLIENT_ADDR
    assert conn.previous_path.validated
    net.run(lambda: new.app.done and client.app.done, max_time=120.0)
    assert conn.address_validated and conn.previous_path is None


def test_unsent_bytes_taken_back_before_capture() -> None:
    """``take_back_unsent`` withdraws what was written but never sent: the snapshot
    shrinks, the application writes those bytes again after the restore, and the peer
    gets every byte once, in order."""
    net, client, server = _start(0.0)
    net.run(lambda: _sent(server) >= SIZE // 4 and len(_conn(server).streams) == 2)
    conn = _conn(server)
    app: TwoWayApp = server.app
    own = app.own
    assert own is not None
    stream = conn.streams[own].send
    assert stream is not None and stream.write_offset > stream.next_offset, "unsent bytes"
    full = len(snapshot_connection(conn, net.now, release=False))
    offset = conn.take_back_unsent(own)
    assert offset == stream.next_offset == stream.write_offset
    app.sent = offset  # the app goes on from there
    assert len(snapshot_connection(conn, net.now, release=False)) < full
    new = _move(net, server, is_client=False)
    net.run(lambda: new.app.done and client.app.done, max_time=120.0)


def test_restored_sealer_is_keyed_by_a_fresh_local_seal_key() -> None:
    """The offload engine keys sealers by ``Connection.seal_key`` (process-local, never
    the peer's CID, not captured): a restore installs the captured send keys under a
    fresh key, so a connection still holding the old key in the same engine keeps its
    own sealer untouched, and nothing is installed under the peer's CID."""
    net, client, server = _start(0.0)
    net.run(lambda: _sent(client) >= SIZE // 4 and _sent(server) >= SIZE // 4
            and _conn(client).handshake_confirmed)
    old = _conn(client)
    old.initiate_key_update()  # send phase 1, receive phase 0: the directions differ
    net.run_for(0.002)
    captured = (old.send_key_phase, old.recv_key_phase)
    assert captured == (1, 0)
    engine = old.engine
    old_sealer = engine.key_state(old.seal_key, opener=False)
    old_largest = old_sealer.largest_pn
    blob = snapshot_connection(old, net.now, b"", release=False)
    conn, _ = restore_connection(blob, engine=engine, now=net.now)
    assert conn.seal_key and conn.seal_key != old.seal_key
    assert engine.key_state(old.seal_key, opener=False) is old_sealer
    new_sealer = engine.key_state(conn.seal_key, opener=False)
    assert new_sealer is not old_sealer
    assert (new_sealer.key_phase, new_sealer.largest_pn) == (1, old_largest)
    assert (conn.send_key_phase, conn.recv_key_phase) == captured and conn.key_update_pending
    with pytest.raises(KeyError):
        engine.key_state(conn.peer_cid, opener=False)
    # an explicit seal_key is used as given
    blob2 = snapshot_connection(old, net.now, b"", release=False)
    conn2, _ = restore_connection(blob2, engine=type(engine)(), now=net.now,
                                  seal_key=b"\x00local\x00")
    assert conn2.engine.key_state(b"\x00local\x00", opener=False).key_phase == 1


@pytest.mark.parametrize("role", ["client", "server"])
def test_quic_v2_connection_captured_during_a_key_update(role: str) -> None:
    """A QUIC v2 connection (RFC 9369: its own HKDF labels, also for the next key
    generation) captured after its own key update started: the copy installs the keys
    with the connection's version and both transfers complete, in v2."""
    net, client, server = _start(0.0, versions=[QUIC_V2])
    net.run(lambda: _sent(client) >= SIZE // 4 and _sent(server) >= SIZE // 4
            and len(_conn(client).streams) == 2 and len(_conn(server).streams) == 2)
    assert _conn(client).version == _conn(server).version == QUIC_V2
    me, peer = (client, server) if role == "client" else (server, client)
    _ours_in_flight(net, me, peer)
    new = _move(net, me, role == "client")
    net.run(lambda: new.app.done and peer.app.done, max_time=120.0)
    restored = _conn(new)
    assert restored.version == QUIC_V2
    assert restored.key_updates_received >= 1 and restored.counters.engine_open_failures <= 30
    assert not restored.terminated and not _conn(peer).terminated
