"""The native GSO send loop of a connected socket (``quicflow.datapath._udp.send_runs``,
``send_gso_runs_native``) against its Python reference (``send_gso_runs``: one
``send_gso`` per run), on real loopback sockets: the same return values, counters and
datagrams received, for builds of one and several segment sizes, runs of one datagram
(left to the caller), chunk ends, a start past the first run and a send that fails once
(a queued ICMP error) and is retried.

Every test needs the built extension: without it they skip, or fail under
``QUICFLOW_REQUIRE_ALL=1`` (CI builds it).
"""

from __future__ import annotations

import dataclasses
import select
import socket
from collections.abc import Callable

import pytest

from quicflow.aio.gso import gso_batches
from quicflow.datapath import UdpTransport, probe_capabilities
from quicflow.datapath.backends import (
    DatapathCounters,
    GsoRunsSender,
    gso_runs_sender_for,
    native_receive_built,
    send_gso_runs,
    send_gso_runs_native,
)

CAPS = probe_capabilities(socket.AF_INET)
SENDERS: tuple[tuple[str, GsoRunsSender], ...] = (
    ("python", send_gso_runs), ("native", send_gso_runs_native))


@pytest.fixture(autouse=True)
def _native(require: Callable[[bool, str], None]) -> None:
    require(native_receive_built(), "quicflow.datapath._udp is not built: pip install -e . "
            "with gcc")
    require(CAPS.gso, "no UDP GSO on this kernel")


def test_connected_sockets_use_the_native_loop_unless_python_is_forced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        monkeypatch.setenv("QUICFLOW_ENGINE", "native")
        assert gso_runs_sender_for(sock) is send_gso_runs_native
        monkeypatch.setenv("QUICFLOW_ENGINE", "python")
        assert gso_runs_sender_for(sock) is send_gso_runs


def _pattern(bounds: list[int]) -> bytearray:
    """Datagrams whose bytes say which datagram and which byte they are."""
    buf = bytearray()
    start = 0
    for k, end in enumerate(bounds):
        buf += bytes((k * 7 + j) & 0xFF for j in range(end - start))
        start = end
    return buf


def _received(rx: socket.socket, expect: int) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < expect:
        assert select.select([rx], [], [], 2.0)[0], f"{len(out)} of {expect} arrived"
        out.append(rx.recv(65536))
    return out


def _pair() -> tuple[socket.socket, UdpTransport]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    tx = UdpTransport.open("127.0.0.1", 0, connect_to=rx.getsockname())
    return rx, tx


def _send(sender: GsoRunsSender, bounds: list[int], runs: list[tuple[int, int, int]],
          first: int, size: int, chunk: int
          ) -> tuple[tuple[int, int, int], DatapathCounters, list[bytes]]:
    rx, tx = _pair()
    try:
        buf = _pattern(bounds)
        counters = DatapathCounters()
        result = sender(tx.socket, memoryview(buf), runs, first, size, chunk, counters)
        index = result[0]
        # what a receiver gets: the bytes of the datagrams of the runs it took, in order
        lo = runs[first][0]
        hi = runs[index - 1][1] if index > first else lo
        want = [bytes(buf[a:b]) for a, b in zip([0, *bounds], bounds, strict=False)
                if lo <= a and b <= hi]
        got = _received(rx, len(want))
        assert got == want
        return result, counters, got
    finally:
        rx.close()
        tx.close()


BUILDS = [
    [1200 * (i + 1) for i in range(111)],  # 54 + 54 + 3
    [1200 * (i + 1) for i in range(108)] + [1200 * 108 + 500],  # a short last datagram
    [1200 * (i + 1) for i in range(55)],  # a chunk of one datagram at a run's end
    [1200 * (i + 1) for i in range(60)] + [72000 + 1100 * (i + 1) for i in range(70)],
    [1200 * (i + 1) for i in range(54)] + [64800 + 300],  # a run of one datagram last
    [300, 1500, 2700, 3900, 4000, 5200],  # sizes that change: short runs
]


@pytest.mark.parametrize("bounds", BUILDS)
@pytest.mark.parametrize("chunk_segments", [54, 7, 1])
def test_native_runs_send_what_the_reference_sends(bounds: list[int],
                                                   chunk_segments: int) -> None:
    runs = gso_batches(bounds)
    for first in range(len(runs)):
        size = runs[first][2]
        chunk = size * chunk_segments
        results = {}
        for name, sender in SENDERS:
            result, counters, got = _send(sender, bounds, runs, first, size, chunk)
            results[name] = (result, dataclasses.asdict(counters), got)
        assert results["native"] == results["python"], (first, size)


def test_a_failed_send_is_retried_once_as_the_reference_does() -> None:
    """A datagram to a closed port leaves an ICMP error on the socket, which fails the
    next send once (ECONNREFUSED): both loops count one retry and send everything."""
    bounds = [1200 * (i + 1) for i in range(60)]
    runs = gso_batches(bounds)
    seen = {}
    for name, sender in SENDERS:
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()
        closed.close()
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx.connect(port)
        try:
            tx.send(b"x")
            select.select([], [], [], 0.05)
            counters = DatapathCounters()
            result = sender(tx, memoryview(bytearray(bounds[-1])), runs, 0, 1200, 1200 * 54,
                            counters)
            seen[name] = (result, dataclasses.asdict(counters))
        finally:
            tx.close()
    assert seen["native"] == seen["python"]
    assert seen["native"][1]["send_retries"] >= 1


def test_send_runs_gives_the_receiver_the_same_datagrams_with_either_loop() -> None:
    """``UdpTransport.send_runs`` (the runner's ``send_buffer``) on a connected socket:
    runs of GSO sends, runs of one datagram and a second size, in order."""
    bounds = BUILDS[3] + [BUILDS[3][-1] + 200]
    buf = _pattern(bounds)
    got = {}
    for name, sender in SENDERS:
        rx, tx = _pair()
        try:
            tx._gso_runs = sender  # (the transport's choice, as gso_runs_sender_for makes)
            assert tx.send_runs(buf, gso_batches(bounds), None, 0)
            got[name] = (_received(rx, len(bounds)), dataclasses.asdict(tx.counters))
        finally:
            rx.close()
            tx.close()
    assert got["native"] == got["python"]
    assert got["native"][0] == [bytes(buf[a:b]) for a, b in zip([0, *bounds], bounds,
                                                                 strict=False)]


def test_a_start_past_the_last_run_sends_nothing_in_either_loop() -> None:
    rx, tx = _pair()
    try:
        runs = [(0, 2400, 1200)]
        for _, sender in SENDERS:
            counters = DatapathCounters()
            assert sender(tx.socket, memoryview(bytearray(2400)), runs, 1, 1200, 64800,
                          counters) == (1, 0, 0)
            assert counters == DatapathCounters()
    finally:
        rx.close()
        tx.close()
