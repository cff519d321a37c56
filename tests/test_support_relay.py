"""Tests of the lossy UDP relay, with plain UDP sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from tests.support.relay import LossyUdpRelay, RelayThread

N = 1000


def _payload(i: int) -> bytes:
    # A sequence number and a body that depends on it, to catch any alteration.
    return struct.pack("!I", i) + bytes((i + k) & 0xFF for k in range(60 + i % 40))


def _wait(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the relay")
        time.sleep(0.001)


def _udp(timeout: float = 0.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout if timeout else None)
    return s


def _pump(relay: LossyUdpRelay, client: socket.socket, server: socket.socket) -> list[bytes]:
    """Send N datagrams client -> relay -> server in paced batches; return what arrived.

    A datagram still held back at the end is sent when the relay closes: call
    ``_drain`` after leaving the ``RelayThread`` block.
    """
    got: list[bytes] = []
    server.setblocking(False)
    dest = relay.address
    for start in range(0, N, 50):
        for i in range(start, min(start + 50, N)):
            client.sendto(_payload(i), dest)
        _wait(lambda: relay.c2s.received == min(start + 50, N))  # noqa: B023
        # Drain what the relay forwarded so far, so that no socket buffer overflows.
        deadline = time.monotonic() + 5
        while len(got) < relay.c2s.forwarded and time.monotonic() < deadline:
            try:
                got.append(server.recv(2048))
            except BlockingIOError:
                time.sleep(0.001)
    return got


def _drain(relay: LossyUdpRelay, server: socket.socket, got: list[bytes]) -> list[bytes]:
    server.settimeout(2)
    while len(got) < relay.c2s.forwarded:
        got.append(server.recv(2048))
    return got


def test_loss_10_percent_drops_5_to_15_percent() -> None:
    with _udp() as server, _udp() as client:
        with RelayThread(server.getsockname(), loss=0.10, seed=7) as relay:
            got = _pump(relay, client, server)
        got = _drain(relay, server, got)
        c2s = relay.c2s
        assert c2s.received == N
        assert 0.05 * N <= c2s.dropped <= 0.15 * N, c2s
        assert c2s.forwarded + c2s.dropped == N
        assert c2s.reordered == 0 and c2s.delayed == 0
        assert len(got) == c2s.forwarded
        seqs = [struct.unpack("!I", d[:4])[0] for d in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # no reordering, no dups
        for seq, d in zip(seqs, got, strict=True):
            assert d == _payload(seq)


def test_burst_loss_drops_runs_of_datagrams() -> None:
    """A burst drops everything of its direction for a while: the lost datagrams come in
    runs, no more runs than bursts, and what is forwarded is intact and in order."""
    with _udp() as server, _udp() as client:
        with RelayThread(server.getsockname(), burst=0.02, seed=3) as relay:
            got = _pump(relay, client, server)
        got = _drain(relay, server, got)
    c2s = relay.c2s
    assert c2s.bursts > 0 and c2s.dropped > 0 and c2s.forwarded + c2s.dropped == N
    seqs = [struct.unpack("!I", d[:4])[0] for d in got]
    assert seqs == sorted(seqs) and all(d == _payload(q) for q, d in zip(seqs, got, strict=True))
    lost = sorted(set(range(N)) - set(seqs))
    runs = 1 + sum(1 for a, b in zip(lost, lost[1:], strict=False) if b != a + 1)
    assert runs <= c2s.bursts


def test_reorder_changes_order_but_not_content() -> None:
    with _udp() as server, _udp() as client:
        with RelayThread(server.getsockname(), reorder=0.2, seed=3) as relay:
            got = _pump(relay, client, server)
        got = _drain(relay, server, got)
        c2s = relay.c2s
        assert c2s.dropped == 0
        assert len(got) == N == c2s.forwarded
        assert c2s.reordered > 0.1 * N
        seqs = [struct.unpack("!I", d[:4])[0] for d in got]
        assert seqs != list(range(N))
        assert sorted(seqs) == list(range(N))
        for seq, d in zip(seqs, got, strict=True):
            assert d == _payload(seq)
        # A held datagram is sent right after the next one: displacement is one place.
        assert all(abs(seq - pos) <= 1 for pos, seq in enumerate(seqs))


def test_seed_makes_runs_reproducible() -> None:
    orders = []
    for _ in range(2):
        with _udp() as server, _udp() as client:
            # A long max_hold: no timer fires mid-run, so the outcome depends on the seed only.
            with RelayThread(
                server.getsockname(), loss=0.1, reorder=0.1, seed=42, max_hold=60
            ) as relay:
                got = _pump(relay, client, server)
            got = _drain(relay, server, got)
            orders.append([struct.unpack("!I", d[:4])[0] for d in got])
    assert orders[0] == orders[1]


def test_server_replies_go_back_to_client_with_own_settings() -> None:
    with _udp(timeout=2) as server, _udp(timeout=2) as client:
        with RelayThread(server.getsockname(), c2s_loss=0.0, s2c_loss=1.0) as relay:
            client.sendto(b"ping", relay.address)
            data, addr = server.recvfrom(2048)
            assert data == b"ping"
            assert addr == relay.upstream_address
            server.sendto(b"pong", addr)
            _wait(lambda: relay.s2c.received == 1)
            assert relay.s2c.dropped == 1
            relay.s2c.loss = 0.0
            server.sendto(b"pong2", addr)
            data, addr = client.recvfrom(2048)
            assert data == b"pong2"
            assert addr == relay.address
        assert relay.stats()["s2c"]["forwarded"] == 1


def test_async_api() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(data, addr)  # type: ignore[attr-defined]

        class Client(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                received.put_nowait(data)

        echo_t, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        async with LossyUdpRelay(echo_t.get_extra_info("sockname")) as relay:
            client_t, _ = await loop.create_datagram_endpoint(Client, remote_addr=relay.address)
            for i in range(10):
                client_t.sendto(_payload(i))
            for i in range(10):
                assert await asyncio.wait_for(received.get(), 2) == _payload(i)
            client_t.close()
        echo_t.close()
        assert relay.c2s.forwarded == relay.s2c.forwarded == 10

    asyncio.run(main())


def test_rejects_bad_probability() -> None:
    with pytest.raises(ValueError):
        LossyUdpRelay(("127.0.0.1", 1), loss=1.5)


def test_duplicate_and_corrupt() -> None:
    """``duplicate`` sends a datagram twice; ``corrupt`` flips exactly one bit of it."""
    with _udp() as server, _udp() as client:
        with RelayThread(server.getsockname(), duplicate=0.1, corrupt=0.1, seed=5) as relay:
            got = _pump(relay, client, server)
        got = _drain(relay, server, got)
    c2s = relay.c2s
    assert c2s.dropped == 0
    assert 0.05 * N <= c2s.duplicated <= 0.15 * N, c2s
    assert 0.05 * N <= c2s.corrupted <= 0.15 * N, c2s
    assert len(got) == c2s.forwarded == N + c2s.duplicated
    originals: dict[int, list[int]] = {}
    for i in range(N):
        p = _payload(i)
        originals.setdefault(len(p), []).append(int.from_bytes(p, "big"))
    distances = [
        min((int.from_bytes(d, "big") ^ o).bit_count() for o in originals[len(d)])
        for d in got
    ]
    assert max(distances) == 1  # never more than one bit changed
    # each corrupted datagram arrives once, or twice when it was also duplicated
    assert c2s.corrupted <= distances.count(1) <= 2 * c2s.corrupted
