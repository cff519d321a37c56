"""A connection moved to another server by CID (issue 7, item 4b), in memory.

Two server endpoints with host IDs 1 and 2 behind a stand-in for the QUIC-LB balancer
(it routes each datagram by the host byte of its DCID, like docs/nftables-quic-lb.nft).
Server 1 gives the connection CIDs that server 2 issued (``Connection.hand_over_cids``),
captures it and forwards what still reaches it (``MovedCids.forward``); server 2
restores it and announces the CIDs with a Retire Prior To that retires server 1's. The
client switches, retires the old CIDs (not replaced), and data flows both ways on the
same stream with no new handshake.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from quicflow.crypto.stateless_reset import stateless_reset_token
from quicflow.endpoint.endpoint import Endpoint, default_server_generator
from quicflow.endpoint.moved import MovedCids
from quicflow.endpoint.quiclb import ServerIdLayout
from quicflow.migration.transfer import (
    Session,
    client_context,
    open_sender,
    serve_receiver,
    server_context,
)
from quicflow.tls.certs import generate_self_signed
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.snapshot import restore_connection, snapshot_connection
from tests.support.memory_pair import CLIENT_ADDR, MemoryPair
from tests.test_migrate_hosts import _pki

_CERT = generate_self_signed(["localhost"])


def server(host_id: int) -> Endpoint:
    cert, key = _CERT
    config = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key)
    return Endpoint(config, is_server=True,
                    cid_generator=default_server_generator(8, ServerIdLayout(host_id=host_id)))


class Balancer:
    """What MemoryPair needs of a server endpoint, over two hosts routed by DCID."""

    def __init__(self, pair: MemoryPair, hosts: dict[int, Endpoint]) -> None:
        self.pair, self.hosts = pair, hosts

    def receive(self, data: bytes, address: Any, now: float, ecn: int = 0) -> None:
        host = self.hosts[data[2]] if not data[0] & 0x80 else self.hosts[1]
        host.receive(data, address, now, ecn)
        for forwarded, client, target in host.pop_forwarded():
            target(forwarded, client)

    def pop_stateless(self) -> list[tuple[bytes, Any]]:
        return [x for h in self.hosts.values() for x in h.pop_stateless()]

    @property
    def all_connections(self) -> list[Connection]:
        return [c for h in self.hosts.values() for c in h.all_connections]

    def datagrams_to_send(self, conn: Connection, now: float) -> list[bytes]:
        host = next(h for h in self.hosts.values() if conn in h.registry)
        return host.datagrams_to_send(conn, now)


def test_moved_by_cid_the_client_switches_to_the_new_servers_cids() -> None:
    a, b = server(1), server(2)
    pair = MemoryPair()
    pair.server = a
    client = pair.client
    pair.run(lambda: client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    sid = client.open_stream()
    client.send_stream_data(sid, b"before" * 1000)
    old = pair.server_conns[0]
    before = bytearray()
    pair.run(lambda: bool(before.extend(old.read_stream(sid)) if sid in old.streams else 0)
             or len(before) == 6000)
    old.pop_events()  # (the application's face would have taken them)
    old_cids = old.host_cid_list()
    assert {c[1] for c in old_cids} == {1} and len(old_cids) >= 2

    # B issues CIDs; A hands them to the connection, captures it and forwards from now on
    issued = [b.issue_cid() for _ in old_cids]
    first = old.hand_over_cids(issued)
    assert first == len(old_cids) and old.host_retire_prior_to == first
    blob = snapshot_connection(old, pair.now)
    a.forget(old)
    assert a.moved.holds(old_cids[0], pair.now)
    a.moved.forward(old_cids, lambda d, addr: b.receive_forwarded(d, addr, pair.now),
                    pair.now + 10)
    conn, _ = restore_connection(blob, engine=b.engine, now=pair.now,
                                 configuration=b.configuration)
    b.adopt(conn)
    pair.server = Balancer(pair, {1: a, 2: b})  # type: ignore[assignment]

    # the client still sends with A's CIDs until it hears from B: A forwards those
    client.send_stream_data(sid, b"after" * 20000, end_stream=True)
    received = bytearray()
    pair.run(lambda: bool(received.extend(conn.read_stream(sid))) or conn.stream_at_eof(sid))
    assert received.endswith(b"after" * 20000)
    assert not client.terminated and not conn.terminated
    assert client.peer_cid[1] == 2, "the client switched to B's CIDs"
    assert {e.cid[1] for e in client.peer_cids} == {2}
    # the reset tokens the client holds for them are B's own (B can honour them)
    reset_key = b.configuration.reset_key
    assert reset_key is not None
    assert all(e.reset_token == stateless_reset_token(reset_key, e.cid)
               for e in client.peer_cids)
    assert a.counters.forwarded_moved > 0
    assert b.counters.forwarded_received == a.counters.forwarded_moved
    assert a.counters.dropped_moved == 0 and a.counters.connections_accepted == 1
    assert b.counters.connections_accepted == 0  # no new handshake
    # A's CIDs were retired by the client and not replaced: only B's are in use
    pair.run(lambda: all(c[1] == 2 for c in conn.host_cid_list()))
    assert sorted(conn.host_cid_list()) == sorted(c for c, _ in issued)
    assert conn.next_host_cid_seq == first + len(issued)
    assert all(c not in b.registry.ours for c in old_cids)
    # and B answers on the same stream
    conn.send_stream_data(sid, b"reply" * 5000, end_stream=True)
    got = bytearray()
    pair.run(lambda: bool(got.extend(client.read_stream(sid))) or client.stream_at_eof(sid))
    got += client.read_stream(sid)
    assert bytes(got) == b"reply" * 5000


def test_hand_over_cids_respects_the_clients_limit() -> None:
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    conn = pair.server_conns[0]
    limit = conn.peer_params.active_connection_id_limit if conn.peer_params else 2
    other = server(2)
    with pytest.raises(ValueError):
        conn.hand_over_cids([other.issue_cid() for _ in range(limit + 1)])
    with pytest.raises(ValueError):
        conn.hand_over_cids([])
    with pytest.raises(ValueError):
        conn.hand_over_cids([(b"short", bytes(16))])


def test_moved_cids_forward_for_a_bounded_time_then_drop() -> None:
    moved = MovedCids()
    got: list[bytes] = []
    moved.record([b"c1", b"c2"], now=0.0, lifetime=30.0)
    moved.forward([b"c1", b"unknown"], lambda d, a: got.append(d), until=5.0)
    assert moved.target(b"c1", 1.0) is not None
    assert moved.target(b"c2", 1.0) is None  # recorded, not forwarded: dropped
    assert moved.target(b"unknown", 1.0) is None  # never recorded: not forwarded
    assert moved.target(b"c1", 5.0) is None  # the forwarding time is over
    assert moved.holds(b"c1", 6.0)  # still dropped (never reset) until its lifetime ends
    assert not moved.holds(b"c1", 31.0)


def test_forwarded_datagrams_only_for_the_connections_moved_by_that_sender() -> None:
    """A receiver delivers forwarded datagrams only for the CIDs it was given (those of
    the connections the sender moved to it); others are dropped and counted."""
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    ep = pair.server
    cid = pair.server_conns[0].host_cid_list()[0]
    datagram = b"\x40" + cid + bytes(40)
    before = ep.counters.dropped_unknown_cid
    assert ep.receive_forwarded(datagram, CLIENT_ADDR, pair.now, allowed={b"x" * 8}) is None
    assert ep.counters.dropped_unknown_cid == before + 1
    # allowed: delivered to its connection (this one fails to open, as forged bytes do)
    assert ep.receive_forwarded(datagram, CLIENT_ADDR, pair.now, allowed={cid}) is (
        pair.server_conns[0])
    assert ep.counters.forwarded_received == 2


def test_transfer_channel_forwards_between_snapshots_and_after_the_trailer(
        tmp_path: Path) -> None:
    """Datagrams forwarded while the snapshots travel (marked frames), right after the
    trailer (before the acknowledgment arrives) and after it all reach the receiver, in
    order, with their client addresses (IPv4 and IPv6)."""
    pki = _pki(tmp_path)

    async def run() -> tuple[list[Any], list[bytes], list[bool]]:
        got: list[Any] = []
        blobs: list[bytes] = []
        done = asyncio.Event()

        async def handler(session: Session) -> None:
            session.on_forwarded = lambda d, a: got.append(("between", d, a))
            async for blob in session.snapshots():
                blobs.append(blob)
            await session.acknowledge({"restored": len(blobs)}, keep_open=True)
            async for d, a in session.forwarded():
                got.append(("after", d, a))
            done.set()

        receiver = await serve_receiver(
            "127.0.0.1", 0, server_context(pki["b_cert"], pki["b_key"], pki["ca"]), handler)
        host, port = receiver.address[0], receiver.address[1]
        sender = await open_sender(host, port, client_context(pki["a_cert"], pki["a_key"],
                                                               pki["ca"]), "localhost")
        await sender.header({"format": "test"})
        sender.queue_snapshot(b"snapshot-1")
        taken = [sender.forward(b"d1", ("10.0.0.1", 1000))]
        await sender.snapshot(b"snapshot-2")
        taken.append(sender.forward(b"d2", ("::1", 2000, 0, 0)))
        finish = asyncio.get_running_loop().create_task(sender.finish({}, keep_open=True))
        await asyncio.sleep(0)  # the trailer is written; the acknowledgment not yet read
        taken.append(sender.forward(b"d3", ("10.0.0.1", 1000)))
        assert (await finish) == {"restored": 2}
        taken.append(sender.forward(b"d4", ("10.0.0.2", 3000)))
        sender.close()
        taken.append(sender.forward(b"d5", ("10.0.0.2", 3000)))  # closed: refused
        await asyncio.wait_for(done.wait(), 10)
        receiver.close()
        return got, blobs, taken

    got, blobs, taken = asyncio.run(run())
    assert blobs == [b"snapshot-1", b"snapshot-2"]
    assert got == [("between", b"d1", ("10.0.0.1", 1000)),
                   ("between", b"d2", ("::1", 2000, 0, 0)),
                   ("after", b"d3", ("10.0.0.1", 1000)),
                   ("after", b"d4", ("10.0.0.2", 3000))]
    assert taken == [True, True, True, True, False]
