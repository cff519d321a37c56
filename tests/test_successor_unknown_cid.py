"""A successor taking over answers no unknown CID with a stateless reset until every
connection is restored: a datagram for a connection still on its way (read off a
connection socket it was not meant for) is set aside and dropped, since the reset
(made with the predecessor's adopted reset key) would be valid and end that connection.
The endpoint rule is what ``aio.handover.restore_server`` relies on: while
``Endpoint.forwarding`` is a list, unknown CIDs go there."""

from __future__ import annotations

from typing import Any

from tests.support.snapshot_peer import CLIENT_ADDR
from tests.test_snapshot import _start


def _unknown_cid_datagram() -> tuple[Any, bytes]:
    """A server endpoint and a 1-RTT-sized datagram for a CID of ours that no
    connection holds (a connection still on its way, to a successor)."""
    net, client, server = _start(size=1000)
    net.run(lambda: client.app.done)
    endpoint = server.endpoint
    assert endpoint.cid_generator is not None
    cid = endpoint.cid_generator.generate()
    assert endpoint.registry.by_cid(cid) is None
    return endpoint, bytes([0x40]) + cid + bytes(1200 - 1 - len(cid))


def test_unknown_cid_is_reset_normally() -> None:
    endpoint, datagram = _unknown_cid_datagram()
    endpoint.receive(datagram, CLIENT_ADDR, 2000.0)
    assert len(endpoint.pop_stateless()) == 1


def test_unknown_cid_while_restoring_is_set_aside_not_reset() -> None:
    endpoint, datagram = _unknown_cid_datagram()
    endpoint.forwarding = []
    endpoint.receive(datagram, CLIENT_ADDR, 2000.0)
    assert endpoint.pop_stateless() == []
    assert [d for d, _, _ in endpoint.forwarding] == [datagram]
