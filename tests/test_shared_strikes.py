"""The strike register a server's worker processes share (tls/shared_strikes.py): a
ticket's 0-RTT is accepted once by the whole group of forked processes, not once per
process; it behaves like the per-process ``StrikeRegister`` otherwise."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quicflow
from quicflow.endpoint.endpoint import Endpoint
from quicflow.tls.shared_strikes import PROBES, SharedStrikeRegister, _Locked
from quicflow.tls.tickets import StrikeRegister
from tests.support.memory_pair import MemoryPair
from tests.support.transfer import serve_stream, server_configuration
from tests.test_early_data_memory import configs, first_connection, resumed_with_data


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
    """A recorded 0-RTT first flight sent again to another process of the server (what
    a worker group is: the same keys, another endpoint): refused 0-RTT there with the
    shared register, accepted once more with a register of the process's own."""
    register = SharedStrikeRegister(window=10.0)
    client_cfg, server_cfg = configs(strike_register=register)
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    _, server, first = resumed_with_data(pair)
    assert server.early_data_accepted
    config = pair.server.configuration
    if kind == "per-process":
        config = dataclasses.replace(config, strike_register=StrikeRegister(window=10.0))

    def other_worker() -> bool:
        endpoint = Endpoint(config, is_server=True, wall_offset=pair.server.wall_offset)
        for d in first:
            endpoint.receive(d, pair.client_addr, pair.now)
        [conn] = endpoint.accepted
        assert conn.session_resumed and conn.early_data_attempted
        return conn.early_data_accepted

    assert in_child(other_worker) == (kind == "per-process")


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
