"""``UdpTransport.send_runs``: a build's GSO sends handed to the socket in one call
(issue 11, 256 bulk connections: the runner paid ``send_batch``'s layers once per GSO
send). Real loopback sockets; what a user cares about: the datagrams arrive intact, cut
where the runs say, and the counters (``batches_sent`` per run, ``syscalls_send`` per
``sendmsg``) read what a ``send_batch`` per run would have made them read."""

from __future__ import annotations

import dataclasses
import errno
import socket

import pytest

from quicflow.aio.gso import gso_batches
from quicflow.datapath import UdpTransport

from .test_datapath_sockets import (
    drain_queued,
    in_private_netns,
    needs_gso,
    one_cpu,
    payload,
    receive,
    segments_of,
)


def _datagrams(sizes: list[int]) -> tuple[bytes, list[int], list[bytes]]:
    """Datagrams of ``sizes`` back to back, their end offsets, and each one."""
    each = [payload(n, seed=i) for i, n in enumerate(sizes)]
    bounds: list[int] = []
    end = 0
    for d in each:
        end += len(d)
        bounds.append(end)
    return b"".join(each), bounds, each


#: a bulk build: two engine calls of full datagrams, each ending in a shorter one, then a
#: run longer than one GSO send, then datagrams of other sizes one by one
SIZES = [1200] * 30 + [700] + [1200] * 80 + [333] + [1200] * 3 + [90, 1452, 1452, 64]


@needs_gso
def test_runs_arrive_intact_and_count_as_a_send_batch_each() -> None:
    data, bounds, each = _datagrams(SIZES)
    runs = gso_batches(bounds)
    assert len(runs) >= 5
    with (
        UdpTransport.open("127.0.0.1", 0) as rx,
        UdpTransport.open("127.0.0.1", 0) as one_call,
        UdpTransport.open("127.0.0.1", 0) as per_run,
    ):
        assert one_call.send_runs(bytearray(data), runs, rx.local_address, 2)
        view = memoryview(data)
        for start, end, size in runs:
            assert per_run.send_batch(view[start:end], size, rx.local_address, 2)
        got = segments_of(receive(rx, 2 * len(data)))
        # both senders' datagrams, each cut as sent (the two senders' order interleaves)
        assert sorted(got) == sorted(each + each)
        counts = dataclasses.asdict(one_call.counters)
        assert counts == dataclasses.asdict(per_run.counters)
        assert counts["batches_sent"] == len(runs)
        assert counts["datagrams_sent"] == len(SIZES)
        assert counts["bytes_sent"] == len(data)
        # one sendmsg per run here: the runs are within the kernel's GSO limits
        assert counts["syscalls_send"] == len(runs)


def test_without_gso_the_runs_go_datagram_by_datagram() -> None:
    data, bounds, each = _datagrams(SIZES[:40])
    runs = gso_batches(bounds)
    with (
        UdpTransport.open("127.0.0.1", 0, backend="basic") as rx,
        UdpTransport.open("127.0.0.1", 0, backend="basic") as tx,
    ):
        assert tx.send_runs(data, runs, rx.local_address)
        entries = receive(rx, len(data))
        assert [bytes(e[0]) for e in entries] == each
        assert tx.counters.syscalls_send == len(each)
        assert tx.counters.batches_sent == len(runs)


@pytest.mark.parametrize("sizes", [
    ([1200] * 53 + [500]) * 6 + [1200] * 10,  # GSO runs
    list(range(100, 1401, 100)) * 12,  # runs of one datagram each (send_batch's path)
], ids=["gso-runs", "single-datagram-runs"])
def test_a_full_buffer_queues_the_rest_of_the_runs_in_order(sizes: list[int]) -> None:
    # as test_full_send_buffer_queues_and_flushes_without_loss: a token bucket on the
    # namespace's loopback holds the sender's buffer memory, a tiny SO_SNDBUF fills up
    # (20 Mbit/s: a sender held off the CPU for tens of ms still finds it full)
    shape = ["tc", "qdisc", "add", "dev", "lo", "root", "tbf",
             "rate", "20mbit", "burst", "32kb", "limit", "64mb"]

    def build() -> tuple[UdpTransport, UdpTransport]:
        rx = UdpTransport.open("127.0.0.1", 0, buffer_bytes=32 << 20)
        tx = UdpTransport.open("127.0.0.1", 0, buffer_bytes=0)
        tx.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # minimum (~4.6 KB)
        return rx, tx

    rx, tx = in_private_netns([shape], build)
    with rx, tx, one_cpu():
        data, bounds, each = _datagrams(sizes)
        runs = gso_batches(bounds)
        assert not tx.send_runs(data, runs, rx.local_address)
        assert tx.has_pending() and tx.counters.send_eagain > 0
        assert tx.counters.batches_sent == len(runs)  # queued runs count too
        # a later send goes behind what waits
        tail = payload(1200, seed=99)
        tx.send_batch(tail, 1200, rx.local_address)
        entries = drain_queued(rx, tx, len(data) + len(tail))
        assert segments_of(entries) == each + [tail]
        assert tx.counters.datagrams_sent == len(sizes) + 1


@needs_gso
def test_a_refused_gso_send_goes_on_through_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run whose GSO send fails (here: EINVAL, as a kernel refusing GSO says) is sent
    on from where it stopped by the general path, which decides as it would for a
    ``send_batch``: the datagrams go one by one and GSO is switched off; the later runs
    follow without GSO. The syscall wrapper stands in for the refusal."""
    import quicflow.datapath.socket as socket_module

    real_send_gso = socket_module.send_gso
    calls = [0]

    def send_gso(sock, view, offset, size, addr, chunk, counters):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] >= 2:  # the first run goes; every GSO send after it is refused
            counters.syscalls_send += 1
            return offset, errno.EINVAL
        return real_send_gso(sock, view, offset, size, addr, chunk, counters)

    monkeypatch.setattr(socket_module, "send_gso", send_gso)
    data, bounds, each = _datagrams(SIZES)
    runs = gso_batches(bounds)
    with UdpTransport.open("127.0.0.1", 0) as rx, UdpTransport.open("127.0.0.1", 0) as tx:
        assert tx.send_runs(data, runs, rx.local_address)
        assert tx.counters.gso_fallbacks == 1 and tx.backend == "basic"
        assert calls[0] == 2  # GSO off: the later runs never try it
        assert sorted(segments_of(receive(rx, len(data)))) == sorted(each)
        assert tx.counters.datagrams_sent == len(SIZES)
        assert tx.counters.batches_sent == len(runs)
