"""The lost wake-up check (tests/support/wakeups.py) where a moved connection lives: the
runner that adopts it, the moment right after its restore, and worker processes.

A connection restored in another process or on another server must come back with its
deadlines (the ACK it owes, the PTO of what it has in flight, its idle timeout) and be
flushed at once (what was in flight at the capture is declared lost and sent again):
otherwise it waits, and its peer with it, until a PTO or the idle timeout. The load here
(tests/support/move_load.py) moves two connections between two servers four times each
while data flows both ways through lossy relays, and the check looks at every
connection at every loop turn and right after every restore. The mutation tests show
it fails: a restore that is not flushed, a restore that drops the ACK deadline, a
forked worker whose runner arms no deadline (reported through the spool).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.aio.runner import EndpointRunner
from quicflow.transport import snapshot
from quicflow.transport.connection import Connection
from tests.support.move_load import MB, MoveLoad, run_moves
from tests.support.quic_helpers import run
from tests.support.wakeups import WakeupCheck, invariants, read_spool, watch_runners

QUIET = 0.02
LOAD = MoveLoad(connections=2, streams=4, download=MB, upload=MB // 2, moves=4, loss=0.03)


async def _checked(load: MoveLoad, directory: Path) -> tuple[Any, WakeupCheck]:
    check = WakeupCheck(asyncio.get_running_loop(), quiet=QUIET, interval=0.0).install()
    return await run_moves(load, directory), check


def test_moves_mid_transfer_leave_no_connection_without_a_wakeup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    watch_runners(monkeypatch)  # (for the restores: the loop's check is installed here)
    out, check = run(_checked(LOAD, tmp_path), timeout=60)
    assert out.ok, out.error
    assert out.moves == LOAD.moves and out.moved == LOAD.moves * LOAD.connections
    assert not check.violations, check.report()
    # it looked: at every restore, and at the restored connections on their new runner
    assert check.restores == out.moved
    assert len(check.connections_seen) >= 2 + out.moved
    assert out.at_capture["in_flight"] > 0  # captured with packets in flight


def test_it_catches_a_restore_that_is_not_flushed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``start_restored`` that runs the application's hook but does not flush: what was
    in flight at the capture (declared lost) waits, with no deadline armed."""

    def start_unflushed(runner: EndpointRunner, restored: list[Any], restore: Any) -> None:
        for face, state, streams in restored:
            if restore is not None:
                result = restore(face, state, streams)
                if asyncio.iscoroutine(result):
                    face.track_task(runner.loop.create_task(result))

    monkeypatch.setattr("quicflow.aio.moving.start_restored", start_unflushed)
    load = MoveLoad(connections=1, streams=2, download=MB // 2, upload=MB // 4, moves=2,
                    loss=0.03)
    _, check = run(_checked(load, tmp_path), timeout=60)
    kinds = {kind for _, kind in check.violations}
    assert kinds & {"deadline-not-armed", "sendable-without-wakeup"}, check.report()


def _restore(blob: bytes, now: float) -> Connection:
    from quicflow.endpoint.endpoint import Endpoint
    from quicflow.transport.config import Configuration

    ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False), is_server=False)
    conn, _ = snapshot.restore_connection(blob, engine=ep.engine, now=now)
    return conn


def test_it_catches_a_restore_that_drops_the_ack_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A client captured mid-download owing an ACK (within its max ack delay): restored,
    it owes it with its deadline moved by the pause; a restore that drops the deadline
    leaves the ACK to whatever is sent next (the peer's PTO, at best)."""
    from tests.test_snapshot import _received, _start

    net, client, _ = _start()

    def owes_an_ack() -> bool:
        conn = client.conn
        if conn is None or _received(client) < 256 * 1024:
            return False
        app = conn.spaces[2]
        return bool(app.ack_eliciting_pending) and app.ack_deadline is not None and (
            not app.ack_immediately)

    net.run(owes_an_ack)
    assert client.conn is not None
    blob = snapshot.snapshot_connection(client.conn, net.now)
    later = net.now + 0.5
    restored = _restore(blob, later)
    assert not invariants(restored)  # as the code is
    assert restored.spaces[2].ack_deadline == pytest.approx(
        client.conn.spaces[2].ack_deadline + 0.5)

    rebuild = snapshot._rebuild

    def dropping(conn: Connection, *args: Any, **kw: Any) -> Any:
        out = rebuild(conn, *args, **kw)
        out[0].spaces[2].ack_deadline = None
        return out

    monkeypatch.setattr(snapshot, "_rebuild", dropping)
    found = invariants(_restore(blob, later))
    assert any("no ACK deadline" in f for f in found), found


@pytest.mark.skipif(os.environ.get("QUICFLOW_WAKEUP_CHECK") == "1",
                    reason="its mutation would fail the check conftest.py installs first")
def test_forked_workers_report_through_the_spool(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A worker forked with the check (``watch_runners``) writes what it finds to the
    spool: a runner that keeps a connection's first deadline (an earlier one comes
    later: the ACK's, the PTO's) is caught in the worker, as in this process."""
    from tests.support.transfer import (
        client_configuration,
        download,
        serve_stream,
        server_configuration,
    )

    spool = str(tmp_path)
    arm = EndpointRunner._arm_timer

    def keep_first(self: EndpointRunner, conn: Connection) -> None:
        if id(conn) not in self._timers:
            arm(self, conn)

    monkeypatch.setattr(EndpointRunner, "_arm_timer", keep_first)
    watch_runners(monkeypatch, spool)

    async def go() -> bool:
        server = await quicflow.serve(serve_stream, "127.0.0.1", 0, workers=1,
                                      configuration=server_configuration(idle_timeout=2.0))
        try:
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=client_configuration()) as face:
                return (await download(face, 256 * 1024, seed=1)).ok
        finally:
            server.close()
            await server.wait_closed()

    assert run(go(), timeout=60)
    lines = [line for line in read_spool(spool) if line["pid"] != os.getpid()]
    kinds = {line["kind"] for line in lines}
    assert {"installed", "seen", "violation"} <= kinds, lines
    assert any("deadline-not-armed" in line["text"] for line in lines), lines
