"""A client takes packets only from the server address it talks to (RFC 9000 §9: "If a
client receives packets from an unknown server address, the client MUST discard these
packets"), or from the preferred address it is probing.

Before, a valid server packet (captured and sent again from elsewhere) was processed
from any address, and as the newest packet it moved the client's path there: the client
then sent everything to the attacker's address. A connected client socket filters this
in the kernel; an unconnected or shared one does not. On two sans-I/O endpoints, through
the single-datagram path and a GRO batch's run.
"""

from __future__ import annotations

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection

from .support.forge import forge, raw
from .support.memory_pair import SERVER_ADDR, MemoryPair, confirmed

ELSEWHERE = ("198.51.100.7", 4433)
MAX_DATA = 0x10


def _confirmed() -> tuple[MemoryPair, Connection, Connection]:
    return confirmed(MemoryPair(seed=41))


@pytest.mark.parametrize("path", ["datagram", "gro-batch"])
def test_a_server_packet_from_another_address_is_discarded(path: str) -> None:
    pair, client, server = _confirmed()
    limit = client.flow.peer_max_data
    packet = forge(server, Epoch.ONE_RTT, raw(0x01) + raw(MAX_DATA, limit + (1 << 30)))
    received = client.counters.packets_received
    if path == "datagram":
        pair.client_ep.receive(packet, ELSEWHERE, pair.now)
    else:
        pair.client_ep.receive_batch(packet, len(packet), ELSEWHERE, pair.now)
    assert client.counters.dropped_unknown_address == 1
    assert client.counters.packets_received == received
    assert client.flow.peer_max_data == limit, "its MAX_DATA was applied"
    assert client.peer_address == SERVER_ADDR, "the client moved to the sender's address"
    # the same packet from the server's address is taken
    pair.client_ep.receive(packet, SERVER_ADDR, pair.now)
    assert client.counters.packets_received == received + 1
    assert client.flow.peer_max_data == limit + (1 << 30)
