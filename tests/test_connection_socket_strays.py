"""Where a worker's stray datagrams come from, and the sockets that make them.

What this kernel (measured on 6.18) does with a reuseport group that holds connected
per-connection sockets, on plain UDP sockets:

* while any member is connected, a member bound after the listeners and not yet
  connected (a per-connection socket between its ``bind`` and its ``connect``) takes
  every datagram that no connected member's 4-tuple matches: the steering program's pick
  of a listener is not used, whatever the datagram names; with no connected member the
  program steers again. These are the strays a worker's per-connection socket reads and
  hands through its listener's ``claim`` (the other workers' go to their inbox: counted
  ``misrouted_datagrams``);
* a connected member takes every datagram of its 4-tuple. So a server connection that is
  closing or draining gives its socket up at once (not when it is forgotten): a client
  that reuses the port then reaches the listener and its CID decides.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections import Counter

import pytest

import quicflow
from quicflow.datapath.connected import SocketPolicy
from quicflow.datapath.reuseport import ReuseportGroup
from quicflow.transport.state import DRAINING
from tests.support.transfer import (
    client_configuration,
    download,
    serve_stream,
    server_configuration,
)

WORKER_OFFSET = 2  # CID offset of the worker byte: first octet, host byte, worker byte
EVERY = SocketPolicy(min_bytes=0, min_age=0.0)


def _short_header(worker: int) -> bytes:
    return bytes([0x40, 7, 0, worker]) + b"\x00" * 5 + b"payload" * 4


def _member() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setblocking(False)
    return s


def _where(group: ReuseportGroup, unconnected: socket.socket, sender: socket.socket,
           rounds: int) -> Counter[str]:
    """Send ``rounds`` short headers naming worker 0 and 1 in turn: which socket read
    each (L0, L1: the listeners; U: the unconnected member)."""
    socks = [*group.sockets, unconnected]
    names = ["L0", "L1", "U"]
    got: Counter[str] = Counter()
    for i in range(rounds):
        sender.sendto(_short_header(i % 2), group.address)
        ready, _, _ = select.select(socks, [], [], 2.0)
        assert ready, "a datagram did not arrive"
        for s in ready:
            data = s.recv(2048)
            got[names[socks.index(s)] + ("" if data[3] == socks.index(s) else "!")] += 1
    return got


def test_an_unconnected_member_takes_what_no_connected_member_matches() -> None:
    group = ReuseportGroup.bind("127.0.0.1", 0, 2)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other_client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    connected = _member()
    first, later = _member(), _member()
    try:
        for s in group.sockets:
            s.setblocking(False)
        group.steer(WORKER_OFFSET, cid_length=8)
        sender.bind(("127.0.0.1", 0))
        other_client.bind(("127.0.0.1", 0))
        # Bound while no member is connected: the program steers past it.
        first.bind(group.address)
        assert _where(group, first, sender, 20) == {"L0": 10, "L1": 10}
        # Bound after a member was connected (another client's socket, SO_REUSEPORT on):
        # it takes every datagram, whatever worker the program would pick.
        connected.bind(group.address)
        connected.connect(other_client.getsockname())
        later.bind(group.address)
        assert _where(group, later, sender, 20) == {"U!": 20}
        # Once it is connected too, what no 4-tuple matches is steered again.
        later.connect(other_client.getsockname())
        assert _where(group, later, sender, 20) == {"L0": 10, "L1": 10}
    finally:
        for s in (sender, other_client, connected, first, later):
            s.close()
        group.close()


def _connected_peers(server_port: int) -> set[int]:
    """Remote ports of the connected IPv4 UDP sockets bound to ``server_port``."""
    peers = set()
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == server_port and parts[3] == "01":
                peers.add(int(parts[2].split(":")[1], 16))
    return peers


def test_a_draining_connection_gives_its_socket_up_at_once() -> None:
    """The client closes: the server's connection drains for three PTOs (long here: the
    client asks for a 1 s max_ack_delay) and its connected socket is closed at its
    start, so a client reusing the port would reach the listener."""

    async def main() -> None:
        server = await quicflow.serve(
            serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
            connection_sockets=4, socket_policy=EVERY,
        )  # fmt: skip
        port = server.address[1]
        loop = asyncio.get_running_loop()
        try:
            async with quicflow.connect(
                "127.0.0.1", port, configuration=client_configuration(max_ack_delay=1.0)
            ) as client:
                assert (await download(client, 64 * 1024, seed=1)).ok
                client_port = client.runner.transport.local_address[1]
                assert _connected_peers(port) == {client_port}
                (face,) = server.connections
                conn = face.conn
                client.close()  # (leaving the block would wait out its closing period)
                deadline = loop.time() + 5
                while conn.state < DRAINING and loop.time() < deadline:
                    await asyncio.sleep(0.002)
                assert conn.state == DRAINING and not conn.terminated  # still draining
                assert server.runner.connection_socket(conn) is None
                assert _connected_peers(port) == set()
                assert server.stats()["sockets"]["connected_sockets_now"] == 0
        finally:
            server.close()

    asyncio.run(main())


def test_a_new_connection_socket_leaves_the_steering_to_the_program() -> None:
    """Per-connection sockets made as the server makes them: with two of them connected,
    a third, between its bind and its connect, gets none of the datagrams the program
    steers to the listeners (without SO_REUSEPORT turned off on the connected ones it
    took all of them: the test above)."""
    from quicflow.datapath.connected import bind_connection_socket, connect_socket

    group = ReuseportGroup.bind("127.0.0.1", 0, 2)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    made: list[socket.socket] = []
    try:
        for s in group.sockets:
            s.setblocking(False)
        group.steer(WORKER_OFFSET, cid_length=8)
        for s in (sender, *clients):
            s.bind(("127.0.0.1", 0))
        for c in clients[:2]:
            made.append(bind_connection_socket(group.sockets[0]))
            connect_socket(made[-1], c.getsockname())
        new = bind_connection_socket(group.sockets[0])
        made.append(new)
        new.setblocking(False)
        assert _where(group, new, sender, 20) == {"L0": 10, "L1": 10}
        connect_socket(new, clients[2].getsockname())
        # each connected socket still takes its own 4-tuple
        for c, s in zip(clients, made, strict=True):
            c.sendto(b"own", group.address)
            assert select.select([s], [], [], 2.0)[0] and s.recv(16) == b"own"
        # and nobody else can take the port: a socket asking for SO_REUSEADDR alone
        intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            with pytest.raises(OSError):
                intruder.bind(group.address)
        finally:
            intruder.close()
    finally:
        for s in (sender, *clients, *made):
            s.close()
        group.close()
