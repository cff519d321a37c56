"""A server that handed a connection off (captured and released it, e.g. moved it to
another host) must not answer the client's stragglers with a stateless reset: it issued
the connection's CIDs, so the client would accept the reset and the moved connection
would die on the new host (issue 7 item 4 together with main's stateless resets)."""

from __future__ import annotations

import os

from quicflow.endpoint.moved import MAX_LIFETIME, MovedCids
from quicflow.transport.snapshot import snapshot_connection
from tests.support.snapshot_peer import CLIENT_ADDR

from .test_snapshot import _established


def _short_packet(cid: bytes) -> bytes:
    return bytes((0x40 | 0x03,)) + cid + os.urandom(60)


def test_packets_for_a_handed_off_connection_are_dropped_not_reset() -> None:
    net, _, server = _established()
    conn = server.conn
    assert conn is not None
    endpoint = server.endpoint
    cids = conn.host_cid_list()
    snapshot_connection(conn, net.now)  # captured and released
    assert conn.released
    endpoint.datagrams_to_send(conn, net.now)  # the endpoint syncs its CIDs: forgotten
    assert conn not in endpoint.registry
    for cid in cids:
        endpoint.receive(_short_packet(cid), CLIENT_ADDR, net.now + 1.0)
    assert endpoint.stateless == [], "a stateless reset would end the moved connection"
    assert endpoint.counters.dropped_moved == len(cids)
    # a CID of a connection never held here still gets its reset
    stranger = cids[0][:4] + os.urandom(len(cids[0]) - 4)  # our server ID, another nonce
    assert stranger not in cids and endpoint.generator.is_ours(stranger)
    endpoint.receive(_short_packet(stranger), CLIENT_ADDR, net.now + 1.0)
    assert len(endpoint.stateless) == 1
    # after the connection's idle timeout the CIDs are forgotten: resets again
    endpoint.stateless.clear()
    later = net.now + conn.idle_timeout + 10.0
    endpoint.receive(_short_packet(cids[0]), CLIENT_ADDR, later)
    assert len(endpoint.stateless) == 1
    assert endpoint.counters.dropped_moved == len(cids)


def test_moved_cids_expire_in_order_and_are_bounded_in_time() -> None:
    moved = MovedCids()
    moved.record([b"a" * 8, b"b" * 8], 10.0, 5.0)
    moved.record([b"c" * 8], 12.0, float("inf"))  # no idle timeout: the cap applies
    assert moved.holds(b"a" * 8, 14.9) and moved.holds(b"c" * 8, 14.9)
    assert not moved.holds(b"a" * 8, 15.0)
    assert len(moved) == 1  # both of the first connection expired together
    assert moved.holds(b"c" * 8, 12.0 + MAX_LIFETIME - 1)
    assert not moved.holds(b"c" * 8, 12.0 + MAX_LIFETIME)
    assert len(moved) == 0
