"""Worker processes behind one port, steered by connection ID (issue 6, item 4).

Each test runs the server as a group of forked workers (``serve(..., workers=2)``) and
its clients on this process's event loop. A client tells which worker serves it from the
worker byte of the server's CIDs (QUIC-LB plaintext: first octet, host byte, worker
byte), and the supervisor's per-worker counters must agree.
"""

from __future__ import annotations

import asyncio
import signal
import struct
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import pytest

import quicflow
from quicflow.datapath.connected import SocketPolicy
from tests.support.transfer import (
    client_configuration,
    digest,
    download,
    payload,
    serve_stream,
    server_configuration,
)

WORKER_BYTE = 2  # CID offset of the worker byte with the default plan (1 host byte)
pytestmark = pytest.mark.timeout(120)


def worker_of(conn: quicflow.QuicConnection) -> int:
    return conn.conn.peer_cid[WORKER_BYTE]


async def fetch(port: int, size: int, seed: int, *, host: str = "127.0.0.1",
                **cfg: Any) -> tuple[int, bool]:
    """Connect, download ``size`` bytes, return (worker, intact)."""
    async with quicflow.connect(
        host, port, configuration=client_configuration(**cfg)
    ) as conn:
        result = await download(conn, size, seed=seed)
        return worker_of(conn), result.ok


def check_worker_keys(stats: dict[str, Any], workers: int) -> list[dict[str, Any]]:
    rows = stats["workers"]
    assert len(rows) == workers
    for row in rows:
        for key in ("pid", "connections", "datagrams_received", "misrouted_datagrams",
                    "connected_sockets"):
            assert isinstance(row[key], int), key
        assert row["pid"] > 0
    return rows


async def _sixty_four(steering: bool, **serve_options: Any) -> list[dict[str, Any]]:
    server = await quicflow.serve(
        serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
        workers=2, steering=steering, **serve_options,
    )
    try:
        port = server.address[1]
        outcomes = await asyncio.gather(
            *(fetch(port, 64 * 1024, seed=i) for i in range(64))
        )
    finally:
        await server.wait_closed()
    assert all(ok for _, ok in outcomes), "a download was not intact"
    per_worker = Counter(w for w, _ in outcomes)
    assert set(per_worker) == {0, 1}, per_worker  # both workers carry connections
    rows = check_worker_keys(server.stats(), 2)
    for i, row in enumerate(rows):
        assert row["connections"] == per_worker[i]
        assert row["datagrams_received"] > 0
    return rows


def test_two_workers_serve_64_connections_steered():
    rows = asyncio.run(_sixty_four(steering=True))
    assert [row["misrouted_datagrams"] for row in rows] == [0, 0]


def test_two_workers_with_connection_sockets_serve_64_connections_steered():
    # Every connection gets a socket of its own (policy: at once): they join the port's
    # reuseport group behind the 2 listeners, and the steering program must still reach
    # slots 0 and 1 only (a connected socket in a listener's slot would take that
    # worker's datagrams, or the other's: misrouted, or lost with the socket).
    rows = asyncio.run(_sixty_four(
        steering=True, connection_sockets=64,
        socket_policy=SocketPolicy(min_bytes=0, min_age=0),
    ))  # fmt: skip
    for row in rows:
        assert 0 < row["connected_sockets"] <= row["connections"], row
    # The steering program never picks a wrong listener, and a datagram the kernel hashes
    # instead (a client's first Initials, whose DCID it chose) names no worker. Another
    # worker's datagram came from a per-connection socket between its bind and its
    # connect: bound after a connected socket that still had SO_REUSEPORT, it took every
    # datagram on the port (tests/test_connection_socket_strays.py; 3 strays in 56 traced
    # runs before the fix, 1 of them another worker's). Connected sockets now turn
    # SO_REUSEPORT off: 0 strays in 40 traced runs. A window of about a microsecond is
    # left (a socket bound in one worker while another worker's socket is between its
    # connect and that setsockopt; not observed): its strays would be handed over, never
    # lost, so a couple are tolerated. A connected socket in a listener's slot would
    # misroute about half of all datagrams.
    misrouted = sum(row["misrouted_datagrams"] for row in rows)
    assert misrouted <= 2, rows
    assert sum(row["handed_over_datagrams"] for row in rows) == misrouted


async def _behind_rebinding_nat(steering: bool) -> tuple[list[tuple[int, bool]], int, dict]:
    from tests.support.nat import RebindingNat

    server = await quicflow.serve(
        serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
        workers=2, steering=steering,
    )
    nat = RebindingNat(("127.0.0.1", server.address[1]), every=8)
    try:
        port = nat.address[1]
        outcomes = await asyncio.gather(
            *(fetch(port, 512 * 1024, seed=i, idle_timeout=10) for i in range(12))
        )
    finally:
        nat.close()
        await server.wait_closed()
    return outcomes, nat.rebinds, server.stats()


def test_steering_off_misrouted_datagrams_are_counted_and_handed_over():
    """The clients' NAT rebinds every 8 datagrams: without the program the kernel hashes
    each new 4-tuple to any worker; what lands on the wrong one is handed over."""
    outcomes, rebinds, stats = asyncio.run(_behind_rebinding_nat(steering=False))
    assert all(ok for _, ok in outcomes)
    assert rebinds >= 12
    rows = check_worker_keys(stats, 2)
    misrouted = sum(row["misrouted_datagrams"] for row in rows)
    assert misrouted > 20  # far above what the steered run below tolerates
    assert sum(row["handed_over_datagrams"] for row in rows) == misrouted


def test_steering_on_rebound_clients_still_reach_their_worker():
    """The same rebinding clients with the program: short headers follow the CID."""
    outcomes, rebinds, stats = asyncio.run(_behind_rebinding_nat(steering=True))
    assert all(ok for _, ok in outcomes)
    assert rebinds >= 12
    rows = check_worker_keys(stats, 2)
    # Without the program 30-45 % of the datagrams land on the wrong worker (the test
    # above: 235-353 of ~790 in 6 runs on 2026-11-30); with it, short and long headers
    # follow the CID. The rebound clients get new per-connection sockets all the time
    # (the default policy gives one to these 512 KiB downloads, and every rebinding moves
    # it): before per-connection sockets turned SO_REUSEPORT off once connected, one
    # bound after a connected one took every datagram on the port until its own connect
    # (0-2 strays in most runs, 12 in one of about 130). Now 0 in 8 traced runs; the
    # race left (see the test above) would hand a stray over, never lose it.
    misrouted = [row["misrouted_datagrams"] for row in rows]
    assert sum(misrouted) <= 2, misrouted
    assert sum(row["handed_over_datagrams"] for row in rows) == sum(misrouted)


_REQUEST = struct.Struct("!QQ")
HELD_SIZE = 4 << 20  # far more than the client's initial stream window


async def _start_held_download(
    port: int, seed: int, stack: Any, resume: asyncio.Event
) -> tuple[quicflow.QuicConnection, asyncio.Task[bool]]:
    """A connection whose download stops after 64 KiB (the client does not read, so
    flow control holds the server) until ``resume`` is set."""
    conn = await stack.enter_async_context(
        quicflow.connect("127.0.0.1", port, configuration=client_configuration(idle_timeout=3))
    )
    reader, writer = await conn.create_stream()
    writer.write(_REQUEST.pack(HELD_SIZE, seed))
    writer.write_eof()
    await reader.readexactly(32)
    head = await reader.readexactly(64 * 1024)

    async def rest() -> bool:
        await resume.wait()
        body = head + await reader.readexactly(HELD_SIZE - len(head))
        return digest(body) == digest(payload(seed, HELD_SIZE))

    return conn, asyncio.get_running_loop().create_task(rest())


async def _kill_one_worker() -> None:
    server = await quicflow.serve(
        serve_stream, "127.0.0.1", 0, configuration=server_configuration(idle_timeout=3),
        workers=2,
    )
    port = server.address[1]
    resume = asyncio.Event()
    try:
        async with AsyncExitStack() as stack:
            held = await asyncio.gather(
                *(_start_held_download(port, i, stack, resume) for i in range(16))
            )
            owners = [worker_of(conn) for conn, _ in held]
            assert set(owners) == {0, 1}, owners
            old_pid = server.pids[1]
            server.kill_worker(1, signal.SIGKILL)
            await server.supervisor.wait_for(
                lambda: server.supervisor.slots[1].restarts == 1, timeout=10
            )
            await server.wait_ready()
            assert server.pids[1] not in (0, old_pid)
            resume.set()
            results = await asyncio.gather(*(t for _, t in held), return_exceptions=True)
            for owner, result in zip(owners, results, strict=True):
                if owner == 0:
                    assert result is True  # the other worker's downloads complete intact
                else:
                    assert isinstance(result, quicflow.ConnectionClosedError), result
        # New connections reach the restarted worker (their Initials' DCIDs name both).
        fresh = await asyncio.gather(*(fetch(port, 32 * 1024, seed=100 + i) for i in range(16)))
        assert all(ok for _, ok in fresh)
        assert {w for w, _ in fresh} == {0, 1}
    finally:
        await server.wait_closed()
    rows = check_worker_keys(server.stats(), 2)
    assert rows[1]["restarts"] == 1 and rows[1]["exit_codes"][0] == -signal.SIGKILL
    assert rows[0]["restarts"] == 0
    # The restarted worker sits in the same group slot. Until it is back, its slot is
    # empty and the kernel hashes what names it (its clients' ACKs and probes, sent
    # later now that ACKs may wait for the ACK Frequency extension's delay) over the
    # sockets left: those few land on worker 0 and are counted as misrouted (1 datagram
    # in 1 of ~20 whole-suite runs on 2026-11-30); handed to a worker that is not back
    # yet, they may die with its inbox (QUIC resends). A restarted worker in another
    # slot would take about half of all datagrams: the bound is 5 %.
    misrouted = sum(row["misrouted_datagrams"] for row in rows)
    assert misrouted * 20 <= sum(row["datagrams_received"] for row in rows), rows
    assert sum(row["handed_over_datagrams"] for row in rows) <= misrouted
    assert rows[1]["connections"] == owners.count(1) + sum(1 for w, _ in fresh if w == 1)


def test_killing_a_worker_ends_only_its_connections_and_it_is_restarted():
    asyncio.run(_kill_one_worker())


async def _host_and_worker_ids() -> None:
    from quicflow.endpoint.quiclb import QuicLbConfig

    plan = quicflow.CidPlan(QuicLbConfig(config_id=1, server_id_len=3, nonce_len=6), 0x0102)
    server = await quicflow.serve(
        serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
        workers=2, cid_plan=plan,
    )
    try:
        conns = []
        async with AsyncExitStack() as stack:
            for _ in range(8):
                conn = await stack.enter_async_context(quicflow.connect(
                    "127.0.0.1", server.address[1], configuration=client_configuration()
                ))
                assert (await download(conn, 16 * 1024)).ok
                conns.append(conn)
            await asyncio.sleep(0.1)  # NEW_CONNECTION_ID frames
            for conn in conns:
                cids = [p.cid for p in conn.conn.peer_cids] + [conn.conn.peer_cid]
                assert len(cids) >= 2
                worker = conn.conn.peer_cid[3]
                for cid in cids:  # every CID the worker issued: its host and worker ID
                    assert len(cid) == 10 and cid[0] >> 5 == 1
                    assert cid[1:3] == b"\x01\x02" and cid[3] == worker
    finally:
        await server.wait_closed()
    rows = check_worker_keys(server.stats(), 2)
    assert [r["misrouted_datagrams"] for r in rows] == [0, 0]
    assert sum(r["connections"] for r in rows) == 8


def test_every_cid_carries_the_host_id_and_the_worker_id():
    asyncio.run(_host_and_worker_ids())


async def _single_process_host_id() -> None:
    server = await quicflow.serve(
        serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
        cid_plan=quicflow.CidPlan(host_id=7),
    )
    try:
        async with quicflow.connect(
            "127.0.0.1", server.address[1], configuration=client_configuration()
        ) as conn:
            assert (await download(conn, 1024)).ok
            assert conn.conn.peer_cid[1:3] == b"\x07\x00"
    finally:
        server.close()


def test_single_process_server_takes_a_host_id():
    asyncio.run(_single_process_host_id())


async def _dual_stack() -> None:
    server = await quicflow.serve(
        serve_stream, "::", 0, configuration=server_configuration(), workers=2
    )
    try:
        port = server.address[1]
        hosts = ("127.0.0.1", "::1")
        outcomes = await asyncio.gather(
            *(fetch(port, 32 * 1024, seed=i, host=h) for i in range(4) for h in hosts)
        )
    finally:
        await server.wait_closed()
    assert all(ok for _, ok in outcomes)
    rows = check_worker_keys(server.stats(), 2)
    assert sum(r["connections"] for r in rows) == 8
    assert [r["misrouted_datagrams"] for r in rows] == [0, 0]


def test_a_dual_stack_group_serves_ipv4_and_ipv6_clients():
    asyncio.run(_dual_stack())
