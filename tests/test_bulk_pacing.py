"""The bulk sender and the pacer: a paced connection's turns build runs, not calls that
the pacer holds back (issue 11), and its bursts keep to the pacer's rate."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quicflow.transport.receive as receive_module
import quicflow.transport.send as send_module
from quicflow.aio.runner import EndpointRunner
from quicflow.transport.bulk import build_bulk
from quicflow.transport.congestion import Pacer
from tests.support import snapshot_peer
from tests.test_snapshot import SIZE, _check_download, _start

MDS = 1200


def _count_bulk_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    calls: Counter[str] = Counter()
    real = build_bulk

    def counted(*args: Any) -> int:
        built = real(*args)
        calls["held" if built < 0 else "runs" if built > 0 else "general"] += 1
        return built

    monkeypatch.setattr(send_module, "build_bulk", counted)
    return calls


def _paced_server(monkeypatch: pytest.MonkeyPatch, bucket: int) -> tuple[Any, Any, float]:
    """A server connection mid-download with all its data queued, a window far larger
    than a run and a pacer holding exactly ``bucket`` datagrams of budget."""
    monkeypatch.setattr(snapshot_peer, "SEND_AHEAD", SIZE)  # all data queued
    # the server asks for no other ACK frequency (with fewer ACKs, more would be in
    # flight at the 512 KiB mark, and the client's flow control credit would end the
    # run, not the pacer): ack_frequency tests its own
    monkeypatch.setattr(receive_module, "on_peer_parameters", lambda conn, value: None)
    net, client, server = _start()
    net.run(lambda: len(client.app.received) >= 512 * 1024)
    conn = server.conn
    assert conn is not None and conn.send_queue
    now = net.now
    conn.loss.cc.cwnd = conn.loss.cc.bytes_in_flight + 4000 * MDS
    pacer = conn.pacer
    pacer.granularity = 0.0
    pacer.run_datagrams = bucket  # the bucket: cwnd / 8 is larger
    pacer.burst_interval = 1e-9
    pacer.tokens, pacer.last_time, pacer.promised = bucket * MDS, now, 0.0
    conn.pacer_deadline = None
    return net, conn, now


@pytest.mark.parametrize("bucket", [40, 100])
def test_a_run_the_pacer_bounds_leaves_its_deadline_without_a_second_call(
    monkeypatch: pytest.MonkeyPatch, bucket: int
) -> None:
    """After a run the pacer bounded, the sender keeps the pacer's deadline at once: no
    second build_bulk call only to be held back (bucket 40: the run ends the call), and
    a batch the run filled (bucket 100: 64 datagrams, 36 left, under a burst) says when
    the next burst goes, so the runner makes no empty build before it (issue 11: 11 k
    such calls per GiB at 256 connections). Nothing more goes before that deadline; at
    it, the next run does."""
    net, conn, now = _paced_server(monkeypatch, bucket)
    calls = _count_bulk_calls(monkeypatch)
    buf, bounds = send_module.build_datagrams(conn, now)
    assert len(bounds) == min(bucket, 64) and calls == {"runs": 1}
    due = conn.pacer_deadline
    assert due is not None and due > now
    assert conn.timer() == due  # the connection's timer sends the next burst
    assert send_module.build_datagrams(conn, now)[1] == []  # held back until then
    conn.handle_timer(due)
    assert len(send_module.build_datagrams(conn, due)[1]) >= 1


def test_a_paced_download_arrives_intact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole download with all data queued at once (paced runs): intact."""
    monkeypatch.setattr(snapshot_peer, "SEND_AHEAD", SIZE)
    calls = _count_bulk_calls(monkeypatch)
    net, client, _ = _start()
    net.run(lambda: client.app.done)
    _check_download(client.app)
    assert calls["runs"] >= 40


def test_the_burst_waited_for_goes_when_the_window_grew_meanwhile() -> None:
    """A deadline is the time the budget covers the burst it was computed for; a window
    grown by ACKs in the meantime (a larger bucket) does not hold that burst back again.
    The rate is the pacer's either way: what goes is what the budget holds."""
    pacer = Pacer(max_datagram_size=MDS, burst_interval=0.002, max_burst_datagrams=256,
                  run_datagrams=256)
    srtt, cwnd = 0.1, 800 * MDS  # bucket cwnd / 8 = 100 datagrams
    room, later = pacer.run_budget(0.0, srtt, cwnd, 256 * MDS)
    assert later is None
    pacer.consume(0.0, room, srtt, cwnd)
    _, due = pacer.run_budget(0.001, srtt, cwnd, 256 * MDS)
    assert due is not None
    grown = 2 * cwnd  # slow start doubled the window: bucket 200 datagrams
    room, again = pacer.run_budget(due, srtt, grown, 256 * MDS)
    assert again is None and 100 * MDS <= room < 200 * MDS
    # without a promise pending, the larger bucket is what a run waits for
    pacer.consume(due, room, srtt, grown)
    _, next_due = pacer.run_budget(due + 0.0001, srtt, grown, 256 * MDS)
    assert next_due is not None
    assert next_due - due == pytest.approx(200 * MDS / pacer.rate(srtt, grown), rel=0.05)


def test_the_burst_goes_at_the_deadline_the_pacer_gave() -> None:
    """At the very time ``run_budget`` named, the budget covers the burst: the refill
    of ``deadline - last`` seconds at the rate can round to a hair under it in floating
    point, which held the burst back a second time for a wait of about zero (an empty
    timer turn; 363 of 2000 such deadlines with this seed before)."""
    import random

    rng = random.Random(1)
    checked = 0
    for _ in range(2000):
        pacer = Pacer(max_datagram_size=MDS, burst_interval=0.002, max_burst_datagrams=256,
                      run_datagrams=256)
        now = 1000.0 + rng.random() * 50
        srtt, cwnd = rng.uniform(0.001, 0.2), rng.randrange(20_000, 10_000_000)
        pacer.run_budget(now, srtt, cwnd, 1 << 30)
        pacer.consume(now, rng.randrange(MDS, 300_000), srtt, cwnd)
        _, due = pacer.run_budget(now, srtt, cwnd, 64 * MDS)
        if due is None:
            continue
        room, again = pacer.run_budget(due, srtt, cwnd, 64 * MDS)
        assert again is None and room >= 1
        checked += 1
    assert checked > 500


def test_a_turn_the_pacer_holds_back_would_have_sent_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runner skips the build of a turn (an ACK's, a write's) when only new stream
    data waits and the pacer holds it back until a deadline still ahead
    (``EndpointRunner._held_by_pacer``). Checked at every server step of a paced 5 MiB
    download: whenever it says so, the build would indeed have sent nothing; it says so
    on some steps; and the download arrives intact."""
    monkeypatch.setattr(snapshot_peer, "SEND_AHEAD", SIZE)
    runner = SimpleNamespace()
    held = sent_anyway = 0
    real_step = snapshot_peer.LocalSide.step

    def step(self: Any, now: float, incoming: list[bytes]) -> list[bytes]:
        nonlocal held, sent_anyway
        for datagram in incoming:
            self.endpoint.receive(datagram, self.peer_address, now)
        conn = self.conn
        skip = False
        if conn is not None and not conn.is_client and conn.pacer_deadline is not None:
            deadline = conn.timer()
            if deadline is None or deadline > now:  # (a due timer is handled first)
                skip = EndpointRunner._held_by_pacer(runner, conn, now)  # type: ignore[arg-type]
        out = real_step(self, now, [])
        if skip:
            held += 1
            sent_anyway += bool(out)
        return out

    monkeypatch.setattr(snapshot_peer.LocalSide, "step", step)
    net, client, _ = _start()
    net.run(lambda: client.app.done)
    _check_download(client.app)
    assert held >= 5 and sent_anyway == 0, (held, sent_anyway)


def _run_budget_with_refill(pacer: Pacer, now: float, srtt: float, cwnd: int, want: int
                            ) -> tuple[int, float | None]:
    """Reference: ``Pacer.run_budget`` as it was, the refill asked every time (test
    oracle of the shortcut at an unchanged ``now``)."""
    rate = pacer.rate(srtt, cwnd)
    if rate == 0.0:
        return want, None
    capacity = pacer.capacity(rate, cwnd)
    tokens = pacer._refill(now, rate, capacity) + rate * pacer.granularity
    need = float(want) if want < capacity else capacity
    if pacer.promised and pacer.promised < need:
        need = pacer.promised
    if tokens > need - 1.0:
        pacer.promised = 0.0
        return int(tokens), None
    pacer.promised = need
    return 0, now + (need - tokens) / rate


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.0, 1e-6, 1e-4, 0.003]),  # time step
                          st.integers(0, 300_000),  # bytes consumed after the query
                          st.integers(2 * MDS, 5_000_000),  # cwnd
                          st.integers(1, 600))),  # want, datagrams
       st.floats(0.0005, 0.2), st.sampled_from([0.0, 0.001]))
@settings(max_examples=300, deadline=None)
def test_a_query_at_the_same_time_skips_only_a_refill_that_adds_nothing(
    steps: list[tuple[float, int, int, int]], srtt: float, granularity: float,
) -> None:
    """``run_budget`` at the ``now`` of the last refill (the question after a run) reads
    the tokens instead of refilling: the answers and the pacer's state are those of the
    refill asked every time, over random sequences of queries and sends."""
    fast = Pacer(max_datagram_size=MDS, burst_interval=0.002, max_burst_datagrams=256,
                 run_datagrams=256, granularity=granularity)
    ref = Pacer(max_datagram_size=MDS, burst_interval=0.002, max_burst_datagrams=256,
                run_datagrams=256, granularity=granularity)
    now = 100.0
    for step, sent, cwnd, want in steps:
        now += step
        assert fast.run_budget(now, srtt, cwnd, want * MDS) == _run_budget_with_refill(
            ref, now, srtt, cwnd, want * MDS)
        if sent:
            fast.consume(now, sent, srtt, cwnd)
            ref.consume(now, sent, srtt, cwnd)
        assert (fast.tokens, fast.last_time, fast.promised) == (
            ref.tokens, ref.last_time, ref.promised)
