"""Per-connection sockets on real loopback sockets (issue 6, item 3).

* 64 concurrent connections, each on a socket of its own that the kernel's socket table
  shows bound to the server's port and connected to its client's port; every download
  intact (SHA-256);
* a datagram that lands on the wrong socket (another client's Initial queued by a
  per-connection socket between its bind and its connect) is delivered anyway: the
  server answers it, that client's handshake completes, and the stray is counted;
* a client whose source port changes mid-transfer is moved to a new connected socket
  (the old one closed) and its download completes intact;
* with more connections than the cap, those above it are served on the listener, intact;
* ``quicflow perf server --connection-sockets N --json`` reports ``connected_sockets``.
* ICMP errors a vanished client's port draws on its connection's socket are counted and
  dropped, not kept (nor do they fail the server's connection).
"""

from __future__ import annotations

import asyncio
import json
import select
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.aio.connection import QuicConnection
from quicflow.datapath import connected
from quicflow.datapath.connected import SocketPolicy
from quicflow.endpoint.endpoint import Endpoint

from .support.relay import LossyUdpRelay
from .support.transfer import client_configuration, download, serve_stream, server_configuration

KIB = 1024
EVERY = SocketPolicy(min_bytes=0, min_age=0.0)  # every confirmed connection, up to the cap


def _kernel_connected_peers(server_port: int) -> set[int]:
    """Remote ports of the IPv4 UDP sockets bound to ``server_port`` and connected
    (state 01), read from the kernel's socket table (/proc/net/udp)."""
    peers = set()
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, state = parts[1], parts[2], parts[3]
            if int(local.split(":")[1], 16) == server_port and state == "01":
                peers.add(int(remote.split(":")[1], 16))
    return peers


async def _serve(cap: int, policy: SocketPolicy = EVERY) -> quicflow.QuicServer:
    return await quicflow.serve(
        serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
        connection_sockets=cap, socket_policy=policy,
    )  # fmt: skip


async def _connect_many(
    stack: AsyncExitStack, port: int, n: int
) -> list[QuicConnection]:
    return [
        await stack.enter_async_context(
            quicflow.connect("127.0.0.1", port, configuration=client_configuration())
        )
        for _ in range(n)
    ]


async def _download_all(clients: list[QuicConnection], size: int) -> list[Any]:
    return await asyncio.gather(*(download(c, size, seed=i) for i, c in enumerate(clients)))


async def _close_all(clients: list[QuicConnection]) -> None:
    """Close every client at once (leaving an exit stack closes them one by one, each
    waiting out its closing period)."""
    for c in clients:
        c.close()
    await asyncio.wait_for(
        asyncio.gather(*(c.wait_closed() for c in clients), return_exceptions=True), 5
    )


async def _settle(server: quicflow.QuicServer, until: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not until() and loop.time() < deadline:
        await asyncio.sleep(0.01)


def test_64_connections_each_on_its_own_connected_socket() -> None:
    async def main() -> None:
        server = await _serve(cap=64)
        port = server.address[1]
        try:
            async with AsyncExitStack() as stack:
                clients = await _connect_many(stack, port, 64)
                results = await asyncio.wait_for(_download_all(clients, 256 * KIB), 60)
                assert all(r.ok for r in results)
                client_ports = {c.runner.transport.local_address[1] for c in clients}
                assert len(client_ports) == 64
                # every server connection holds a socket connected to its client's port
                served = {
                    server.runner.connection_socket(f.conn).getpeername()[1]  # type: ignore[union-attr]
                    for f in server.connections
                }
                assert served == client_ports
                assert _kernel_connected_peers(port) == client_ports
                stats = server.stats()
                assert stats["sockets"]["connected_sockets"] == 64
                assert stats["endpoint"]["connected_sockets"] == 64
                # the downloads went out through the connected sockets
                sent_by_own = sum(
                    t.counters.bytes_sent for _, t in server.runner.sockets.items()  # type: ignore[union-attr]
                )
                assert sent_by_own >= 64 * 256 * KIB
                await _close_all(clients)
            await _settle(server, lambda: not server.connections)
            # closed with their connections
            assert server.stats()["sockets"]["connected_sockets_now"] == 0
            assert _kernel_connected_peers(port) == set()
        finally:
            server.close()

    asyncio.run(main())


def test_over_the_cap_connections_stay_on_the_listener() -> None:
    async def main() -> None:
        server = await _serve(cap=8)
        port = server.address[1]
        try:
            async with AsyncExitStack() as stack:
                clients = await _connect_many(stack, port, 20)
                results = await asyncio.wait_for(_download_all(clients, 256 * KIB), 60)
                assert all(r.ok for r in results)
                own = [f for f in server.connections if server.runner.connection_socket(f.conn)]
                assert len(own) == 8
                assert len(_kernel_connected_peers(port)) == 8
                stats = server.stats()["sockets"]
                assert stats["connected_sockets"] == 8
                assert stats["connected_sockets_cap_reached"] > 0
                # the 12 others were served on the listener
                listener = server.runner.transport.counters
                assert listener.bytes_sent >= 12 * 256 * KIB
                await _close_all(clients)
        finally:
            server.close()

    asyncio.run(main())


class _DuringHandshake(SocketPolicy):
    """A policy of its own class: a socket for every server connection at its first send,
    before its handshake is confirmed (the stock policy waits for confirmation, which lets
    the runner skip the policy for unconfirmed connections)."""

    def qualifies(self, conn: Any, now: float, moved: bool) -> bool:
        return not conn.is_client and not conn.terminated


def test_a_policy_of_its_own_class_is_asked_before_confirmation() -> None:
    async def main() -> None:
        server = await _serve(cap=8, policy=_DuringHandshake())
        try:
            async with AsyncExitStack() as stack:
                clients = await _connect_many(stack, server.address[1], 2)
                results = await asyncio.wait_for(_download_all(clients, 64 * KIB), 30)
                assert all(r.ok for r in results)
                # the first flight (before confirmation) already left through the
                # connection's own socket, not through the listener
                listener = server.runner.transport.counters
                assert listener.datagrams_sent == 0
                assert server.stats()["sockets"]["connected_sockets"] == 2
                await _close_all(clients)
        finally:
            server.close()

    asyncio.run(main())


def test_default_policy_keeps_short_connections_on_the_listener() -> None:
    async def main() -> None:
        server = await _serve(cap=8, policy=SocketPolicy(min_bytes=1 << 20, min_age=60.0))
        try:
            async with AsyncExitStack() as stack:
                small, big = await _connect_many(stack, server.address[1], 2)
                assert (await download(small, 10 * KIB, seed=1)).ok
                assert (await download(big, 3 << 20, seed=2)).ok
                await asyncio.sleep(0.05)
                by_port = {
                    f.conn.peer_address[1]: server.runner.connection_socket(f.conn)
                    for f in server.connections
                }
                assert by_port[small.runner.transport.local_address[1]] is None
                assert by_port[big.runner.transport.local_address[1]] is not None
        finally:
            server.close()

    asyncio.run(main())


def test_client_changing_source_port_moves_to_a_new_socket() -> None:
    async def main() -> None:
        server = await _serve(cap=4)
        port = server.address[1]
        try:
            async with LossyUdpRelay(("127.0.0.1", port)) as relay:
                async with quicflow.connect(
                    "127.0.0.1", relay.address[1], configuration=client_configuration()
                ) as conn:
                    task = asyncio.create_task(download(conn, 16 << 20, seed=7, upload=1 << 20))
                    old_port = relay.upstream_address[1]
                    await _settle(server, lambda: _kernel_connected_peers(port) == {old_port})
                    assert _kernel_connected_peers(port) == {old_port}
                    assert not task.done()  # mid-transfer
                    new_port = (await relay.rebind())[1]
                    result = await asyncio.wait_for(task, 60)
                    assert result.ok
                    # an exchange wholly after the rebinding: had the server sent (and
                    # seen acknowledged) the whole download before it, the client would
                    # send nothing from the new port until its close (the qh3 rebinding
                    # tests' race, tests/test_client_migration_qh3.py)
                    again = await asyncio.wait_for(download(conn, 200_000, seed=8), 60)
                    assert again.ok
                    (face,) = server.connections
                    sock = server.runner.connection_socket(face.conn)
                    assert sock is not None and sock.getpeername()[1] == new_port
                    assert _kernel_connected_peers(port) == {new_port}
                    stats = server.stats()["sockets"]
                    assert stats["connected_socket_moves"] == 1
                    assert stats["connected_sockets_opened"] == 2
                    assert stats["connected_sockets_closed"] == 1
        finally:
            server.close()

    asyncio.run(main())


def test_datagram_on_the_wrong_socket_is_delivered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between bind and connect, a per-connection socket is one more unconnected member of
    the port's reuseport group: the kernel may queue another client's datagram there.
    Here that happens on purpose (a client port whose flow hashes to the new socket is
    searched for); the Initial must still start a connection that completes."""

    async def main() -> None:
        server = await _serve(cap=4)
        port = server.address[1]
        loop = asyncio.get_running_loop()
        landed: list[socket.socket] = []
        real_connect = connected.connect_socket

        def connect_after_a_stray(sock: socket.socket, peer: tuple[Any, ...]) -> None:
            if not landed:
                landed.append(_send_initial_to(sock, ("127.0.0.1", port), client_initial))
            real_connect(sock, peer)

        client_endpoint = Endpoint(client_configuration(), is_server=False)
        client_conn = client_endpoint.connect(("127.0.0.1", port), loop.time())
        client_initial = b"".join(client_endpoint.datagrams_to_send(client_conn, loop.time()))
        monkeypatch.setattr(connected, "connect_socket", connect_after_a_stray)
        try:
            async with AsyncExitStack() as stack:
                (first,) = await _connect_many(stack, port, 1)
                result = await asyncio.wait_for(download(first, 64 * KIB, seed=3), 30)
                assert result.ok
                assert landed, "no per-connection socket was opened"
                stray_sock = landed[0]
                # the stray was read from the connected socket and handed to the endpoint
                await _settle(server, lambda: server.stats()["sockets"]["strays_redelivered"])
                stats = server.stats()
                assert stats["sockets"]["strays_redelivered"] == 1
                assert stats["endpoint"]["connections_accepted"] == 2
                # ...and answered: the in-memory client completes its handshake over it
                stray_sock.setblocking(False)
                for _ in range(500):
                    if client_conn.handshake_confirmed:
                        break
                    await asyncio.sleep(0.01)
                    now = loop.time()
                    while True:
                        try:
                            data, addr = stray_sock.recvfrom(65536)
                        except BlockingIOError:
                            break
                        client_endpoint.receive(data, addr, now)
                    for d in client_endpoint.datagrams_to_send(client_conn, now):
                        stray_sock.sendto(d, ("127.0.0.1", port))
                assert client_conn.handshake_confirmed
                assert result.ok
            stray_sock.close()
        finally:
            server.close()

    asyncio.run(main())


def _send_initial_to(
    target: socket.socket, server: tuple[str, int], initial: bytes
) -> socket.socket:
    """Find a client socket whose flow the kernel hands to ``target`` (bound, not yet
    connected), then send ``initial`` from it; returns that client socket."""
    for _ in range(256):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        probe.sendto(b"\x00probe", server)  # the listener drops it as malformed
        ready, _, _ = select.select([target], [], [], 0.05)
        if ready:
            target.recv(2048)  # the probe: this 4-tuple hashes to ``target``
            probe.sendto(initial, server)
            select.select([target], [], [], 1.0)  # queued there, read after connect
            return probe
        probe.close()
    raise AssertionError("no client port hashed to the new socket")


def test_perf_server_connection_sockets_option_and_json() -> None:
    """``quicflow perf server --connection-sockets 2 --json``: three heavy connections,
    two get a socket (the cap), all verified; the JSON says so."""
    quicflow_bin = str(Path(sys.executable).parent / "quicflow")
    server = subprocess.Popen(
        [quicflow_bin, "perf", "server", "--host", "127.0.0.1", "--port", "0",
         "--connection-sockets", "2", "--json"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        port = cafile = None
        while port is None:
            line = server.stderr.readline()
            assert line, "perf server exited early"
            if line.startswith("self-signed certificate written to "):
                cafile = line.split()[4]
            if line.startswith("listening on "):
                port = line.split()[2].rsplit(":", 1)[1]
        assert cafile is not None
        client = subprocess.run(
            [quicflow_bin, "perf", "client", "--host", "127.0.0.1", "--port", port,
             "--cafile", cafile, "--download", "6M", "--connections", "3", "--verify"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert client.returncode == 0, client.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=20)
    assert server.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["connected_sockets"] == 2
    assert result["sockets"]["cap"] == 2
    assert result["endpoint"]["connected_sockets"] == 2
    assert result["bytes_sent"] >= 6 << 20


def test_detach_and_attach_a_connection_socket() -> None:
    """The takeover interface: a connection's socket is handed over open (detach) and
    served again through ``attach_connection_socket`` (here in the same process, with
    nothing read in between); a socket connected elsewhere is refused."""

    async def main() -> None:
        server = await _serve(cap=4)
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_configuration()
            ) as conn:
                task = asyncio.create_task(download(conn, 8 << 20, seed=11))
                await _settle(server, lambda: bool(server.runner.sockets))
                (face,) = server.connections
                runner = server.runner
                sock = runner.detach_connection_socket(face.conn)
                assert sock is not None and runner.connection_socket(face.conn) is None
                fd = sock.fileno()
                runner.attach_connection_socket(face.conn, sock)
                again = runner.connection_socket(face.conn)
                assert again is not None and again.fileno() == fd
                other = connected.bind_connection_socket(runner.transport.socket)
                connected.connect_socket(other, ("127.0.0.1", 9))
                with pytest.raises(ValueError, match="connected to"):
                    runner.attach_connection_socket(face.conn, other)
                other.close()
                assert (await asyncio.wait_for(task, 60)).ok
                stats = server.stats()["sockets"]
                assert stats["connected_sockets_attached"] == 1
                assert stats["connected_sockets_opened"] == 1
        finally:
            server.close()

    asyncio.run(main())


def test_dual_stack_listener_gives_ipv4_and_ipv6_clients_sockets() -> None:
    """On a "::" listener, an IPv4 client's socket is connected to its IPv4-mapped
    address and an IPv6 client's to its IPv6 address, both on the listener's port."""

    async def main() -> None:
        server = await quicflow.serve(
            serve_stream, "::", 0, configuration=server_configuration(),
            connection_sockets=4, socket_policy=EVERY,
        )  # fmt: skip
        port = server.address[1]
        try:
            for host, peer_host in (("127.0.0.1", "::ffff:127.0.0.1"), ("::1", "::1")):
                async with quicflow.connect(
                    host, port, configuration=client_configuration()
                ) as conn:
                    assert (await asyncio.wait_for(download(conn, 1 << 20), 30)).ok
                    client_port = conn.runner.transport.local_address[1]
                    (face,) = [
                        f for f in server.connections if f.conn.peer_address[1] == client_port
                    ]
                    sock = server.runner.connection_socket(face.conn)
                    assert sock is not None
                    assert sock.getsockname()[:2] == (peer_host, port)
                    assert sock.getpeername()[:2] == (peer_host, client_port)
            assert server.stats()["sockets"]["connected_sockets_opened"] == 2
        finally:
            server.close()

    asyncio.run(main())


async def _on_one_client_socket(
    peer: tuple[str, int], n: int
) -> tuple[Any, list[QuicConnection]]:
    """``n`` connections to ``peer`` from one client socket (one endpoint and runner, one
    4-tuple), each connected; the runner is the caller's to close."""
    from quicflow.aio.runner import EndpointRunner
    from quicflow.datapath.socket import UdpTransport

    loop = asyncio.get_running_loop()
    transport = UdpTransport.open("127.0.0.1", 0, connect_to=peer)
    endpoint = Endpoint(client_configuration(), is_server=False)
    runner = EndpointRunner(transport, endpoint, connected_peer=peer)
    faces = []
    try:
        for _ in range(n):
            conn = endpoint.connect(peer, loop.time())
            face = QuicConnection(runner, conn)
            runner.faces[id(conn)] = face
            runner.schedule_flush(conn)
            faces.append(face)
        for face in faces:
            await asyncio.wait_for(face.wait_connected(), 10)
    except BaseException:
        runner.close()
        raise
    return runner, faces


def test_connections_sharing_a_client_socket_share_one_connected_socket() -> None:
    """Three connections from one client socket (one 4-tuple): one connected socket, not
    three on the same 4-tuple; every download intact."""

    async def main() -> None:
        server = await _serve(cap=8)
        peer = ("127.0.0.1", server.address[1])
        runner, faces = await _on_one_client_socket(peer, 3)
        transport = runner.transport
        try:
            results = await asyncio.wait_for(_download_all(faces, 1 << 20), 60)
            assert all(r.ok for r in results)
            assert len(server.connections) == 3
            held = [f for f in server.connections if server.runner.connection_socket(f.conn)]
            assert len(held) == 1
            assert _kernel_connected_peers(peer[1]) == {transport.local_address[1]}
            await _close_all(faces)
        finally:
            runner.close()
            server.close()

    asyncio.run(main())


def test_icmp_errors_of_a_vanished_client_do_not_pile_up_on_its_socket() -> None:
    # The client's port closes mid-transfer: what the server sends through the
    # connection's socket draws ICMP port unreachable, read from that socket's error
    # queue and counted. Only a client fails on those (fast failure, before any answer);
    # a server's per-connection socket drops them instead of keeping them until the
    # connection times out.
    async def main() -> None:
        server = await _serve(cap=4)
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_configuration()
            ) as conn:
                task = asyncio.create_task(download(conn, 64 << 20, seed=3))
                await _settle(server, lambda: len(server.runner.sockets or ()) == 1)
                ((_, transport),) = list(server.runner.sockets.items())  # type: ignore[union-attr]
                conn.runner.close()  # the client's socket is gone; nothing said
                task.cancel()
                await _settle(server, lambda: transport.counters.unreachable >= 3)
                assert transport.counters.unreachable >= 3
                assert len(transport.unreachable_events) < 3
                assert server.connections  # the server's connection is not failed by ICMP
        finally:
            server.close()

    asyncio.run(main())


def test_what_a_closed_socket_still_held_is_not_lost() -> None:
    """Two connections on one client socket share one connected socket on the server.
    Datagrams of the second that wait unread in it when the first connection's close
    releases the socket are read and processed, not dropped with it: the second's
    download then completes intact without a packet of its own declared lost."""

    async def main() -> None:
        server = await _serve(cap=8)
        peer = ("127.0.0.1", server.address[1])
        runner, faces = await _on_one_client_socket(peer, 2)
        try:
            assert all(r.ok for r in await asyncio.wait_for(_download_all(faces, 64 * KIB), 30))
            sockets = server.runner.sockets
            assert sockets is not None
            (holder,) = [f for f in server.connections if sockets.socket_of(f.conn)]
            held = sockets.socket_of(holder.conn)
            assert held is not None
            (other,) = [f for f in faces if f.conn.original_dcid != holder.conn.original_dcid]
            # the server stops reading the shared socket; the other connection's request
            # (and whatever it sends meanwhile) waits in it
            server.runner.loop.remove_reader(held.fileno())
            lost_before = other.conn.counters.packets_lost
            task = asyncio.create_task(download(other, 256 * KIB, seed=9))
            for _ in range(200):
                if select.select([held], [], [], 0)[0]:
                    break
                await asyncio.sleep(0.005)
            assert select.select([held], [], [], 0)[0], "nothing queued in the socket"
            await asyncio.sleep(0.05)
            holder.close()  # the server's close releases the socket
            result = await asyncio.wait_for(task, 30)
            assert result.ok
            assert other.conn.counters.packets_lost == lost_before
            assert sockets.counters.leftovers_redelivered >= 1
            assert server.stats()["sockets"]["leftovers_redelivered"] >= 1
            await _close_all(faces)
        finally:
            runner.close()
            server.close()

    asyncio.run(main())


def test_what_is_read_from_a_closing_socket_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer may keep a connected socket's queue full: closing it reads at most
    ``LEFTOVER_BUFFERS`` buffers (the rest go with the socket), each handed on intact with
    its source, and counts what it handed on; a closing set (``close_all``) reads none."""
    from types import SimpleNamespace

    from quicflow.datapath.socket import UdpTransport

    monkeypatch.setattr(connected, "LEFTOVER_BUFFERS", 16)
    listener = UdpTransport.open("127.0.0.1", 0, reuse_port=True)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    got: list[tuple[list[Any], Any]] = []
    sockets = connected.ConnectedSockets(
        listener, 4, on_leftovers=lambda entries, addr: got.append((entries, addr)))
    try:
        address = peer.getsockname()
        conn = SimpleNamespace(peer_address=address)
        for n in range(2):
            sock = connected.bind_connection_socket(listener.socket)
            connected.connect_socket(sock, address)
            sockets.attach(conn, sock)  # type: ignore[arg-type]
            for i in range(40):
                peer.sendto(bytes([n, i]) * 50, listener.local_address)
            assert select.select([sock], [], [], 2.0)[0]
            if n == 0:
                sockets.release(conn)
            else:
                sockets.close_all()
        ((entries, addr),) = got
        assert addr == address
        assert [e[0] for e in entries] == [bytes([0, i]) * 50 for i in range(16)]
        assert {e[2] for e in entries} == {address}
        assert sockets.counters.leftovers_redelivered == 16
    finally:
        listener.close()
        peer.close()
