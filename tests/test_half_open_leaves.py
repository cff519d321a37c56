"""A server connection leaves the half-open set once the client's Handshake packet
validates its address (Endpoint.receive and receive_batch take it out inline), and a
connection still waiting stays in it."""

from __future__ import annotations

import pytest

from quicflow.transport.config import Configuration
from tests.support.memory_pair import _CERT, SERVER_ADDR, MemoryPair


def _pair() -> MemoryPair:
    cert, key = _CERT
    return MemoryPair(server_config=Configuration(
        alpn_protocols=["perf"], certificate_chain=[cert], private_key=key, retry="never"))


@pytest.mark.parametrize("batch", [False, True])
def test_validated_connection_leaves_the_half_open_set(batch: bool) -> None:
    pair = _pair()
    server, client_ep = pair.server, pair.client_ep

    def deliver(datagrams: list[bytes]) -> None:
        for d in datagrams:
            if batch:  # one-segment GRO batches: the long-header per-datagram path
                server.receive_batch(d, len(d), pair.client_addr, pair.now)
            else:
                server.receive(d, pair.client_addr, pair.now)

    deliver(client_ep.datagrams_to_send(pair.client, pair.now))
    assert len(server.admission.half_open) == 1  # Initial only: not validated yet
    sconn = pair.server_conns[0]
    assert not sconn.address_validated
    for _ in range(50):
        for d in server.datagrams_to_send(sconn, pair.now):
            client_ep.receive(d, SERVER_ADDR, pair.now)
        deliver(client_ep.datagrams_to_send(pair.client, pair.now))
        pair.now += 0.001
        if sconn.handshake_complete:
            break
    assert sconn.handshake_complete and sconn.address_validated
    assert len(server.admission.half_open) == 0
    assert server.stats()["half_open"] == 0
