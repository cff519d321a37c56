"""A server issues its spare connection IDs with its first 1-RTT packet after one from
the client.

They reach the client only in NEW_CONNECTION_ID frames of 1-RTT packets, so they are made
when such a packet is built rather than when the handshake completes, and only once the
client has sent a 1-RTT packet (its request, or its ACK of HANDSHAKE_DONE): a server
whose client's first 1-RTT packet is its CONNECTION_CLOSE (a connect-then-close client),
whether it came together with the Finished or after HANDSHAKE_DONE went out, drains
without ever making them."""

from __future__ import annotations

from quicflow.transport.state import DRAINING
from tests.support.memory_pair import SERVER_ADDR, MemoryPair


def test_a_server_closed_with_the_finished_never_makes_its_spare_cids() -> None:
    pair = MemoryPair(seed=7)
    client = pair.client
    pair.run(lambda: client.handshake_complete)
    finished = pair.client_ep.datagrams_to_send(client, pair.now)
    client.close(13, "early", now=pair.now)
    close = pair.client_ep.datagrams_to_send(client, pair.now)
    assert finished and close
    for d in finished + close:  # one batch, as the runner reads them
        pair.server.receive(d, pair.client_addr, pair.now)
    server = pair.server_conns[0]
    assert server.handshake_complete and server.state == DRAINING
    assert server.counters.datagrams_sent == 1  # its Initial/Handshake flight only
    assert len(server.host_cids) == 1
    assert list(pair.server.registry.ours) == [server.host_cids[0].cid]


def test_the_client_gets_the_spare_cids_with_the_first_1rtt_packet() -> None:
    pair = MemoryPair(seed=8)
    client = pair.client
    pair.run(lambda: client.handshake_confirmed and bool(pair.server_conns))
    server = pair.server_conns[0]
    pair.run(lambda: len(client.peer_cids) == 4)
    assert [c.sequence for c in server.host_cids] == [0, 1, 2, 3]
    assert all(c.announced for c in server.host_cids[1:])
    assert not server.host_cids_pending
    # every one routes to the connection
    assert all(pair.server.registry.by_cid(c.cid) is server for c in server.host_cids)


def test_a_server_closed_after_handshake_done_never_makes_its_spare_cids() -> None:
    """The Finished and the close come apart: the server's HANDSHAKE_DONE goes out with
    no NEW_CONNECTION_ID, then the client's close arrives first in 1-RTT."""
    pair = MemoryPair(seed=9)
    client = pair.client
    pair.run(lambda: client.handshake_complete)
    for d in pair.client_ep.datagrams_to_send(client, pair.now):  # the Finished
        pair.server.receive(d, pair.client_addr, pair.now)
    server = pair.server_conns[0]
    assert server.handshake_confirmed
    done = pair.server.datagrams_to_send(server, pair.now)
    assert done  # HANDSHAKE_DONE (and the session ticket)
    assert len(server.host_cids) == 1 and not server.host_cids_pending
    client.close(13, "done", now=pair.now)
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    assert server.state == DRAINING
    assert pair.server.datagrams_to_send(server, pair.now) == []
    assert len(server.host_cids) == 1
    assert list(pair.server.registry.ours) == [server.host_cids[0].cid]


def test_the_clients_first_1rtt_packet_brings_the_spare_cids() -> None:
    """No CONNECTION_CLOSE: the client's first 1-RTT packet (its ACK of HANDSHAKE_DONE)
    makes the server issue its spare CIDs in its next packet."""
    pair = MemoryPair(seed=10)
    client = pair.client
    pair.run(lambda: client.handshake_complete)
    for d in pair.client_ep.datagrams_to_send(client, pair.now):  # the Finished
        pair.server.receive(d, pair.client_addr, pair.now)
    server = pair.server_conns[0]
    for d in pair.server.datagrams_to_send(server, pair.now):
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    assert client.handshake_confirmed and len(client.peer_cids) == 1
    pair.run(lambda: len(client.peer_cids) == 4)
    assert [c.sequence for c in server.host_cids] == [0, 1, 2, 3]
