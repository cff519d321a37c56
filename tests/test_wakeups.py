"""The lost wake-up check (tests/support/wakeups.py) over real loopback loads, and what it
catches.

A connection that owes its peer something (stream bytes, a credit update, a BLOCKED
frame, an ACK) with nothing armed to send it waits for the idle timeout; so does a peer
that waits for it. The loads here (tests/support/wakeup_load.py) make many of the
states where that can happen — small windows and stream limits (credit updates after
application reads), more requests than the peer's stream limit, loss and reordering
through the UDP relay, many connections on one socket — and the check looks at every
connection whenever the event loop is about to wait. The mutation tests show it fails:
a read that owes MAX_STREAMS without scheduling a send, a deadline the runner does not
arm, a sender that stops at the first stream blocked by the connection's window.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from typing import Any

import pytest

from quicflow.aio.connection import QuicConnection
from quicflow.aio.runner import EndpointRunner
from quicflow.transport import send as send_module
from quicflow.transport.connection import Connection
from tests.support.memory_pair import MemoryPair
from tests.support.quic_helpers import run
from tests.support.wakeup_load import Load, run_load
from tests.support.wakeups import WakeupCheck, owed

KB = 1024
#: a connection is probed when nothing wakes it within this (seconds)
QUIET = 0.02

LOADS = {
    # every read owes a credit update; more requests than the server's stream limit
    "windows": Load(connections=3, streams=16, parallel=16, size=48 * KB, upload=16 * KB),
    # unidirectional uploads: the server's reads free the stream slots
    "uni": Load(connections=2, streams=12, parallel=12, size=16 * KB, upload=24 * KB,
                uni=True),
    # streams wait for MAX_DATA while others have lost bytes to send again
    "loss": Load(connections=2, streams=8, parallel=8, size=64 * KB, upload=4 * KB, loss=0.05,
                 max_data=32 * KB, max_data_window=32 * KB, max_stream_data=1 << 20,
                 max_stream_data_window=1 << 20, max_streams=64, idle_timeout=5.0),
    # many connections on one client socket
    "shared": Load(connections=12, streams=4, parallel=4, size=32 * KB, upload=8 * KB,
                   shared_client=True),
}


async def _checked(load: Load) -> tuple[Any, WakeupCheck]:
    check = WakeupCheck(asyncio.get_running_loop(), quiet=QUIET, interval=0.0).install()
    return await run_load(load, check), check


@pytest.mark.parametrize("name", sorted(LOADS))
def test_loads_leave_no_connection_without_a_wakeup(name: str) -> None:
    for seed in (1, 2):
        out, check = run(_checked(replace(LOADS[name], seed=seed)), timeout=60)
        assert out.ok, out.error
        assert not check.violations, check.report()
        assert check.checks and len(check.connections_seen) >= 2  # it looked


# ---------------------------------------------------------------------------- mutations


async def _late_reads() -> WakeupCheck:
    """Uploads on unidirectional streams, at the server's limit of one, that the server
    reads once the connection has gone quiet (see tests/test_credit_after_read.py)."""
    import quicflow
    from tests.support import transfer as T

    check = WakeupCheck(asyncio.get_running_loop(), quiet=QUIET).install()

    async def handler(reader: Any, writer: Any) -> None:
        await asyncio.sleep(0.1)
        while await reader.read(1 << 20):
            pass

    server = await quicflow.serve(handler, "127.0.0.1", 0, configuration=T.server_configuration(
        max_streams_uni=1, max_ack_delay=0.0, pmtud=False, idle_timeout=1.0))
    cfg = T.client_configuration(max_ack_delay=0.0, pmtud=False, idle_timeout=1.0)
    try:
        async with quicflow.connect("127.0.0.1", server.address[1], configuration=cfg) as face:
            for _ in range(2):
                _, writer = await face.create_stream(bidirectional=False)
                writer.write(b"x" * 100)
                writer.write_eof()
                await writer.wait_closed()
    except quicflow.ConnectionClosedError:
        pass  # (the mutation's stall ends at the idle timeout)
    finally:
        server.close()
    return check


def test_it_catches_a_read_that_owes_max_streams_without_a_send(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    assert not run(_late_reads(), timeout=30).violations  # (as the code is)
    monkeypatch.setattr(QuicConnection, "after_read", lambda self: None)
    check = run(_late_reads(), timeout=30)
    kinds = {kind for _, kind in check.violations}
    assert "sendable-without-wakeup" in kinds, check.report()


def test_it_catches_a_deadline_not_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner that keeps a connection's armed deadline when a newer one comes earlier
    (an ACK's, a pacer's, a PTO's after the idle deadline): the connection wakes late."""
    arm = EndpointRunner._arm_timer

    def keep_first(self: EndpointRunner, conn: Connection) -> None:
        if id(conn) not in self._timers:
            arm(self, conn)

    monkeypatch.setattr(EndpointRunner, "_arm_timer", keep_first)
    load = Load(connections=1, streams=2, parallel=2, size=16 * KB, upload=0,
                idle_timeout=2.0)
    _, check = run(_checked(load), timeout=60)
    kinds = {kind for _, kind in check.violations}
    assert "deadline-not-armed" in kinds, check.report()


def test_it_sees_lost_bytes_held_behind_a_stream_waiting_for_max_data(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The stall of tests/test_retransmit_when_blocked.py, with the sender stopping at
    the first stream the connection's window blocks (as it did): ``owed`` (what the
    check holds against a turn that built nothing) names the lost bytes."""
    fill = send_module._fill_streams

    def first_blocked_stops(conn: Connection, payload: bytearray, limit: int,
                            records: list[tuple[int, ...]]) -> None:  # fmt: skip
        queue = conn.send_queue
        if conn.flow.peer_max_data - conn.flow.data_sent > 0 or not queue:
            fill(conn, payload, limit, records)
            return
        first = conn.streams[queue[0]].send
        if first is not None and not first.lost.starts and not first.fin_lost:
            return  # (the old code: it stopped at the first stream the window blocks)
        fill(conn, payload, limit, records)

    monkeypatch.setattr(send_module, "_fill_streams", first_blocked_stops)
    from tests.test_retransmit_when_blocked import _pair

    pair: MemoryPair = _pair()
    client = pair.client
    pair.run(lambda: client.handshake_confirmed and not client.spaces[2].ack_pending
             and not client.loss.bytes_in_flight)
    a, b = client.open_stream(), client.open_stream()
    client.send_stream_data(a, hashlib.sha256(b"a").digest() * 320, end_stream=True)
    client.send_stream_data(b, hashlib.sha256(b"b").digest() * 3200, end_stream=True)
    flight = pair.client_ep.datagrams_to_send(client, pair.now)
    for datagram in flight[1:]:  # the first is lost
        pair.server.receive(datagram, pair.client_addr, pair.now)
    with pytest.raises(AssertionError):
        pair.run(lambda: False, max_time=3.0)  # it stalls
    assert client.loss.bytes_in_flight == 0 and client.send_queue == [b, a]
    assert client.flow.peer_max_data == client.flow.data_sent  # no credit left
    reasons = owed(client, pair.now)
    assert any(r.startswith(f"stream {a}: lost bytes") for r in reasons), reasons
