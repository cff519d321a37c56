"""Path probing in the sans-I/O core (RFC 9000 §8.2, §9): a probing-only packet from a
new address does not move a server, its PATH_CHALLENGE is answered to that address (and
only within 3x what came from there); a client's probe moves it only once answered, with
a fresh CID (the old one retired) and fresh RTT/congestion state; the refusals."""

from __future__ import annotations

import pytest

from quicflow.transport.congestion import CongestionControl
from quicflow.transport.events import PathMigrated, PathProbeFailed
from quicflow.transport.path import PROBE_MIGRATE
from quicflow.transport.pathprobe import (
    MAX_OFF_PATH_CHALLENGES,
    MigrationError,
    probe_datagrams,
    start_probe,
)
from quicflow.transport.rtt import RttEstimator
from tests.support.memory_pair import SERVER_ADDR, MemoryPair

NEW_ADDR = ("127.0.0.1", 50001)


def _ready() -> MemoryPair:
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and len(pair.client.peer_cids) >= 2)
    return pair


def test_probe_does_not_move_the_server_and_is_answered_on_its_path() -> None:
    pair = _ready()
    client, server = pair.client, pair.server_conns[0]
    sid = client.open_stream()
    client.send_stream_data(sid, b"y" * 300_000, end_stream=True)
    pair.run(lambda: client.send_buffered == 0)
    fresh_cwnd = CongestionControl(client.cc.algorithm, client.cc.max_datagram_size).cwnd
    assert client.cc.cwnd > fresh_cwnd and client.loss.first_rtt_sample_time is not None
    old_cid, old_seq = client.peer_cid, client.peer_cid_seq
    start_probe(client, pair.now)
    probes = probe_datagrams(client, pair.now)
    assert len(probes) == 1
    datagram, dest = probes[0]
    assert dest == SERVER_ADDR and len(datagram) >= 1200  # padded (§8.2.1)
    assert client.peer_cid == old_cid  # nothing moved yet
    pair.server.receive(datagram, NEW_ADDR, pair.now)
    # the server stays on the client's old address, answers the probe where it came from
    assert server.peer_address == pair.client_addr
    assert server.path_changes == 0
    answers = probe_datagrams(server, pair.now)
    assert [addr for _, addr in answers] == [NEW_ADDR]
    assert len(answers[0][0]) == 1200
    pair.client_ep.receive(answers[0][0], SERVER_ADDR, pair.now)
    events = client.pop_events()
    assert any(isinstance(e, PathMigrated) and e.kind == PROBE_MIGRATE for e in events)
    assert client.peer_cid != old_cid and client.peer_cid_seq != old_seq
    assert old_seq in client.retire_pending
    assert client.counters.migrations == 1
    # RTT estimate and congestion controller start afresh (RFC 9000 §9.4)
    assert client.loss.first_rtt_sample_time is None
    assert client.rtt.smoothed_rtt == RttEstimator().smoothed_rtt
    assert client.cc.cwnd == fresh_cwnd
    # the client's next packets (non-probing, from the new address) move the server
    server_old_cid = server.peer_cid
    pair.client_addr = NEW_ADDR
    sid = client.open_stream()
    client.send_stream_data(sid, b"x" * 5000, end_stream=True)
    pair.run(lambda: server.address_validated and server.peer_address == NEW_ADDR
             and not server.path_challenge)
    assert server.path_changes == 1
    # ... which sends there with a client CID never used on the old path (§9.5)
    assert server.peer_cid != server_old_cid
    assert server_old_cid not in [c.cid for c in server.peer_cids]
    # the server got RETIRE_CONNECTION_ID for the old CID and gave a new one
    pair.run(lambda: not client.retire_pending)
    assert all(c.sequence != old_seq for c in server.host_cids)


def test_off_path_answers_are_bounded_and_amplification_limited() -> None:
    pair = _ready()
    client, server = pair.client, pair.server_conns[0]
    for i in range(10):
        start_probe(client, pair.now)
        datagram, _ = probe_datagrams(client, pair.now)[0]
        client.probe = None
        pair.server.receive(datagram, ("127.0.0.1", 51000 + i), pair.now)
    assert len(server.off_path_challenges) == MAX_OFF_PATH_CHALLENGES
    assert server.path_changes == 0
    # a small probe gets an answer of at most 3x its size
    server.off_path_challenges.clear()
    server.off_path_challenges.append((b"12345678", ("127.0.0.1", 52000), 3 * 100))
    (answer, _), = probe_datagrams(server, pair.now)
    assert len(answer) <= 300


def test_unanswered_probe_fails_and_the_client_stays() -> None:
    pair = _ready()
    client = pair.client
    old_cid = client.peer_cid
    probe = start_probe(client, pair.now)
    sent = 0
    now = pair.now
    while client.probe is not None:
        sent += len(probe_datagrams(client, now))  # all lost
        deadline = client.timer()
        assert deadline is not None
        now = max(now + 0.001, deadline)
        client.handle_timer(now)
    assert now >= probe.deadline
    assert sent >= 2
    failed = [e for e in client.pop_events() if isinstance(e, PathProbeFailed)]
    assert len(failed) == 1 and "no PATH_RESPONSE" in failed[0].reason
    assert client.peer_cid == old_cid
    assert client.counters.migrations_failed == 1


def test_refusals() -> None:
    pair = MemoryPair()
    with pytest.raises(MigrationError, match="handshake is confirmed"):
        start_probe(pair.client, pair.now)
    pair.run(lambda: pair.client.handshake_confirmed and len(pair.client.peer_cids) >= 2)
    server = pair.server_conns[0]
    with pytest.raises(MigrationError, match="only a client"):
        start_probe(server, pair.now)
    start_probe(pair.client, pair.now)
    with pytest.raises(MigrationError, match="already in progress"):
        start_probe(pair.client, pair.now)
    pair.client.probe = None
    assert pair.client.peer_params is not None
    pair.client.peer_params.disable_active_migration = True
    with pytest.raises(MigrationError, match="disable_active_migration"):
        start_probe(pair.client, pair.now)
    pair.client.peer_params.disable_active_migration = False
    pair.client.peer_cids = [c for c in pair.client.peer_cids
                             if c.sequence == pair.client.peer_cid_seq]
    with pytest.raises(MigrationError, match="no spare connection ID"):
        start_probe(pair.client, pair.now)


def test_snapshot_keeps_a_running_probe_and_off_path_answers() -> None:
    from quicflow.crypto.offload import SoftwareOffloadEngine
    from quicflow.transport.snapshot import restore_connection, snapshot_connection

    pair = _ready()
    client, server = pair.client, pair.server_conns[0]
    probe = start_probe(client, pair.now)
    datagram, _ = probe_datagrams(client, pair.now)[0]
    pair.server.receive(datagram, NEW_ADDR, pair.now)
    assert server.off_path_challenges
    client.pop_events()
    server.pop_events()
    later = pair.now + 5.0
    copy, _ = restore_connection(snapshot_connection(client, pair.now, release=False),
                                 engine=SoftwareOffloadEngine(), now=later)
    assert copy.probe is not None and copy.probe.cid == probe.cid
    assert copy.probe.deadline == pytest.approx(probe.deadline + 5.0)  # times shifted
    served, _ = restore_connection(snapshot_connection(server, pair.now, release=False),
                                   engine=SoftwareOffloadEngine(), now=later)
    assert served.off_path_challenges == server.off_path_challenges


def test_probe_cid_retired_meanwhile_is_not_used() -> None:
    """The server retired the probe's CID (Retire Prior To) before the answer came: the
    connection moves with another spare CID, never a retired one."""
    pair = _ready()
    client, server = pair.client, pair.server_conns[0]
    pair.run(lambda: len(client.peer_cids) >= 3)
    probe = start_probe(client, pair.now)
    datagram, _ = probe_datagrams(client, pair.now)[0]
    pair.server.receive(datagram, NEW_ADDR, pair.now)
    client.peer_cids = [c for c in client.peer_cids if c.sequence != probe.cid_seq]
    client.retire_pending.append(probe.cid_seq)
    (answer, _), = probe_datagrams(server, pair.now)
    pair.client_ep.receive(answer, SERVER_ADDR, pair.now)
    assert client.counters.migrations == 1
    assert client.peer_cid != probe.cid
    assert client.peer_cid_seq not in client.retire_pending
    assert any(c.sequence == client.peer_cid_seq for c in client.peer_cids)
