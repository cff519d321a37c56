"""ECN (RFC 9000 §13.4, RFC 9002 §7.1): validation of the path's marks and the reaction
to Congestion Experienced.

In memory, the links decide the ECN bits the receiver sees (``MemoryPair(ecn=...)``):
ECT(0) kept (2), bleached (0), or CE (3) on some datagrams. Then once over real loopback
sockets, where the kernel carries the sender's ECT(0) marks.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from quicflow.transport.connection import Connection
from quicflow.transport.state import ECN_CAPABLE, ECN_FAILED

from .support.memory_pair import MemoryPair
from .support.transfer import run_transfer

ECT0, CE = 2, 3


def _download(
    pair: MemoryPair, size: int, *, on_step: Callable[[Connection], object] | None = None
) -> bytes:
    """The client asks, the server answers ``size`` bytes on one bidirectional stream;
    returns what the client read (checked against what was sent)."""
    pair.run(lambda: pair.client.handshake_complete and bool(pair.server_conns))
    client = pair.client
    sid = client.open_stream()
    client.send_stream_data(sid, b"GET", end_stream=True)
    data = random.Random(size).randbytes(size)
    got = bytearray()
    answered = False

    def done() -> bool:
        nonlocal answered
        server = pair.server_conns[0]
        if on_step is not None:
            on_step(server)
        if not answered and sid in server.streams:
            server.read_stream(sid)
        if not answered and sid in server.streams and server.stream_at_eof(sid):
            server.send_stream_data(sid, data, end_stream=True)
            answered = True
        if sid in client.streams:
            got.extend(client.read_stream(sid))
        return answered and client.stream_at_eof(sid)

    pair.run(done)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # Let the last ACKs travel (and the timers settle) before looking at the counters.
    end = pair.now + 0.5
    pair.run(lambda: pair.now >= end)
    return bytes(got)


def _received_ecn_counts(conn: Connection) -> list[int]:
    return [sum(space.ecn_counts[i] for space in conn.spaces) for i in range(3)]


def test_ect0_kept_by_the_path_makes_ecn_capable() -> None:
    pair = MemoryPair(seed=21, ecn=ECT0)
    # the path MTU searches (one PTO after confirmation) end first: a probe after the
    # download would be answered by an ACK-only packet, which the client counts but, as
    # it elicits no ACK, never reports
    pair.run(lambda: bool(pair.server_conns) and all(
        c.pmtud.started and c.pmtud.candidate == 0 for c in (pair.client, pair.server_conns[0])
    ))
    _download(pair, 2_000_000)
    server, client = pair.server_conns[0], pair.client
    for conn in (server, client):
        assert conn.ecn_state == ECN_CAPABLE
        assert conn.ecn_codepoint() == ECT0
    # The receiver counts every packet it took as ECT(0), none as ECT(1) or CE.
    ect0, ect1, ce = _received_ecn_counts(client)
    assert (ect1, ce) == (0, 0)
    assert ect0 == client.counters.packets_received > 1000
    ect0, ect1, ce = _received_ecn_counts(server)
    assert (ect1, ce) == (0, 0)
    assert ect0 == server.counters.packets_received
    # ...and the sender saw those counts in the ACK_ECN frames of the 1-RTT space.
    assert server.spaces[2].ecn_peer_counts[0] == client.spaces[2].ecn_counts[0]
    assert server.spaces[2].ecn_peer_counts[1:] == [0, 0]
    assert server.cc.congestion_events == 0


def test_bleached_marks_fail_validation() -> None:
    pair = MemoryPair(seed=22, ecn=0)
    _download(pair, 1_000_000)
    server, client = pair.server_conns[0], pair.client
    for conn in (server, client):
        assert conn.ecn_state == ECN_FAILED
        assert conn.ecn_codepoint() == 0
    assert _received_ecn_counts(client) == [0, 0, 0]


def test_ect1_reported_by_the_peer_fails_validation() -> None:
    # We send ECT(0); a peer counting ECT(1) means the path rewrites marks (§13.4.2.1).
    pair = MemoryPair(seed=23, ecn=ECT0)
    pair.down.ecn = 1  # the client receives ECT(1) and reports it
    _download(pair, 300_000)
    assert pair.server_conns[0].ecn_state == ECN_FAILED
    assert pair.server_conns[0].ecn_codepoint() == 0
    assert pair.client.ecn_state == ECN_CAPABLE


def test_ce_marks_reduce_the_senders_window() -> None:
    # Baseline: no CE, no loss -> no congestion event at all.
    calm = MemoryPair(seed=24, ecn=ECT0)
    _download(calm, 3_000_000)
    assert calm.server_conns[0].cc.congestion_events == 0
    assert calm.server_conns[0].counters.packets_lost == 0

    def marks(index: int, datagram: bytes) -> int:
        # CE on one datagram in 40 once the transfer runs (short-header packets).
        return CE if index > 200 and index % 40 == 0 and not datagram[0] & 0x80 else ECT0

    pair = MemoryPair(seed=24, ecn=ECT0)
    pair.down.ecn = marks
    windows: list[int] = []
    _download(pair, 3_000_000, on_step=lambda s: windows.append(s.cc.cwnd))
    server, client = pair.server_conns[0], pair.client
    assert server.counters.packets_lost == 0  # so the reductions come from CE alone
    assert server.cc.congestion_events >= 1
    assert server.ecn_state == ECN_CAPABLE  # CE is not a validation failure
    ect0, ect1, ce = _received_ecn_counts(client)
    assert ce >= 1 and ect1 == 0
    assert ect0 + ce == client.counters.packets_received
    assert server.spaces[2].ecn_peer_counts[2] == client.spaces[2].ecn_counts[2]
    drops = [(a, b) for a, b in zip(windows, windows[1:], strict=False) if b < a]
    assert drops, "the congestion window never went down"
    assert server.cc.ssthresh < 2**62


def test_real_sockets_on_loopback_end_ecn_capable() -> None:
    outcome = run_transfer(server_host="127.0.0.1", size=2_000_000)
    assert outcome.ok, outcome.results
    client = outcome.client_stats["connection"]
    assert client["ecn"] == "capable", client
    (server,) = outcome.server_stats["connections"]
    assert server["ecn"] == "capable", server
    assert server["congestion_control"]  # the stats are the connection's
