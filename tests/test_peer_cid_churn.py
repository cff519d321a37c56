"""A peer's connection ID churn is bounded (RFC 9000 §5.1.2), on two sans-I/O endpoints.

Each NEW_CONNECTION_ID with Retire Prior To puts the CIDs it retires on the list of
RETIRE_CONNECTION_ID frames we owe. A peer that sends tens of them a packet, each
retiring the one before, grew that list without bound between two of our sends (and
each frame's check of it with it: 10 k frames cost the event loop about a second). Past
four times our active_connection_id_limit waiting, the connection closes with
CONNECTION_ID_LIMIT_ERROR; a peer that rotates at any sane rate never gets there.
"""

from __future__ import annotations

import os

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.errors import CONNECTION_ID_LIMIT_ERROR, QuicError
from quicflow.transport.receive import RETIRE_PENDING_PER_LIMIT, _process_frames
from quicflow.transport.state import CLOSING
from quicflow.wire import frame_types as F
from quicflow.wire.frames import encode_frame

from .support.memory_pair import MemoryPair


def _server(pair: MemoryPair) -> Connection:
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    return pair.server_conns[0]


def _packet(first: int, count: int) -> bytes:
    """``count`` NEW_CONNECTION_ID frames from sequence ``first``, each retiring all
    before it."""
    payload = bytearray()
    for seq in range(first, first + count):
        encode_frame(F.NewConnectionId(seq, seq, os.urandom(8), os.urandom(16)), payload)
    return bytes(payload)


def test_retiring_faster_than_we_send_closes_with_connection_id_limit_error() -> None:
    pair = MemoryPair(seed=13)
    server = _server(pair)
    bound = RETIRE_PENDING_PER_LIMIT * server.configuration.active_connection_id_limit
    with pytest.raises(QuicError) as exc:
        for packet in range(64):
            _process_frames(server, _packet(10 + 40 * packet, 40), Epoch.ONE_RTT, pair.now)
    assert exc.value.code == CONNECTION_ID_LIMIT_ERROR
    assert len(server.retire_pending) == bound + 1  # held no further


def test_a_peer_that_rotates_at_a_sane_rate_is_served() -> None:
    pair = MemoryPair(seed=14)
    server = _server(pair)
    seq = 10
    for _ in range(50):  # three retirements a packet, each round's owed frames sent
        _process_frames(server, _packet(seq, 3), Epoch.ONE_RTT, pair.now)
        seq += 3
        pair.server.datagrams_to_send(server, pair.now)
        assert not server.retire_pending
    assert server.state < CLOSING and server.peer_cid_seq == seq - 1


def test_a_late_cid_below_retire_prior_to_is_retired() -> None:
    """RFC 9000 §19.15: a NEW_CONNECTION_ID whose sequence is below a Retire Prior To
    received before (it was reordered, or sent again) is answered with its
    RETIRE_CONNECTION_ID. Before, it was dropped unanswered, and the peer kept it as
    one of our active CIDs for ever. The client's CIDs 0-10 (sequence 10 first, retiring
    the others; 8 late): the client sees 8 retired, and both go on."""
    pair = MemoryPair(seed=15)
    server = _server(pair)
    client = pair.client
    while pair.step():
        pair.now += 0.0002
    while client.next_host_cid_seq <= 10:
        client.issue_host_cid()
    by_seq = {e.sequence: e for e in client.host_cids}

    def ncid(seq: int, retire_prior_to: int) -> bytes:
        out = bytearray()
        entry = by_seq[seq]
        encode_frame(F.NewConnectionId(seq, retire_prior_to, entry.cid, entry.reset_token),
                     out)
        return bytes(out)

    _process_frames(server, ncid(10, 10), Epoch.ONE_RTT, pair.now)
    assert server.peer_cid_seq == 10
    pair.server.datagrams_to_send(server, pair.now)  # (the retirements owed go out: lost)
    _process_frames(server, ncid(8, 0), Epoch.ONE_RTT, pair.now)  # the late one
    assert server.retire_pending == [8]
    assert 8 not in {e.sequence for e in server.peer_cids}, "a retired CID is not used"
    pair.run(lambda: 8 not in {e.sequence for e in client.host_cids})
    assert server.state < CLOSING and client.state < CLOSING
