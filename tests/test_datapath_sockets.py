"""quicflow.datapath on real loopback sockets (and, for send-buffer pressure and GSO
refusal, on the loopback of a private network namespace shaped with tc)."""

from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from quicflow.datapath import (
    MMSG_REFUSED,
    RecvEntry,
    UdpTransport,
    normalize_address,
    probe_capabilities,
)

CAPS = probe_capabilities(socket.AF_INET)
needs_gso = pytest.mark.skipif(not (CAPS.gso and CAPS.gro), reason="kernel lacks UDP GSO/GRO")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def receive(rx: UdpTransport, nbytes: int, timeout: float = 2.0) -> list[RecvEntry]:
    """Read entries until ``nbytes`` of data arrived (or fail on timeout)."""
    entries: list[RecvEntry] = []
    got = 0
    deadline = time.monotonic() + timeout
    while got < nbytes:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out: {got} of {nbytes} bytes"
        select.select([rx], [], [], left)
        for entry in rx.recv_batch():
            entries.append((bytes(entry[0]), entry[1], entry[2], entry[3]))
            got += len(entry[0])
    return entries


def segments_of(entries: list[RecvEntry]) -> list[bytes]:
    out: list[bytes] = []
    for data, seg, _, _ in entries:
        raw = bytes(data)
        out.extend(raw[i : i + seg] for i in range(0, len(raw), seg))
    return out



@contextmanager
def one_cpu() -> Iterator[None]:
    """Keep the calling thread on one CPU meanwhile. The loopback device hands each packet
    to the backlog of the CPU that transmits it (and a token-bucket qdisc's timer fires on
    the CPU that armed it), so a sender that moves between CPUs can see its datagrams
    delivered out of order by the kernel: a test of the order we send in must not move."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def drain_queued(rx: UdpTransport, tx: UdpTransport, want: int) -> list[RecvEntry]:
    """Read ``want`` bytes from ``rx`` while ``tx`` flushes what it queued when its
    send buffer was full (on writability, as the runner does); all of it goes."""
    entries: list[RecvEntry] = []
    got = 0
    deadline = time.monotonic() + 5.0
    while got < want:
        assert time.monotonic() < deadline, f"{got} of {want} bytes arrived"
        select.select([rx], [tx] if tx.has_pending() else [], [], 0.5)
        if tx.has_pending():
            tx.flush_pending()
        for e in rx.recv_batch():
            entries.append((bytes(e[0]), e[1], e[2], e[3]))
            got += len(e[0])
    assert not tx.has_pending() and tx.pending_bytes == 0
    return entries

def in_private_netns(setup: list[list[str]], build: Callable[[], T]) -> T:
    """Run ``build`` in a thread that entered a new network namespace, after bringing its
    loopback up and running the ``setup`` commands (ip/tc) there. Sockets made by ``build``
    stay in that namespace; the process's own namespace is not touched."""
    if os.geteuid() != 0 or not shutil.which("tc") or not shutil.which("ip"):
        pytest.skip("needs root, ip and tc for a private network namespace")
    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            if libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            for cmd in setup:
                subprocess.run(cmd, check=True)
            result.append(build())
        except BaseException as exc:  # handed to the test thread
            error.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@needs_gso
def test_gso_to_gro_coalesces_and_keeps_bytes() -> None:
    with UdpTransport.open("127.0.0.1", 0) as rx, UdpTransport.open("127.0.0.1", 0) as tx:
        assert tx.backend == "gso" and rx.backend == "gso"
        data = payload(19 * 1200 + 700)  # 20 segments, the last shorter
        assert tx.send_batch(data, 1200, rx.local_address)
        assert tx.counters.syscalls_send == 1
        assert tx.counters.datagrams_sent == 20
        entries = receive(rx, len(data))
        assert b"".join(bytes(e[0]) for e in entries) == data
        for buf, seg, addr, _ in entries:
            assert seg == 1200 or seg == len(buf)
            assert addr == tx.local_address
        assert segments_of(entries) == [data[i : i + 1200] for i in range(0, len(data), 1200)]
        assert rx.counters.datagrams_received == 20
        assert rx.counters.truncated == 0


def test_basic_backend_carries_datagrams_intact() -> None:
    with (
        UdpTransport.open("127.0.0.1", 0, backend="basic") as rx,
        UdpTransport.open("127.0.0.1", 0, backend="basic") as tx,
    ):
        datagrams = [payload(100 + i * 50, seed=i) for i in range(20)]
        for d in datagrams:
            assert tx.send_batch(d, len(d), rx.local_address)
        entries = receive(rx, sum(map(len, datagrams)))
        assert [bytes(e[0]) for e in entries] == datagrams
        assert all(seg == len(buf) for buf, seg, _, _ in entries)


@needs_gso
def test_forced_basic_never_uses_udp_segment() -> None:
    # The receiver has GRO on: it coalesces only what was sent with GSO, so 20 separate
    # datagrams prove the sender used no UDP_SEGMENT.
    with (
        UdpTransport.open("127.0.0.1", 0, backend="gso") as rx,
        UdpTransport.open("127.0.0.1", 0, backend="basic") as tx,
    ):
        assert tx.backend == "basic"
        data = payload(19 * 1200 + 300)
        assert tx.send_batch(data, 1200, rx.local_address)
        assert tx.counters.syscalls_send == 20
        entries = receive(rx, len(data))
        assert len(entries) == 20
        assert all(seg == len(buf) for buf, seg, _, _ in entries)
        assert b"".join(bytes(e[0]) for e in entries) == data


def test_mmsg_backend_refused_with_reason() -> None:
    with pytest.raises(ValueError, match="slower") as info:
        UdpTransport.open("127.0.0.1", 0, backend="mmsg")
    assert str(info.value) == MMSG_REFUSED
    with pytest.raises(ValueError, match="unknown"):
        UdpTransport.open("127.0.0.1", 0, backend="nope")


@pytest.mark.parametrize("backend", ["gso", "basic"])
def test_full_send_buffer_queues_and_flushes_without_loss(backend: str) -> None:
    if backend == "gso" and not CAPS.gso:
        pytest.skip("no GSO")
    # A token-bucket qdisc on the namespace's loopback holds sent packets (and the
    # sender's send-buffer memory) long enough for a tiny SO_SNDBUF to fill up.
    shape = ["tc", "qdisc", "add", "dev", "lo", "root", "tbf",
             "rate", "200mbit", "burst", "32kb", "limit", "64mb"]

    def build() -> tuple[UdpTransport, UdpTransport]:
        rx = UdpTransport.open("127.0.0.1", 0, buffer_bytes=32 << 20)
        tx = UdpTransport.open("127.0.0.1", 0, backend=backend, buffer_bytes=0)
        tx.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # minimum (~4.6 KB)
        return rx, tx

    rx, tx = in_private_netns([shape], build)
    with rx, tx, one_cpu():
        batches = [payload(10 * 1200, seed=i) for i in range(40)]
        results = [tx.send_batch(b, 1200, rx.local_address) for b in batches]
        assert False in results, "send buffer never filled"
        assert tx.has_pending() and tx.pending_bytes > 0
        assert tx.counters.send_eagain > 0
        # The receiver starts reading only now; the sender flushes on writability.
        entries = drain_queued(rx, tx, sum(map(len, batches)))
        assert segments_of(entries) == [
            b[i : i + 1200] for b in batches for i in range(0, len(b), 1200)
        ]
        assert tx.counters.datagrams_sent == 400


@needs_gso
def test_a_send_refused_on_a_queued_icmp_report_keeps_gso(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With IP_RECVERR each queued ICMP report fails one later send (EMSGSIZE for
    "fragmentation needed"). After a path MTU drop the reports for datagrams sent before
    it keep arriving, late under load: one that comes after the queue was read fails the
    GSO send tried again, while the same datagrams sent one by one go through. That says
    nothing about GSO itself: it stays on (tests/test_pmtu.py's transfer behind a router
    turned it off under load). A report's arrival cannot be timed on a real path, so the
    two syscall wrappers stand in for it; the sockets and the datagrams are real."""
    import quicflow.datapath.socket as socket_module

    real_send_gso = socket_module.send_gso
    arrived: list[int] = []  # reports queued and not yet read
    refusals = [2]  # the first GSO send and its retry each meet a report

    def send_gso(sock, view, offset, size, addr, chunk, counters):  # type: ignore[no-untyped-def]
        if refusals[0]:
            refusals[0] -= 1
            arrived.append(1280)  # for a 1452-byte datagram sent before the drop
            return offset, errno.EMSGSIZE
        return real_send_gso(sock, view, offset, size, addr, chunk, counters)

    def read_error_queue(sock, counters, limit=256):  # type: ignore[no-untyped-def]
        out = [(("127.0.0.1", port), errno.EMSGSIZE, 2, 3, 4, mtu) for mtu in arrived]
        counters.errqueue_entries += len(out)
        arrived.clear()
        return out

    monkeypatch.setattr(socket_module, "send_gso", send_gso)
    monkeypatch.setattr(socket_module, "read_error_queue", read_error_queue)
    with UdpTransport.open("127.0.0.1", 0) as rx, UdpTransport.open(
        "127.0.0.1", 0, backend="gso", pmtu_discovery=True
    ) as tx:
        port = rx.local_address[1]
        first, second = payload(3 * 1200), payload(3 * 1200, seed=1)
        assert tx.send_batch(first, 1200, rx.local_address)  # sent one by one
        assert tx.counters.gso_fallbacks == 0 and tx.backend == "gso"
        assert tx.send_batch(second, 1200, rx.local_address)  # GSO again
        assert refusals == [0] and tx.counters.gso_fallbacks == 0
        entries = receive(rx, 2 * len(first))
        assert b"".join(segments_of(entries)) == first + second


@needs_gso
def test_gso_refused_falls_back_to_basic() -> None:
    # A 1400-byte segment on a 1280-byte MTU: the kernel refuses the GSO send (EINVAL);
    # the transport resends per datagram (IPv4 fragments them) and switches GSO off.
    def build() -> tuple[UdpTransport, UdpTransport]:
        return UdpTransport.open("127.0.0.1", 0), UdpTransport.open("127.0.0.1", 0)

    rx, tx = in_private_netns([["ip", "link", "set", "lo", "mtu", "1280"]], build)
    with rx, tx:
        data = payload(3 * 1400)
        assert tx.send_batch(data, 1400, rx.local_address)
        assert tx.counters.gso_fallbacks == 1
        assert tx.backend == "basic"
        entries = receive(rx, len(data))
        assert segments_of(entries) == [data[i : i + 1400] for i in range(0, len(data), 1400)]


@pytest.mark.parametrize(
    ("server_host", "client_host"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::", "127.0.0.1")],
)
def test_ecn_bits_round_trip(server_host: str, client_host: str) -> None:
    if not probe_capabilities(socket.AF_INET6 if ":" in server_host else socket.AF_INET).ecn:
        pytest.skip("no ECN reporting")
    with (
        UdpTransport.open(server_host, 0) as rx,
        UdpTransport.open(client_host, 0) as tx,
    ):
        dest = (client_host, rx.local_address[1])
        for ecn in (2, 0, 1, 2):
            assert tx.send_batch(b"ecn-%d" % ecn, 1200, dest, ecn=ecn)
            (entry,) = receive(rx, 5)
            assert entry[3] == ecn
            assert bytes(entry[0]) == b"ecn-%d" % ecn


@pytest.mark.parametrize("backend", ["auto", "basic"])
def test_ipv6_loopback(backend: str) -> None:
    with (
        UdpTransport.open("::1", 0, backend=backend) as rx,
        UdpTransport.open("::1", 0, backend=backend) as tx,
    ):
        assert rx.family == socket.AF_INET6
        data = payload(30 * 1200 + 1)
        assert tx.send_batch(data, 1200, rx.local_address)
        entries = receive(rx, len(data))
        assert segments_of(entries) == [data[i : i + 1200] for i in range(0, len(data), 1200)]
        assert entries[0][2] == ("::1", tx.local_address[1])


def test_dual_stack_server_receives_ipv4_client() -> None:
    with (
        UdpTransport.open("::", 0) as server,
        UdpTransport.open("127.0.0.1", 0) as client,
    ):
        port = server.local_address[1]
        data = payload(5 * 1200)
        assert client.send_batch(data, 1200, ("127.0.0.1", port))
        entries = receive(server, len(data))
        addr = entries[0][2]
        assert addr == ("::ffff:127.0.0.1", client.local_address[1])
        assert normalize_address(addr) == client.local_address
        # Replying with the plain IPv4 form works too (mapped by the transport).
        assert server.send_batch(b"reply", 1200, normalize_address(addr))
        (reply,) = receive(client, 5)
        assert bytes(reply[0]) == b"reply" and reply[2] == ("127.0.0.1", port)


def test_reuse_port_connected_socket_gets_only_its_peer() -> None:
    listener = UdpTransport.open("127.0.0.1", 0, reuse_port=True)
    port = listener.local_address[1]
    with (
        listener,
        UdpTransport.open("127.0.0.1", 0) as client_a,
        UdpTransport.open("127.0.0.1", 0) as client_b,
    ):
        conn_a = UdpTransport.open(
            "127.0.0.1", port, reuse_port=True, connect_to=client_a.local_address
        )
        with conn_a:
            assert conn_a.peer_address == client_a.local_address
            assert conn_a.local_address == listener.local_address
            for i in range(10):
                assert client_a.send_batch(b"A%02d" % i, 1200, ("127.0.0.1", port))
                assert client_b.send_batch(b"B%02d" % i, 1200, ("127.0.0.1", port))
            got_a = receive(conn_a, 30)
            got_l = receive(listener, 30)
            assert [bytes(e[0]) for e in got_a] == [b"A%02d" % i for i in range(10)]
            assert [bytes(e[0]) for e in got_l] == [b"B%02d" % i for i in range(10)]
            assert {e[2] for e in got_a} == {client_a.local_address}
            # Connected sockets send without an address.
            assert conn_a.send_batch(b"to-a", 1200, None)
            (reply,) = receive(client_a, 4)
            assert bytes(reply[0]) == b"to-a" and reply[2] == ("127.0.0.1", port)
            assert conn_a.recv_batch() == [] and listener.recv_batch() == []
