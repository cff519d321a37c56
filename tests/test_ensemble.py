"""Slow start shared by the connections to one host (transport/ensemble.py).

Connections that start a round trip apart keep a 2:1 ratio of windows for as long as
slow start lasts; with the ensemble a leader stops growing at 3/2 of the window-limited
connections' mean rate until the others catch up. Driven here round trip by round trip
with real congestion controllers (each window acknowledged a quarter at a time and sent
again in full, as on a path that loses nothing).
"""

from __future__ import annotations

import asyncio

import pytest

import quicflow
from quicflow.transport.congestion import NO_CEILING, CongestionControl
from quicflow.transport.ensemble import (
    CEILING_DEN,
    CEILING_NUM,
    ENSEMBLE_MIN,
    SlowStartEnsembles,
)
from quicflow.transport.rtt import RttEstimator
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config

MDS = 1200
RTT = 0.02


class Conn:
    """What the ensemble reads of a connection: its peer, window, smoothed RTT and
    datagram size."""

    __slots__ = ("peer_address", "loss", "max_datagram_size")

    class Loss:
        __slots__ = ("cc", "rtt")

        def __init__(self, rtt: float) -> None:
            self.cc = CongestionControl(algorithm="cubic", max_datagram_size=MDS)
            self.rtt = RttEstimator()
            self.rtt.update(rtt, 0.0, True, 0.0)

    def __init__(self, host: str, port: int, rtt: float = RTT) -> None:
        self.peer_address = (host, port)
        self.loss = Conn.Loss(rtt)
        self.max_datagram_size = MDS


def _round(conns: list[Conn], ensembles: SlowStartEnsembles | None, now: float,
           rtt: RttEstimator) -> None:
    """One round trip: each connection's flight is acknowledged a quarter at a time (an
    ACK per quarter of the window, as the ACK Frequency request asks), the connections'
    ACKs interleaved, and each ACK gives its connection a send turn that fills its window
    again (leaving it window-limited)."""
    flights = [c.loss.cc.bytes_in_flight for c in conns]
    for quarter in range(4):
        for c, flight in zip(conns, flights, strict=True):
            cc = c.loss.cc
            cc.on_acked(flight // 4, now, now + RTT * (quarter + 1) / 4, rtt)
            cc.on_sent(cc.cwnd - cc.bytes_in_flight, now)
            if ensembles is not None:
                ensembles.note(c)  # type: ignore[arg-type]


def _start(conns: list[Conn], ensembles: SlowStartEnsembles | None) -> None:
    for c in conns:
        c.loss.cc.on_sent(c.loss.cc.cwnd, 0.0)  # the first flight: the initial window
        if ensembles is not None:
            ensembles.note(c)  # type: ignore[arg-type]


def _run_staggered(ensembles: SlowStartEnsembles | None) -> tuple[list[int], list[int]]:
    """Four connections to one host start a round trip before twenty more (a server's
    first-served few); the windows of both groups after eight more round trips."""
    rtt = RttEstimator()
    leaders = [Conn("10.0.0.1", 1000 + i) for i in range(4)]
    laggers = [Conn("10.0.0.1", 2000 + i) for i in range(20)]
    _start(leaders, ensembles)
    _round(leaders, ensembles, 0.0, rtt)
    _start(laggers, ensembles)
    for r in range(1, 9):
        _round(leaders + laggers, ensembles, r * RTT, rtt)
    return [c.loss.cc.cwnd for c in leaders], [c.loss.cc.cwnd for c in laggers]


def test_a_round_trip_lead_stays_twofold_without_the_ensemble() -> None:
    leaders, laggers = _run_staggered(None)
    assert min(leaders) == 2 * max(laggers)


def test_the_ensemble_lets_the_later_connections_catch_up() -> None:
    ensembles = SlowStartEnsembles()
    leaders, laggers = _run_staggered(ensembles)
    assert max(leaders) * CEILING_DEN <= min(laggers) * CEILING_NUM  # within the ceiling
    # and the ensemble still grew: the laggers doubled at every round trip but the ones
    # where they reached the leaders' window, which then doubled on
    free_leaders, free_laggers = _run_staggered(None)
    assert min(laggers) >= max(free_laggers) // 2
    assert sum(leaders) + sum(laggers) >= (sum(free_leaders) + sum(free_laggers)) // 3


def test_windows_that_grow_together_are_not_held() -> None:
    ensembles = SlowStartEnsembles()
    rtt = RttEstimator()
    conns = [Conn("10.0.0.1", 1000 + i) for i in range(16)]
    start = conns[0].loss.cc.cwnd
    _start(conns, ensembles)
    for r in range(10):
        _round(conns, ensembles, r * RTT, rtt)
    assert all(c.loss.cc.cwnd == start << 10 for c in conns)


def test_a_ceiling_needs_enough_window_limited_connections_to_one_host() -> None:
    ensembles = SlowStartEnsembles()
    # a leader and ENSEMBLE_MIN - 2 others to one host, and more to another host
    leader = Conn("10.0.0.1", 1)
    leader.loss.cc.cwnd *= 4
    same = [Conn("10.0.0.1", 2 + i) for i in range(ENSEMBLE_MIN - 2)]
    other = [Conn("10.0.0.2", 2 + i) for i in range(ENSEMBLE_MIN)]
    for c in [leader, *same, *other]:
        c.loss.cc.on_sent(c.loss.cc.cwnd, 0.0)
        ensembles.note(c)  # type: ignore[arg-type]
    assert leader.loss.cc.ss_ceiling == NO_CEILING  # ENSEMBLE_MIN - 1 members
    # one more connection to its host, but with window to spare: not a member
    spare = Conn("10.0.0.1", 100)
    ensembles.note(spare)  # type: ignore[arg-type]
    ensembles.note(leader)  # type: ignore[arg-type]
    assert leader.loss.cc.ss_ceiling == NO_CEILING
    spare.loss.cc.on_sent(spare.loss.cc.cwnd, 0.0)
    ensembles.note(spare)  # now window-limited: the host has ENSEMBLE_MIN members
    ensembles.note(leader)  # type: ignore[arg-type]
    window = spare.loss.cc.cwnd
    mean = (4 * window + (ENSEMBLE_MIN - 1) * window) / ENSEMBLE_MIN
    ceiling = mean * CEILING_NUM / CEILING_DEN
    assert abs(leader.loss.cc.ss_ceiling - ceiling) <= 2  # (rates in whole bytes/s)
    # at the ceiling, slow start holds the leader's window; a lagger's grows
    rtt = RttEstimator()
    leader.loss.cc.on_acked(window, 0.0, RTT, rtt)
    assert leader.loss.cc.cwnd == 4 * window
    lagger = same[0].loss.cc
    ensembles.note(same[0])  # type: ignore[arg-type]
    lagger.on_acked(window, 0.0, RTT, rtt)
    assert lagger.cwnd == 2 * window
    # a connection that leaves takes its window out of the mean: the ceiling goes
    ensembles.forget(id(spare))
    ensembles.note(leader)  # type: ignore[arg-type]
    assert leader.loss.cc.ss_ceiling == NO_CEILING


def test_a_longer_path_to_the_same_host_gets_the_window_its_rate_needs() -> None:
    """Eight connections on a 20 ms path and one on an 80 ms path (a relay) to the same
    host: the long one's window of twice theirs is half their rate, so slow start still
    grows it; one of twice their rate on the short path stops."""
    ensembles = SlowStartEnsembles()
    rtt = RttEstimator()
    short = [Conn("10.0.0.1", i) for i in range(ENSEMBLE_MIN)]
    far = Conn("10.0.0.1", 100, rtt=4 * RTT)
    near = Conn("10.0.0.1", 101)
    far.loss.cc.cwnd *= 2
    near.loss.cc.cwnd *= 2
    for c in [*short, far, near]:
        c.loss.cc.on_sent(c.loss.cc.cwnd, 0.0)
        ensembles.note(c)  # type: ignore[arg-type]
    ensembles.note(far)  # type: ignore[arg-type]
    window = far.loss.cc.cwnd
    far.loss.cc.on_acked(window // 2, 0.0, RTT, rtt)
    assert far.loss.cc.cwnd == window + window // 2
    ensembles.note(near)  # type: ignore[arg-type]
    near.loss.cc.on_acked(window // 2, 0.0, RTT, rtt)
    assert near.loss.cc.cwnd == window


def test_a_zero_round_trip_time_counts_as_a_microsecond() -> None:
    ensembles = SlowStartEnsembles()
    conns = [Conn("10.0.0.1", i, rtt=0.0) for i in range(ENSEMBLE_MIN)]
    for c in conns:
        assert c.loss.rtt.smoothed_rtt == 0.0
        c.loss.cc.on_sent(c.loss.cc.cwnd, 0.0)
        ensembles.note(c)  # type: ignore[arg-type]
    window = conns[0].loss.cc.cwnd
    assert ensembles.hosts["10.0.0.1"].total == ENSEMBLE_MIN * int(window / 1e-6)
    assert abs(conns[-1].loss.cc.ss_ceiling - window * CEILING_NUM / CEILING_DEN) <= 2


def test_members_are_counted_once_and_forgotten_in_full() -> None:
    ensembles = SlowStartEnsembles()
    conns = [Conn("10.0.0.1", i) for i in range(ENSEMBLE_MIN)]
    for _ in range(3):
        for c in conns:
            c.loss.cc.on_sent(c.loss.cc.cwnd - c.loss.cc.bytes_in_flight, 0.0)
            ensembles.note(c)  # type: ignore[arg-type]
    host = ensembles.hosts["10.0.0.1"]
    assert len(host.rates) == ENSEMBLE_MIN
    assert host.total == sum(int(c.loss.cc.cwnd / RTT) for c in conns)
    # a peer that moved to another host leaves the first host's ensemble
    conns[0].peer_address = ("10.0.0.9", 1)
    ensembles.note(conns[0])  # type: ignore[arg-type]
    assert len(host.rates) == ENSEMBLE_MIN - 1
    assert ensembles.member_of[id(conns[0])] == "10.0.0.9"
    for c in conns:
        ensembles.forget(id(c))
    assert not ensembles.hosts and not ensembles.member_of


@pytest.mark.parametrize("shared", [True, False])
def test_downloads_to_one_host_carry_the_ceiling_and_arrive_intact(shared: bool) -> None:
    """Real loopback connections: a dozen concurrent 2 MiB downloads from one client
    process arrive intact (hashes), server connections report their host's ceiling in
    ``stats()`` while they are window-limited (none with ``shared_slow_start=False``),
    and the ensemble is empty once the server has closed."""
    size = 2 << 20
    count = 12
    faces: list[quicflow.QuicConnection] = []
    ceilings: list[int] = []

    async def download(port: int, seed: int) -> dict[str, object]:
        async with quicflow.connect("127.0.0.1", port, configuration=client_config()) as c:
            reader, writer = await c.create_stream()
            return await echo_proto.client_exchange(
                reader, writer, upload=b"", download=size, seed=seed)

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(shared_slow_start=shared),
            connection_handler=faces.append)
        try:
            port = server.address[1]

            async def watch() -> None:
                while True:
                    for f in faces:
                        ceiling = f.stats()["connection"]["slow_start_ceiling"]
                        if ceiling is not None:
                            ceilings.append(ceiling)
                    await asyncio.sleep(0.001)

            watcher = asyncio.create_task(watch())
            results = await asyncio.gather(*(download(port, i) for i in range(count)))
            watcher.cancel()
            assert all(r["ok"] for r in results), results
        finally:
            server.close()
            await server.wait_closed()

    run(main())
    if shared:
        assert ceilings, "no server connection was given a ceiling"
    else:
        assert not ceilings, "a connection that opted out was given a ceiling"
    assert not faces[0].runner._ensembles.hosts  # everyone left
