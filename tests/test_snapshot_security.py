"""Sealed snapshots are single use (issue 7, item 5).

Tampered, truncated, wrong-key, too old and replayed snapshots are refused with a clear
error before anything of them is used. Replay is not a formality: restoring an older
capture of a connection that moved on makes the copy seal packets with packet numbers
the connection already used under the same key (AES-GCM nonce reuse) — shown below.
"""

from __future__ import annotations

import pytest

from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.snapshot import (
    SnapshotError,
    SnapshotGuard,
    capture_sealed,
    new_snapshot_key,
    open_snapshot,
    restore_connection,
    restore_sealed,
    seal_snapshot,
    snapshot_connection,
)
from tests.support.snapshot_peer import CLIENT_ADDR, LocalSide, ServerApp, adopt
from tests.test_snapshot import Net, _received, _server_endpoint, _start

WALL = 1_700_000_000.0
KEY = new_snapshot_key()


def _server_capture(guard: SnapshotGuard) -> tuple[Net, LocalSide, LocalSide, bytes]:
    net, client, server = _start(size=2_000_000)
    net.run(lambda: _received(client) >= 300_000)
    conn = server.conn
    assert conn is not None
    sealed = capture_sealed(conn, net.now, KEY, server.app.state(), guard=guard,
                            wall_time=WALL)
    return net, client, server, sealed


def _restore(net: Net, sealed: bytes, guard: SnapshotGuard, wall: float = WALL + 1
             ) -> tuple[Endpoint, LocalSide]:
    ep = _server_endpoint()
    conn, state = restore_sealed(sealed, KEY, guard=guard, wall_time=wall, engine=ep.engine,
                                 now=net.now, configuration=ep.configuration)
    adopt(ep, conn)
    return ep, LocalSide(ep, ServerApp(state), CLIENT_ADDR, conn)


def _refused(sealed: bytes, guard: SnapshotGuard, match: str, key: bytes = KEY,
             wall: float = WALL + 1) -> None:
    ep = _server_endpoint()
    before = dict(guard.latest)
    with pytest.raises(SnapshotError, match=match):
        restore_sealed(sealed, key, guard=guard, wall_time=wall, engine=ep.engine, now=5.0,
                       configuration=ep.configuration)
    # nothing of it was used: no keys programmed, no connection, the record unchanged
    assert len(ep.engine._openers) == 0 and len(ep.engine._sealers) == 0  # type: ignore[attr-defined]
    assert not ep.all_connections
    assert guard.latest == before


def test_tampered_truncated_and_wrong_key_are_refused() -> None:
    source_guard = SnapshotGuard()
    net, _, _, sealed = _server_capture(source_guard)
    guard = SnapshotGuard()
    for pos in (0, 5, 12, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[pos] ^= 0x01
        _refused(bytes(tampered), guard, "authentication")
    _refused(sealed[:-1], guard, "authentication")
    _refused(sealed[: len(sealed) // 2], guard, "authentication")
    _refused(sealed[:20], guard, "too short")
    _refused(sealed, guard, "authentication", key=new_snapshot_key())
    _refused(sealed, guard, "too old", wall=WALL + guard.max_age + 1)
    _refused(sealed, guard, "future", wall=WALL - 60)
    _restore(net, sealed, guard)  # the intact one is fine


def test_replayed_snapshot_is_refused() -> None:
    net, client, _, sealed = _server_capture(SnapshotGuard())
    guard = SnapshotGuard()
    _, side = _restore(net, sealed, guard)
    _refused(sealed, guard, "replayed")
    net.server = side
    net.run(lambda: client.app.done)
    assert client.app.done


def test_older_capture_is_refused_after_the_connection_moved_on() -> None:
    """Capture 1 is restored in X, which runs on and is captured again (2) and moved to
    Y with the record handed along: capture 1 is refused there, and would have reused
    nonces. Capture 2 restores once."""
    net, client, _, first = _server_capture(SnapshotGuard())
    guard_x = SnapshotGuard()
    _, x = _restore(net, first, guard_x)
    net.server = x
    target = _received(client) + 400_000
    net.run(lambda: _received(client) >= target)
    conn_x = x.conn
    assert conn_x is not None
    used_pn = conn_x.spaces[2].next_pn - 1
    second = capture_sealed(conn_x, net.now, KEY, x.app.state(), guard=guard_x,
                            wall_time=WALL + 2)
    # without the guard the old capture restores and would seal pn <= ones used since,
    # under the same key: AES-GCM nonce reuse
    ep = _server_endpoint()
    stale, _ = restore_connection(open_snapshot(first, KEY), engine=ep.engine, now=net.now)
    assert stale.spaces[2].next_pn <= used_pn
    assert stale.one_rtt_send_secret == conn_x.one_rtt_send_secret
    # the record goes with the connections to the next process
    guard_y = SnapshotGuard()
    guard_y.merge(guard_x.export())
    _refused(first, guard_y, "replayed")
    _refused(first, guard_x, "replayed")
    _, y = _restore(net, second, guard_y, wall=WALL + 3)
    _refused(second, guard_y, "replayed", wall=WALL + 3)
    net.server = y
    net.run(lambda: client.app.done)
    assert client.app.done and len(client.app.received) == 2_000_000


def test_released_source_cannot_be_captured_twice() -> None:
    net, _, server, _ = _server_capture(SnapshotGuard())
    assert server.conn is not None and server.conn.released
    with pytest.raises(SnapshotError, match="handed off"):
        snapshot_connection(server.conn, net.now)
    assert server.endpoint.datagrams_to_send(server.conn, net.now) == []


def test_snapshot_without_serial_or_time_is_refused() -> None:
    net, _, server = _start(size=200_000)[0:3]
    net.run(lambda: server.conn is not None and server.conn.handshake_confirmed)
    assert server.conn is not None
    server.app.process(server.conn)
    blob = snapshot_connection(server.conn, net.now)  # no wall time
    _refused(seal_snapshot(blob, KEY), SnapshotGuard(), "capture time")


def test_full_record_refuses_rather_than_forgets() -> None:
    net, _, _, sealed = _server_capture(SnapshotGuard())
    net2, _, _, other = _server_capture(SnapshotGuard())
    guard = SnapshotGuard(max_entries=1)
    _restore(net, sealed, guard)
    _refused(other, guard, "full")
    # entries past max_age go and make room (a snapshot they refused is too old by then)
    guard.prune(WALL + 1 + guard.max_age + guard.max_skew + 1)
    assert not guard.latest
    _restore(net2, other, guard)
