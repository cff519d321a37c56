"""The native receive loop (``quicflow.datapath._udp``: one ``recvmmsg`` per batch) against
the pure-Python one (one ``recvmsg`` per buffer), on real loopback sockets: the same
entries (bytes, GRO segment size, address, ECN bits) and counters, and no EAGAIN read
after a batch the kernel returned short.

Every test needs the built extension: without it they skip, or fail under
``QUICFLOW_REQUIRE_ALL=1`` (CI builds it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import select
import socket
from collections.abc import Callable

import pytest

from quicflow.datapath import UdpTransport, probe_capabilities
from quicflow.datapath.backends import (
    DatapathCounters,
    RecvEntry,
    native_receive_built,
    receiver_for,
    recv_into_native,
    recv_into_python,
)
from quicflow.datapath.constants import ECN_CE, ECN_ECT0, ECN_ECT1

CAPS = probe_capabilities(socket.AF_INET)


@pytest.fixture(autouse=True)
def _native(require: Callable[[bool, str], None]) -> None:
    require(native_receive_built(), "quicflow.datapath._udp is not built: pip install -e . "
            "with gcc")


def test_sockets_use_the_native_loop_unless_python_is_forced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        monkeypatch.setenv("QUICFLOW_ENGINE", "native")
        assert receiver_for(sock) is recv_into_native
        monkeypatch.setenv("QUICFLOW_ENGINE", "python")
        assert receiver_for(sock) is recv_into_python


def _wait(rx: UdpTransport) -> None:
    assert select.select([rx.socket], [], [], 2.0)[0], "nothing arrived"


def _read_all(rx: UdpTransport, loop: Callable[..., None], expect: int,
              counters: DatapathCounters) -> list[RecvEntry]:
    """Entries of ``expect`` datagrams read with ``loop`` (8 buffers per call)."""
    out: list[RecvEntry] = []
    got = 0
    while got < expect:
        _wait(rx)
        before = len(out)
        loop(rx.socket, out, 8, counters)
        got += sum(-(-len(d) // s) if s else 1 for d, s, _, _ in out[before:])
    return out


def _send_mix(tx: UdpTransport, dest: tuple[str, int], gso: bool) -> int:
    """Datagrams of several sizes and ECN marks (and, with ``gso``, GSO trains that GRO
    coalesces on receipt); how many datagrams were sent."""
    sent = 0
    for i, (size, ecn) in enumerate([(1200, 0), (1, ECN_ECT0), (2, ECN_ECT1), (1452, ECN_CE),
                                     (37, 0), (65000 // 64, ECN_ECT0)]):
        assert tx.send_batch(bytes([i]) * size, size, dest, ecn)
        sent += 1
    if gso:
        for seg, count in ((1200, 10), (1000, 3)):
            data = b"".join(bytes([n]) * seg for n in range(count)) + b"tail"
            assert tx.send_batch(data, seg, dest, ECN_ECT0)
            sent += count + 1
    return sent


@pytest.mark.parametrize("family", ["ipv4", "dual-stack-v4", "ipv6"])
def test_native_and_python_loops_read_the_same_entries(family: str) -> None:
    host = {"ipv4": "127.0.0.1", "dual-stack-v4": "::", "ipv6": "::1"}[family]
    peer = "::1" if family == "ipv6" else "127.0.0.1"
    gso = CAPS.gso and CAPS.gro
    rx = UdpTransport.open(host, 0, backend="gso" if gso else "basic")
    tx = UdpTransport.open(peer, 0, backend="gso" if gso else "basic")
    try:
        port = rx.local_address[1]
        dest = (peer, port)
        results = []
        for loop in (recv_into_python, recv_into_native):
            sent = _send_mix(tx, dest, gso)
            counters = DatapathCounters()
            entries = _read_all(rx, loop, sent, counters)
            results.append((entries, counters))
        (py_entries, py_counters), (c_entries, c_counters) = results
        assert c_entries == py_entries
        assert [type(e[0]) for e in c_entries] == [bytes] * len(c_entries)
        if family == "dual-stack-v4":
            assert c_entries[0][2][0] == "::ffff:127.0.0.1"
        assert {e[3] for e in c_entries} >= {0, ECN_ECT0, ECN_ECT1, ECN_CE}
        if gso:  # GRO handed over coalesced buffers, with their segment size
            assert any(seg < len(data) for data, seg, _, _ in c_entries)
        py, c = dataclasses.asdict(py_counters), dataclasses.asdict(c_counters)
        assert py.pop("syscalls_recv") > c.pop("syscalls_recv")
        assert c == py and c["datagrams_received"] == sent
    finally:
        rx.close()
        tx.close()


def test_entries_keep_their_bytes_while_later_reads_fill_the_same_slots() -> None:
    """The kernel writes into the bytes objects the entries hand out (a pool, one per
    slot): an entry already handed out is never written again, whatever later reads bring
    (full 64 KiB GRO buffers, single bytes, an empty datagram)."""
    gso = CAPS.gso and CAPS.gro
    rx = UdpTransport.open("127.0.0.1", 0, backend="gso" if gso else "basic")
    tx = UdpTransport.open("127.0.0.1", 0, backend="gso" if gso else "basic")
    try:
        dest = ("127.0.0.1", rx.local_address[1])
        kept: list[tuple[bytes, str]] = []
        for n in range(6):
            sent = 0
            for k in range(8):
                fill = bytes([n * 8 + k]) * 1200
                if gso:
                    assert tx.send_batch(fill * 50, 1200, dest)
                    sent += 50
                else:
                    assert tx.send_batch(fill, 1200, dest)
                    sent += 1
            assert tx.socket.sendto(b"", dest) == 0
            assert tx.send_batch(bytes([n]), 1, dest)
            entries = _read_all(rx, recv_into_native, sent + 2, DatapathCounters())
            kept += [(e[0], hashlib.sha256(e[0]).hexdigest()) for e in entries]
            assert [e[0] for e in entries[-2:]] == [b"", bytes([n])]
        assert all(hashlib.sha256(data).hexdigest() == digest for data, digest in kept)
        assert len({id(data) for data, _ in kept if data}) == len([d for d, _ in kept if d])
        assert sum(len(data) for data, _ in kept) == 6 * (8 * 1200 * (50 if gso else 1) + 1)
    finally:
        rx.close()
        tx.close()


def test_a_short_batch_ends_without_an_eagain_read() -> None:
    rx = UdpTransport.open("127.0.0.1", 0, backend="basic")
    tx = UdpTransport.open("127.0.0.1", 0, backend="basic")
    try:
        dest = ("127.0.0.1", rx.local_address[1])
        calls = {}
        for name, loop in (("python", recv_into_python), ("native", recv_into_native)):
            for n in range(3):
                assert tx.send_batch(bytes([n]) * 100, 100, dest)
            counters = DatapathCounters()
            entries = _read_all(rx, loop, 3, counters)
            assert [e[0] for e in entries] == [bytes([n]) * 100 for n in range(3)]
            calls[name] = counters.syscalls_recv
            # nothing left behind: the next read finds the queue empty
            assert rx.recv_batch(8) == []
        assert calls == {"python": 4, "native": 1}
        # a full batch is followed by another call (more may wait); 11 = 8 + 3
        for n in range(11):
            assert tx.send_batch(bytes([n]), 1, dest)
        counters = DatapathCounters()
        entries = _read_all(rx, recv_into_native, 11, counters)
        assert [e[0] for e in entries] == [bytes([n]) for n in range(11)]
        assert counters.syscalls_recv == 2 and counters.datagrams_received == 11
    finally:
        rx.close()
        tx.close()


def test_a_queued_icmp_error_is_counted_and_the_datagrams_behind_it_still_read() -> None:
    """A port-unreachable report (IP_RECVERR) fails one receive call in both loops: it is
    counted in ``recv_errors`` and the datagrams after it are read as usual."""
    results = []
    for loop in (recv_into_python, recv_into_native):
        rx = UdpTransport.open("127.0.0.1", 0, backend="basic", pmtu_discovery=True)
        tx = UdpTransport.open("127.0.0.1", 0, backend="basic")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
                gone.bind(("127.0.0.1", 0))
                dead = gone.getsockname()
            assert rx.send_batch(b"x", 1, dead)  # answered by an ICMP port unreachable
            dest = ("127.0.0.1", rx.local_address[1])
            for n in range(3):
                assert tx.send_batch(bytes([n]) * 10, 10, dest)
            counters = DatapathCounters()
            entries = _read_all(rx, loop, 3, counters)
            results.append(([e[0] for e in entries], counters.recv_errors))
        finally:
            rx.close()
            tx.close()
    assert results[0] == results[1] == ([bytes([n]) * 10 for n in range(3)], 1)
