"""A packet is processed once (RFC 9000 §12.3: "A receiver MUST discard a newly
unprotected packet unless it is certain that it has not processed another packet with
the same packet number from the same packet number space").

A connection keeps the newest 32–64 ranges of packet numbers it received (what its ACK
frames carry); the older ones are forgotten once a peer's losses or reordering make
more. Before, a packet below the ranges kept was processed again: an attacker who
recorded a packet replayed it byte for byte after 64 gaps, and its frames were taken a
second time. Now a floor rises with what is forgotten, and a packet below it is a
duplicate, in the single-datagram path and in a GRO batch's run (``open_run``), for a
packet of STREAM frames only (the run's coalesced entries) and for others."""

from __future__ import annotations

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.state import CLOSING, RECEIVED_RANGES

from .support.forge import forge, raw
from .support.memory_pair import MemoryPair, confirmed

PING = raw(0x01)


def _confirmed(seed: int) -> tuple[MemoryPair, Connection, Connection]:
    return confirmed(MemoryPair(seed=seed))


def _deliver(pair: MemoryPair, datagram: bytes, path: str) -> None:
    if path == "datagram":
        pair.server.receive(datagram, pair.client_addr, pair.now)
    else:
        pair.server.receive_batch(datagram, len(datagram), pair.client_addr, pair.now)


def _many_gaps(pair: MemoryPair, client: Connection, count: int) -> None:
    """``count`` PINGs from the client, each after a lost packet number."""
    for _ in range(count):
        client.spaces[2].next_pn += 1  # the packet in between was lost
        pair.server.receive(forge(client, Epoch.ONE_RTT, PING), pair.client_addr, pair.now)
        pair.now += 0.0001


@pytest.mark.parametrize("path", ["datagram", "gro-batch"])
@pytest.mark.parametrize("payload", ["ping", "stream"])
def test_a_packet_replayed_after_its_range_was_forgotten_is_a_duplicate(
        path: str, payload: str) -> None:
    pair, client, server = _confirmed(seed=71)
    stream_id = client.open_stream() if payload == "stream" else -1
    # a STREAM frame (offset 0, length, FIN) alone: the run's coalesced STREAM entry
    frames = PING if payload == "ping" else raw(0x0F, stream_id, 0, 5, b"hello")
    recorded = forge(client, Epoch.ONE_RTT, frames)
    _deliver(pair, recorded, path)
    space = server.spaces[2]
    taken = server.counters.packets_received
    _many_gaps(pair, client, RECEIVED_RANGES + 6)
    assert space.received_floor > 0, "the oldest ranges were forgotten"
    assert space.received.starts[0] >= space.received_floor
    received, duplicates = server.counters.packets_received, server.counters.duplicate_packets
    assert received == taken + RECEIVED_RANGES + 6

    _deliver(pair, recorded, path)  # the attacker's replay

    assert server.counters.packets_received == received, "the replay was processed"
    assert server.counters.duplicate_packets == duplicates + 1
    assert space.received.starts[0] >= space.received_floor, "not acknowledged again"
    assert server.state < CLOSING


def test_packets_at_and_above_the_floor_are_taken() -> None:
    """The floor is the oldest range kept: a late packet in a gap above it is new."""
    pair, client, server = _confirmed(seed=72)
    _many_gaps(pair, client, RECEIVED_RANGES + 6)
    space = server.spaces[2]
    floor = space.received_floor
    assert floor > 0
    late = max(pn for pn in range(floor, space.largest_received) if pn not in space.received)
    client.spaces[2].next_pn, next_pn = late, client.spaces[2].next_pn
    straggler = forge(client, Epoch.ONE_RTT, PING)
    client.spaces[2].next_pn = next_pn
    before = server.counters.packets_received
    pair.server.receive(straggler, pair.client_addr, pair.now)
    assert server.counters.packets_received == before + 1
    assert late in space.received
