"""The loop's read budget per turn (aio/readturns.py): once a turn has read its budget,
the sockets found ready wait, off the selector, and later turns serve them least bytes
read first, none passed over and none lost; the budget renews every turn.

The first tests drive ``ReadTurns`` with real loopback sockets and a minimal runner (what
the budget uses of an ``EndpointRunner``); the last ones run real transfers: downloads
with a runner and socket per client connection (``quicflow.connect``), uploads to a
server that reads a socket per connection, with a budget small enough that almost every
read waits for a turn."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import quicflow
from quicflow.aio import readturns
from quicflow.aio.readturns import ReadTurns
from quicflow.datapath.socket import UdpTransport
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config


class Runner:
    """What ReadTurns uses of an EndpointRunner, reading its sockets as ``_read`` does:
    park while the budget is spent or others wait, else read and charge."""

    def __init__(self, loop: asyncio.AbstractEventLoop, turns: ReadTurns) -> None:
        self.loop = loop
        self.turns = turns
        self.closed = False
        self.registrations: dict[int, Any] = {}
        self.names: dict[int, str] = {}
        self.served: list[str] = []  # reads, in order
        self.reports = 0  # times the selector reported a socket readable

    def watch(self, transport: UdpTransport, name: str) -> None:
        self.names[id(transport)] = name
        self.loop.add_reader(transport.fileno(), self.on_readable, transport)
        self.registrations[id(transport)] = (transport, self.on_readable, (transport,))

    def unwatch(self, transport: UdpTransport) -> None:
        self.registrations.pop(id(transport), None)
        self.turns.forget(transport)
        self.loop.remove_reader(transport.fileno())

    def registration(self, transport: UdpTransport) -> Any:
        found = self.registrations.get(id(transport))
        return found if found is not None and found[0] is transport else None

    def on_readable(self, transport: UdpTransport) -> None:
        self.reports += 1
        if self.turns.parked or self.turns.spent():
            self.turns.park(self, transport, None)  # type: ignore[arg-type]
            return
        self.read_turn(transport, None)

    def read_turn(self, transport: UdpTransport, peer: Any) -> bool:
        """One datagram per read; returns whether more may wait (not known empty)."""
        batch = transport.recv_batch(1)
        if not batch:
            return False
        self.served.append(self.names[id(transport)])
        self.turns.charge(transport, len(batch[0][0]))
        return True


@contextlib.contextmanager
def _sockets(count: int) -> Iterator[tuple[list[UdpTransport], socket.socket]]:
    """``count`` loopback sockets to read and one to send to them, closed after."""
    transports = [UdpTransport.open("127.0.0.1", 0) for _ in range(count)]
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        yield transports, sender
    finally:
        sender.close()
        for t in transports:
            t.close()


def _delivered() -> None:
    """Let the datagrams just sent reach their sockets before the loop runs again (a
    blocking pause: loopback delivery may wait for the kernel's softirq on a loaded
    machine, and the order these tests check starts from full sockets)."""
    time.sleep(0.05)


async def _until(done: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_sockets_ready_after_the_budget_wait_off_the_selector_and_go_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        turns = ReadTurns(loop, budget=2000)  # two 1000-byte datagrams per turn
        runner = Runner(loop, turns)
        with _sockets(4) as (transports, sender):
            for t in transports:  # three datagrams wait in each socket
                for _ in range(3):
                    sender.sendto(b"x" * 1000, t.local_address)
            _delivered()
            for name, t in zip("abcd", transports, strict=True):
                runner.watch(t, name)
            await _until(lambda: len(runner.served) == 12)
            assert len(runner.served) == 12  # every datagram read
            # two reads a turn, and no socket more than one read ahead of another
            for end in range(1, 13):
                counts = [runner.served[:end].count(name) for name in "abcd"]
                assert max(counts) - min(counts) <= 1, runner.served
            assert turns.parks >= 2 and turns.turns >= 5
            # a parked socket waited off the selector: not reported at every turn (level
            # triggered, each of the 4 would have been, 5 turns and more)
            assert runner.reports <= 8
            await _turns(10)  # each found empty once more, and back on the selector
            assert not turns.queue and not turns.parked
            assert len(runner.served) == 12

    run(main(), 20)


def test_a_parked_socket_no_longer_read_or_closed_is_dropped_from_the_queue() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        turns = ReadTurns(loop, budget=1000)
        runner = Runner(loop, turns)
        with _sockets(3) as (transports, sender):
            a, b, c = transports
            for name, t in zip("abc", transports, strict=True):
                runner.watch(t, name)
                sender.sendto(b"x" * 1000, t.local_address)
            _delivered()
            turns.charge(transports[0], 1000)  # this turn's budget is spent
            for t in transports:  # the selector's reports of this turn: all parked
                runner.on_readable(t)
            assert list(turns.parked) == [id(a), id(b), id(c)]
            runner.unwatch(b)  # b is no longer read (say, handed over)
            c.close()  # and c is closed
            await _turns(10)
            assert runner.served == ["a"]  # a was served; b and c were dropped
            assert not turns.parked and not turns.queue
            # b stayed off the selector: more data there is not read
            sender.sendto(b"y" * 10, b.local_address)
            await _turns(10)
            assert runner.served == ["a"]

    run(main(), 20)


def test_a_socket_that_read_more_waits_behind_one_that_read_less() -> None:
    """Start-time fair queueing: ``a`` read 3000 bytes before ``b`` came, so ``b`` is
    served until it has read as much, then they alternate."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        turns = ReadTurns(loop, budget=1000)  # one 1000-byte datagram per turn
        runner = Runner(loop, turns)
        with _sockets(2) as (transports, sender):
            a, b = transports
            runner.watch(a, "a")
            runner.watch(b, "b")
            for t in transports:
                for _ in range(5):
                    sender.sendto(b"x" * 1000, t.local_address)
            _delivered()
            turns.charge(a, 3000)  # a's reads of this turn spent the budget
            runner.on_readable(a)
            runner.on_readable(b)
            await _until(lambda: len(runner.served) == 10)
            assert runner.served[:3] == ["b", "b", "b"]
            assert sorted(runner.served[3:5]) == ["a", "b"]
            assert sorted(runner.served) == ["a"] * 5 + ["b"] * 5

    run(main(), 20)


class DrainingRunner(Runner):
    """Reads a socket until it is empty, as ``read_turn`` does under the budget."""

    def read_turn(self, transport: UdpTransport, peer: Any) -> bool:
        batch = transport.recv_batch(8)
        for data, *_ in batch:
            self.served.append(self.names[id(transport)])
            self.turns.charge(transport, len(data))
        return len(batch) == 8


def test_a_busy_socket_stays_off_the_selector_until_a_read_finds_it_empty() -> None:
    """A parked socket read empty of data it had waits again off the selector: what
    comes meanwhile is read at its next turn without a report (and without the selector
    changes of putting it back and taking it off again); a read that finds nothing puts
    it back, and data then brings a report."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        turns = ReadTurns(loop, budget=1000)
        runner = DrainingRunner(loop, turns)
        with _sockets(3) as (transports, sender):
            a, b, other = transports
            runner.watch(a, "a")
            runner.watch(b, "b")
            for t in (a, b):
                sender.sendto(b"x" * 1000, t.local_address)
            _delivered()
            turns.charge(other, 1000)  # the turn's budget went to another socket
            runner.on_readable(a)
            runner.on_readable(b)
            assert runner.reports == 2
            await _turns(1)  # the next turn: a's datagram (1000 bytes, the budget)
            assert runner.served == ["a"]
            sender.sendto(b"y" * 1000, a.local_address)  # a is off the selector
            _delivered()
            await _until(lambda: len(runner.served) == 3 and not turns.parked)
            assert runner.served == ["a", "b", "a"]
            assert runner.reports == 2  # a was read at its turn, unreported
            assert not turns.parked  # read empty at last: both back on the selector
            sender.sendto(b"z" * 10, b.local_address)
            await _until(lambda: runner.reports == 3)
            assert runner.reports == 3 and runner.served[-1] == "b"

    run(main(), 20)


class FailingRunner(Runner):
    """Its first read raises (a bug in what a read feeds), later ones work."""

    def __init__(self, loop: asyncio.AbstractEventLoop, turns: ReadTurns) -> None:
        super().__init__(loop, turns)
        self.failed = False

    def read_turn(self, transport: UdpTransport, peer: Any) -> bool:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a read failed")
        return super().read_turn(transport, peer)


def test_a_parked_socket_whose_read_raises_is_put_back_on_the_selector() -> None:
    """The exception goes to the loop's handler, and the socket is not left off the
    selector: its data is read at a later report."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        turns = ReadTurns(loop, budget=1000)
        runner = FailingRunner(loop, turns)
        with _sockets(2) as (transports, sender):
            a, other = transports
            runner.watch(a, "a")
            sender.sendto(b"x" * 1000, a.local_address)
            _delivered()
            turns.charge(other, 1000)
            runner.on_readable(a)  # parked
            await _until(lambda: bool(runner.served))
            assert runner.failed and len(errors) == 1
            assert runner.served == ["a"]

    run(main(), 20)


def test_the_budget_renews_every_turn() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        turns = ReadTurns(loop, budget=100)
        turns.charge(None, 250)  # type: ignore[arg-type]
        assert turns.spent()
        await _turns(2)
        assert turns.used == 0 and not turns.spent() and not turns.armed

    run(main(), 5)


CONNECTIONS = 12
DOWNLOAD = 256 * 1024


async def _download(port: int, seed: int) -> dict[str, object]:
    async with quicflow.connect("127.0.0.1", port, configuration=client_config()) as conn:
        reader, writer = await conn.create_stream()
        return await echo_proto.client_exchange(
            reader, writer, upload=b"", download=DOWNLOAD, seed=seed
        )


@pytest.mark.parametrize("budget", [1, 64 * 1024])
def test_downloads_on_many_sockets_arrive_intact_under_a_small_budget(
    monkeypatch: pytest.MonkeyPatch, budget: int
) -> None:
    """Twelve connections, each its own runner and socket on one loop (as the perf
    client): with a budget of one byte every socket found ready while another waits
    is parked, with 64 KiB most are. Every byte arrives (hashes), and the parking
    happened."""
    monkeypatch.setattr(readturns, "TURN_BYTES", budget)

    async def main() -> None:
        from quicflow.aio import loopwheel

        loop = asyncio.get_running_loop()
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            wheel = loopwheel._WHEELS[id(loop)]
            assert wheel.reads.budget == budget
            port = server.address[1]
            results = await asyncio.gather(
                *(_download(port, s) for s in range(CONNECTIONS)))
            assert all(r["ok"] for r in results), [r for r in results if not r["ok"]][:2]
            assert wheel.reads.parks > CONNECTIONS
            assert wheel.reads.turns > 0
        finally:
            server.close()

    run(main(), 120)


UPLOAD = 1 << 20


async def _upload(port: int, seed: int) -> dict[str, object]:
    async with quicflow.connect("127.0.0.1", port, configuration=client_config()) as conn:
        reader, writer = await conn.create_stream()
        return await echo_proto.client_exchange(
            reader, writer, upload=echo_proto.payload(seed, UPLOAD), download=0,
            seed=seed)


def test_uploads_to_a_server_with_connection_sockets_arrive_intact_under_a_small_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server reads a socket per connection (``connection_sockets``): under a 64 KiB
    budget its sockets are parked too, and every upload arrives intact (the server's
    digest of what it read, checked by each client)."""
    monkeypatch.setattr(readturns, "TURN_BYTES", 64 * 1024)
    parked_by: list[object] = []
    park = ReadTurns.park

    def recording(self: ReadTurns, runner: Any, transport: Any, peer: Any) -> None:
        parked_by.append(runner)
        park(self, runner, transport, peer)

    monkeypatch.setattr(ReadTurns, "park", recording)

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            port = server.address[1]
            results = await asyncio.gather(*(_upload(port, s) for s in range(CONNECTIONS)))
            assert all(r["ok"] and r["upload_intact"] for r in results), results[:2]
            stats = server.stats()
            assert stats["sockets"]["connected_sockets_opened"] == CONNECTIONS, stats["sockets"]
            assert any(r is server.runner for r in parked_by)
        finally:
            server.close()

    run(main(), 120)
