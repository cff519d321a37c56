"""The strike register a server's worker processes share (tls/shared_strikes.py): a
ticket's 0-RTT is accepted once by the whole group of forked processes, not once per
process; it behaves like the per-process ``StrikeRegister`` otherwise."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quicflow
from quicflow.endpoint.endpoint import Endpoint
from quicflow.migration.server_keys import merge_strikes, seal_strikes
from quicflow.tls.shared_strikes import PROBES, SharedStrikeRegister, _Locked
from quicflow.tls.tickets import SessionTicketCache, StrikeRegister
from tests.support.memory_pair import MemoryPair
from tests.support.transfer import client_configuration, serve_stream, server_configuration
from tests.test_early_data_memory import configs, first_connection


def in_child(work: Callable[[], bool]) -> bool:
    """``work()`` run in a forked process; what it returned."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 2
        try:
            code = 0 if work() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), f"the child failed ({code})"
    return code == 0


@pytest.fixture
def alarm() -> Iterator[None]:
    """A test that would hang on a lock fails in 10 s instead."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError("the register's lock was never released")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_an_id_admitted_in_one_process_is_refused_in_the_others(alarm: None) -> None:
    register = SharedStrikeRegister(window=10.0)
    now = time.time()
    assert in_child(lambda: register.admit(b"ticket-one..", now))
    assert not register.admit(b"ticket-one..", now + 1)  # the parent: a replay
    assert register.refused_replay == 1
    assert register.admit(b"ticket-two..", now + 1)
    assert not in_child(lambda: register.admit(b"ticket-two..", now + 2))
    assert len(register) == 2
    register.refuse_until(now + 50)  # closed for every process
    assert not in_child(lambda: register.admit(b"ticket-three", now + 3))
    assert register.closed_until == now + 50


def test_a_process_that_dies_holding_the_lock_blocks_no_other(alarm: None) -> None:
    register = SharedStrikeRegister()

    def die_locked() -> bool:
        _Locked(register._fd).__enter__()
        os._exit(0)

    assert in_child(die_locked)
    assert register.admit(b"after a crash", time.time())


def test_ids_expire_after_twice_the_window() -> None:
    register = SharedStrikeRegister(window=10.0)
    assert register.admit(b"k" * 12, 100.0)
    assert not register.admit(b"k" * 12, 119.9)
    assert register.admit(b"k" * 12, 120.0)  # expired: admitted (and kept) again
    assert not register.admit(b"k" * 12, 121.0)


def test_a_full_table_refuses_and_counts_then_takes_expired_slots() -> None:
    register = SharedStrikeRegister(window=1.0, max_entries=8)
    assert register.slots >= max(16, PROBES)
    admitted = sum(register.admit(b"%12d" % i, 50.0) for i in range(register.slots + 40))
    assert admitted == register.slots  # every slot, and no more
    assert register.refused_full == 40
    assert register.admit(b"%12d" % 10_000, 52.5)  # the others have expired


def test_long_ids_are_kept_as_a_digest() -> None:
    register = SharedStrikeRegister()
    now = time.time()
    a, b = b"x" * 40, b"x" * 39 + b"y"
    assert register.admit(a, now) and register.admit(b, now)
    assert not register.admit(a, now) and not register.admit(b, now)
    # exported as its digest, a long id merged into a successor's register is still
    # refused there
    successor = SharedStrikeRegister()
    assert successor.merge(register.export(), now) == 2
    assert not successor.admit(a, now + 1) and not successor.admit(b, now + 1)


def test_export_and_merge_with_a_per_process_register() -> None:
    now = time.time()
    shared = SharedStrikeRegister(window=10.0)
    for key in (b"one.........", b"two.........", b"short"):
        assert shared.admit(key, now)
    plain = StrikeRegister(window=10.0)
    assert plain.merge(shared.export(), now) == 3
    assert not plain.admit(b"short", now + 1)
    plain.admit(b"four........", now + 2)
    other = SharedStrikeRegister(window=10.0)
    assert other.merge(plain.export(), now + 3) == 4
    assert other.merge(plain.export(), now + 3) == 0  # already there
    assert not other.admit(b"four........", now + 4) and not other.admit(b"one.........", now)
    assert sorted(k for k, _ in other.export()) == sorted(k for k, _ in plain.export())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.floats(0, 12, allow_nan=False)),
                max_size=60))
def test_it_decides_like_the_per_process_register(ops: list[tuple[int, float]]) -> None:
    """Times that never go back, ids from a small set, a table that is never full: every
    answer is the one ``StrikeRegister`` gives."""
    shared = SharedStrikeRegister(window=5.0, max_entries=64)
    plain = StrikeRegister(window=5.0)
    now = 1_000.0
    for key, step in ops:
        now += step
        ticket = b"ticket %5d" % key
        assert shared.admit(ticket, now) == plain.admit(ticket, now)
    assert shared.refused_replay == plain.refused_replay


@pytest.mark.parametrize("kind", ["shared", "per-process"])
def test_a_first_flight_replayed_to_another_worker(kind: str) -> None:
    """A recorded 0-RTT first flight goes to another process of the server first (what a
    worker group is: the same keys, another endpoint, forked before either admitted
    anything) and then to this one: refused 0-RTT here with the shared register,
    accepted a second time with a register of each process's own."""
    register = SharedStrikeRegister(window=10.0)
    client_cfg, server_cfg = configs(strike_register=register)
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    assert pair.server.configuration.strike_register is register  # (kept while empty)
    first_connection(pair)
    client = pair.add_client()
    sid = client.open_stream()
    client.send_stream_data(sid, b"a request in 0-RTT", end_stream=True)
    first = pair.client_ep.datagrams_to_send(client, pair.now)
    config = pair.server.configuration
    if kind == "per-process":
        config = dataclasses.replace(config, strike_register=StrikeRegister(window=10.0))

    def accepted(endpoint: Endpoint) -> bool:
        old = set(endpoint.all_connections)
        for d in first:
            endpoint.receive(d, pair.client_addr, pair.now)
        [conn] = [c for c in endpoint.all_connections if c not in old]
        assert conn.session_resumed and conn.early_data_attempted
        return conn.early_data_accepted

    assert in_child(lambda: accepted(
        Endpoint(config, is_server=True, wall_offset=pair.server.wall_offset)))
    assert accepted(pair.server) == (kind == "per-process")


def test_a_worker_group_shares_one_register() -> None:
    """``serve(..., workers=2)`` gives its workers (forked from the supervisor) one shared
    register; a configuration's own register is left as it is."""
    async def group(config: quicflow.Configuration) -> object:
        server = await quicflow.serve(serve_stream, "127.0.0.1", 0, configuration=config,
                                      workers=2)
        try:
            spec = server.spec  # type: ignore[attr-defined]
            return spec.configuration.strike_register
        finally:
            server.close()
            await server.wait_closed()

    assert isinstance(asyncio.run(group(server_configuration())), SharedStrikeRegister)
    own = StrikeRegister()
    assert asyncio.run(group(server_configuration(strike_register=own))) is own
    assert asyncio.run(group(server_configuration(early_data=False))) is None


REQUEST = b"a request sent in 0-RTT"


async def _replayed_to_both_workers(log: Path, config: quicflow.Configuration) -> int:
    """A worker group with steering off (the kernel spreads clients over the workers by
    their 4-tuple); a client's recorded 0-RTT first flight is sent from new source ports
    until both workers have seen it. Returns how many times the request in it reached
    the application (each line of ``log`` is one, written by the worker that got it)."""

    async def handler(reader: quicflow.QuicStreamReader,
                      writer: quicflow.QuicStreamWriter) -> None:
        data = await reader.read()
        if data == REQUEST:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        writer.write(b"ok")
        writer.write_eof()

    server = await quicflow.serve(handler, "127.0.0.1", 0, configuration=config,
                                  workers=2, steering=False)
    socks: list[socket.socket] = []
    try:
        port = server.address[1]
        cache = SessionTicketCache()
        client_cfg = client_configuration(session_ticket_cache=cache)
        async with quicflow.connect("127.0.0.1", port, configuration=client_cfg) as face:
            reader, writer = await face.create_stream()
            writer.write(b"get a ticket")
            writer.write_eof()
            assert await reader.read() == b"ok"
            for _ in range(100):
                if len(cache):
                    break
                await asyncio.sleep(0.01)
        assert len(cache) == 1
        now = time.monotonic()
        client = Endpoint(client_cfg, is_server=False, wall_offset=time.time() - now)
        conn = client.connect(("127.0.0.1", port), now)
        sid = conn.open_stream()
        conn.send_stream_data(sid, REQUEST, end_stream=True)
        first = client.datagrams_to_send(conn, now)
        assert conn.early_data_attempted

        def received() -> list[int]:
            return [row.get("datagrams_received", 0) for row in server.stats()["workers"]]

        await asyncio.sleep(0.6)  # the ticket's connection counted in its worker's report
        before = received()
        for _ in range(40):  # each from a port of its own: a worker by the 4-tuple hash
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            for d in first:
                sock.sendto(d, ("127.0.0.1", port))
            await asyncio.sleep(0.3)  # (the workers report every 0.25 s)
            if all(a > b for a, b in zip(received(), before, strict=True)):
                break
        assert all(a > b for a, b in zip(received(), before, strict=True)), "one worker only"
        await asyncio.sleep(0.5)
    finally:
        for sock in socks:
            sock.close()
        server.close()
        await server.wait_closed()
    return len(log.read_text().split()) if log.exists() else 0


@pytest.mark.parametrize("kind", ["shared", "per-worker"])
def test_a_worker_group_accepts_a_replayed_first_flight_once(tmp_path: Path,
                                                            kind: str) -> None:
    """End to end: the group's shared register lets the request of a recorded 0-RTT first
    flight reach the application once, whichever worker each copy lands on; with a
    register of each worker's own (the configuration's, copied into each by the fork)
    the other worker accepts it again."""
    config = server_configuration()
    if kind == "per-worker":
        config = dataclasses.replace(config, strike_register=StrikeRegister())
    accepted = asyncio.run(_replayed_to_both_workers(tmp_path / "requests", config))
    assert accepted == (1 if kind == "shared" else 2)


def test_a_takeover_record_carries_the_shared_register() -> None:
    """``seal_strikes`` of a worker whose register is the group's, and ``merge_strikes``
    into a successor's: the ids admitted (by any worker) are refused by the successor."""
    now = time.time()
    shared = SharedStrikeRegister()
    old = Endpoint(server_configuration(strike_register=shared), is_server=True)
    assert in_child(lambda: shared.admit(b"by worker 1.", now))  # another worker's
    assert shared.admit(b"by worker 0.", now)
    key = bytes(range(32))
    record = seal_strikes(old, key)
    assert record is not None
    for register in (StrikeRegister(), SharedStrikeRegister()):
        new = Endpoint(server_configuration(strike_register=register), is_server=True)
        assert merge_strikes(new, record, key, now + 1) == 2
        assert not register.admit(b"by worker 1.", now + 2)
        assert not register.admit(b"by worker 0.", now + 2)
        assert register.admit(b"a fresh one.", now + 2)
