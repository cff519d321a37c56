"""A server issues its spare connection IDs with its first 1-RTT packet.

They reach the client only in NEW_CONNECTION_ID frames of 1-RTT packets, so they are made
when the first one is built rather than when the handshake completes: a server whose
client's CONNECTION_CLOSE came together with its Finished (a connect-then-close client
over a socket) drains before sending anything in 1-RTT and never makes them."""

from __future__ import annotations

from quicflow.transport.state import DRAINING
from tests.support.memory_pair import MemoryPair


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
