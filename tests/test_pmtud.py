"""DPLPMTUD in the sans-I/O core (RFC 8899, RFC 9000 §14.3), two endpoints in memory
whose links drop datagrams above an MTU silently (tests/support/memory_pair.py)."""

from __future__ import annotations

import hashlib
import os

import pytest

from quicflow.tls.certs import generate_self_signed
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.pmtud import BASE_PLPMTU, probe_due
from quicflow.transport.snapshot import restore_connection, snapshot_connection
from tests.support.memory_pair import SERVER_ADDR, MemoryPair

_CERT = generate_self_signed(["localhost"])


def _pair(mds: int = 1452, *, pmtud: bool = True, mtu: int = 65527, seed: int = 1,
          loss: float = 0.0, pacing: str = "auto") -> MemoryPair:
    cert, key = _CERT
    pair = MemoryPair(
        seed=seed, loss=loss,
        client_config=Configuration(alpn_protocols=["perf"], verify_peer=False,
                                    max_datagram_size=mds, pmtud=pmtud, pacing=pacing),
        server_config=Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                                    private_key=key, max_datagram_size=mds, pmtud=pmtud,
                                    pacing=pacing),
    )
    pair.up.mtu = pair.down.mtu = mtu
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    return pair


def _probing(pair: MemoryPair) -> MemoryPair:
    """Let both ends' first probe go (one PTO after the handshake is confirmed)."""
    conns = (pair.client, pair.server_conns[0])
    pair.run(lambda: all(c.pmtud.probes_sent for c in conns), max_time=5)
    return pair


def _upload(pair: MemoryPair, size: int, *, during: object = None) -> tuple[Connection, bool]:
    """Client uploads ``size`` random bytes on one stream; returns (server conn, intact)."""
    client = pair.client
    server = pair.server_conns[0]
    sid = client.open_stream()
    data = os.urandom(size)
    client.send_stream_data(sid, data, end_stream=True)
    got = bytearray()

    def done() -> bool:
        if callable(during):
            during(len(got))
        server.pop_events()
        while sid in server.streams:
            chunk = server.read_stream(sid, 1 << 20)
            if not chunk:
                break
            got.extend(chunk)
        return len(got) == size

    pair.run(done, max_time=120)
    return server, hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_starts_at_1200_and_reaches_the_ceiling() -> None:
    """Both ends start at 1200 and probe up to the configured ceiling (1452) on a path
    that carries it; the data arrives intact."""
    pair = _pair()
    client = pair.client
    assert client.max_datagram_size == BASE_PLPMTU  # nothing raised before probing
    _probing(pair)
    server, intact = _upload(pair, 2_000_000)
    assert intact
    for conn in (client, server):
        assert conn.max_datagram_size == 1452
        assert conn.cc.max_datagram_size == conn.pacer.max_datagram_size == 1452
        assert conn.pmtud.probes_acked >= 1
        assert conn.pmtud.candidate == 0  # search complete: raise timer armed
    # the largest datagram that crossed the link is the probe size, never more
    assert pair.up.too_big == 0


@pytest.mark.parametrize("pacing", ["on", "off"])  # ("off": as on a loopback path)
def test_probes_stay_within_the_window_and_still_raise_the_size(pacing: str) -> None:
    """A probe goes only within the congestion window (RFC 9002 §7; the recovery case:
    test_recovery_credit.py), yet a search that starts mid-transfer still raises the
    size when nothing paces the sender and each run fills the window: the probe goes
    first in a build while the window has room for it."""
    pair = _pair(pacing=pacing)
    client = pair.client
    worst = 0
    started = False

    def check(got: int) -> None:
        nonlocal worst, started
        cc = client.loss.cc
        worst = max(worst, cc.bytes_in_flight - cc.cwnd)
        if got > 1_000_000 and not started:  # the first search begins mid-transfer
            started = True
            client.pmtud.next_at = pair.now

    server, intact = _upload(pair, 8_000_000, during=check)
    assert intact and started
    assert worst <= 0  # (no loss: no recovery packet beyond the window either)
    assert client.pmtud.probes_acked >= 1 and client.max_datagram_size == 1452


def test_first_probe_one_pto_after_confirmation() -> None:
    """No probe before one PTO has passed since the handshake was confirmed (a
    connection that ends at once gains nothing from a larger size); then each end
    probes, and a connection closed before that never probes at all."""
    pair = _pair()
    client, server = pair.client, pair.server_conns[0]
    confirmed = pair.now
    pto = max(client.pto(), server.pto())
    pair.run(lambda: pair.now >= confirmed + 0.9 * min(client.pto(), server.pto()))
    assert client.pmtud.probes_sent == server.pmtud.probes_sent == 0
    assert client.max_datagram_size == server.max_datagram_size == BASE_PLPMTU
    _probing(pair)
    assert pair.now <= confirmed + 2 * pto  # not much later either
    pair.run(lambda: client.max_datagram_size == server.max_datagram_size == 1452)

    short = _pair()
    c, s = short.client, short.server_conns[0]
    c.close(0, "done", now=short.now)
    short.run(lambda: c.terminated and s.terminated, max_time=30)
    assert c.pmtud.probes_sent == s.pmtud.probes_sent == 0


def test_binary_search_finds_an_mtu_between_base_and_ceiling() -> None:
    """A path of 1400 bytes under a ceiling of 1452: the first (optimistic) probe is
    lost, the binary search ends exactly at 1400, and no probe loss is a congestion
    event (RFC 9000 §14.4)."""
    pair = _probing(_pair(mtu=1400))
    client = pair.client
    server, intact = _upload(pair, 3_000_000)
    assert intact
    assert client.max_datagram_size == 1400
    assert client.pmtud.probes_lost >= 3  # 1452 tried MAX_PROBES times
    assert pair.up.too_big == client.pmtud.probes_lost  # only probes were too big
    assert client.cc.congestion_events == 0, "a lost probe reduced the window"


def test_without_pmtud_the_configured_size_is_used_at_once() -> None:
    pair = _pair(pmtud=False)
    assert pair.client.max_datagram_size == 1452
    _, intact = _upload(pair, 200_000)
    assert intact
    assert pair.client.pmtud.probes_sent == 0
    assert pair.server_conns[0].pmtud.probes_sent == 0


def test_black_hole_falls_back_to_1200_and_searches_again() -> None:
    """After the search reached 1452 the path starts dropping everything above 1280
    without a word (no ICMP): the sender detects the black hole, falls back to 1200,
    the upload completes intact, and a new search settles at 1280."""
    pair = _pair()
    pair.run(lambda: pair.client.max_datagram_size == 1452)

    def shrink(received: int) -> None:
        if received > 500_000:
            pair.up.mtu = pair.down.mtu = 1280

    server, intact = _upload(pair, 4_000_000, during=shrink)
    client = pair.client
    assert intact
    assert client.pmtud.black_holes >= 1
    pair.run(lambda: client.pmtud.candidate == 0, max_time=200)  # the new search ends
    assert client.max_datagram_size == 1280


def test_black_hole_detection_spares_random_loss() -> None:
    """5 % random loss both ways is no black hole: the size stays at the ceiling."""
    pair = _pair(loss=0.05, seed=3)
    pair.run(lambda: pair.client.max_datagram_size == 1452, max_time=60)
    _, intact = _upload(pair, 3_000_000)
    assert intact
    assert pair.client.pmtud.black_holes == 0
    assert pair.client.max_datagram_size == 1452


def test_state_survives_a_snapshot() -> None:
    """The search state is captured and restored with the connection."""
    pair = _probing(_pair(mtu=1400))
    _upload(pair, 1_000_000)
    server = pair.client
    pair.run(lambda: server.pmtud.candidate == 0)  # its search is done
    server.pop_events()
    before = (server.max_datagram_size, server.pmtud.low, server.pmtud.probes_sent)
    blob = snapshot_connection(server, pair.now, release=True)
    restored, _ = restore_connection(blob, engine=server.engine, now=pair.now + 1)
    after = (restored.max_datagram_size, restored.pmtud.low, restored.pmtud.probes_sent)
    assert after == before == (1400, 1400, before[2])
    assert restored.pmtud.next_at == server.pmtud.next_at + 1  # the raise timer moved


def test_a_connection_restored_before_its_wait_began_still_waits_one_pto() -> None:
    """The first probe goes one PTO after the first send that follows confirmation
    (``next_at`` 0.0 until then). A connection captured before that send kept the marker
    only as a time like any other: shifted by the capture-to-restore delay, it became a
    moment in the past and the restored connection probed at its first send."""
    pair = _pair()
    client = pair.client
    assert client.handshake_confirmed and client.pmtud.next_at == 0.0  # not yet sent
    client.pop_events()
    blob = snapshot_connection(client, pair.now, release=True)
    later = pair.now + 30.0
    restored, _ = restore_connection(blob, engine=client.engine, now=later)
    assert restored.handshake_confirmed and restored.one_rtt_ready
    assert not probe_due(restored, later)  # its first send: the wait starts
    assert restored.pmtud.next_at == later + restored.pto()
    assert not probe_due(restored, later + restored.pto() / 2)
    assert probe_due(restored, restored.pmtud.next_at)  # one PTO later, the search
    assert restored.pmtud.started and restored.pmtud.probes_sent == 0


def test_one_burst_of_congestion_loss_is_no_black_hole() -> None:
    """A receive buffer overflows once: a flight's full-size datagrams are dropped while
    the small ones sent right after them get through. The burst is declared lost in
    pieces, with no full-size packet acknowledged in between: the ACK of the first
    small packet (all but the last two full-size ones, packet threshold), the delayed
    ACK of the second (one more) and the time threshold (the last one, RFC 9002 §6.1).
    That is one loss event, not three: no black hole, the size stays at 1452."""
    pair = _pair()
    client, server = pair.client, pair.server_conns[0]
    pair.run(lambda: client.max_datagram_size == 1452 and client.pmtud.candidate == 0)
    ep = pair.client_ep
    client.send_stream_data(client.open_stream(), os.urandom(8 * 1400), end_stream=True)
    flight = ep.datagrams_to_send(client, pair.now)
    assert len(flight) >= 4 and all(len(d) > BASE_PLPMTU for d in flight)
    smalls: list[bytes] = []
    for _ in range(2):  # small writes, each in a datagram of its own
        client.send_stream_data(client.open_stream(), b"x" * 100, end_stream=True)
        smalls += ep.datagrams_to_send(client, pair.now)
    assert len(smalls) == 2 and all(len(d) <= BASE_PLPMTU for d in smalls)
    pieces = []
    for d in smalls:  # the full-size ones are dropped, the small ones arrive
        pair.now += 0.001
        pair.server.receive(d, pair.client_addr, pair.now)
        acks = pair.server.datagrams_to_send(server, pair.now)
        if not acks:  # the second: acknowledged after the ACK delay
            pair.now = server.timer() or pair.now
            server.handle_timer(pair.now)
            acks = pair.server.datagrams_to_send(server, pair.now)
        lost = client.counters.packets_lost
        for ack in acks:
            ep.receive(ack, SERVER_ADDR, pair.now)
        pieces.append(client.counters.packets_lost - lost)
    lost = client.counters.packets_lost
    loss_time = client.loss.spaces[2].loss_time  # the last one: by the time threshold
    assert loss_time is not None
    pair.now = loss_time
    client.handle_timer(pair.now)
    pieces.append(client.counters.packets_lost - lost)
    assert all(pieces) and sum(pieces) == len(flight), pieces  # three pieces, one burst
    assert client.pmtud.black_holes == 0
    assert client.max_datagram_size == 1452
    _, intact = _upload(pair, 500_000)  # and the connection goes on at full size
    assert intact
    assert client.pmtud.black_holes == 0 and client.max_datagram_size == 1452
