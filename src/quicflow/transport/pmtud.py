"""Datagram packetization layer path MTU discovery (DPLPMTUD, RFC 8899; RFC 9000 §14.3).

A connection starts at BASE_PLPMTU (1200 bytes, what every QUIC path must carry) and,
one PTO after its handshake is confirmed (a connection that ends before gains nothing
from a larger size, so it never probes), probes upwards with 1-RTT packets of exactly the probe
size holding PING and PADDING. The search ceiling is the smallest of our configured
``max_datagram_size``, the peer's max_udp_payload_size and the path MTU the datapath
learned (``Connection.path_mtu_cap``: local EMSGSIZE, ICMP "fragmentation needed").
The first probe tries the ceiling itself (on a path as large as the interface it succeeds
at once); after a failure the search is binary. A size fails after MAX_PROBES lost
probes, or at once when the datapath reports a path MTU below it.

Probes are ack-eliciting and in flight, but their loss is no congestion signal (RFC 9000
§14.4): ``SentPacket.pmtu_probe`` keeps them out of congestion events. An acknowledged
probe raises the connection's datagram size (the congestion window grows to at least the
initial window of the new size, RFC 9002 §7.2).

Black holes (RFC 8899 §4.3): while the datagram size is above the base, PTO probes are
sent in datagrams of at most 1200 bytes (``send.py``), so smaller packets keep getting
through when full-size ones do not. BLACK_HOLE_LOSSES loss events in a row with
full-size packets lost and none acknowledged between them mean a black hole: the
connection falls back to 1200 bytes and searches again, first at the size that failed
(a false alarm costs one probe), then below it. A loss event counts only when a
full-size packet sent after the previous counted event is lost ("repeatedly lost",
RFC 8899 §4.3): one burst of congestion loss — a receive buffer that overflowed once —
is often declared piece by piece (an ACK of one later packet, another ACK, the
time-threshold timer for the last few, RFC 9002 §6.1), and is one event, as it is one
congestion event for the window (RFC 9002 §7.3.2). A finished search starts again after
``Configuration.pmtud_raise_interval`` (PMTU_RAISE_TIMER).

All state is plain data in :class:`Pmtud` (captured with the connection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..crypto.epoch import Epoch
from ..wire import frames as F
from ..wire.packet import build_short_header, encode_packet_number
from .congestion import initial_window
from .recovery import SentPacket
from .state import R_PING

if TYPE_CHECKING:
    from .connection import Connection

BASE_PLPMTU = 1200
MAX_PROBES = 3
BLACK_HOLE_LOSSES = 3
TAG_LEN = 16
INF = float("inf")


@dataclass(slots=True, eq=False)
class Pmtud:
    """The search state of one connection's path (RFC 8899 §5.2)."""

    enabled: bool = False
    started: bool = False  # the first search began (handshake confirmed)
    low: int = BASE_PLPMTU  # largest size known to get through
    high: int = BASE_PLPMTU  # search ceiling: largest size not known to fail
    candidate: int = 0  # size to probe next / in flight (0: search complete)
    probe_pn: int = -1  # packet number of the probe in flight (-1: none)
    tries: int = 0  # probes of ``candidate`` lost so far
    next_at: float = INF  # when a probe may go (INF: none due)
    big_loss_events: int = 0  # loss events with full-size losses and no full-size ACK
    big_loss_pn: int = -1  # largest packet number sent when the last one was counted
    # counters (stats)
    probes_sent: int = 0
    probes_acked: int = 0
    probes_lost: int = 0
    black_holes: int = 0
    searches: int = 0


def new_pmtud(enabled: bool) -> Pmtud:
    # 0.0: the first send after the handshake is confirmed sets the first search's start
    # (one PTO later, ``probe_due``)
    return Pmtud(enabled=enabled, next_at=0.0 if enabled else INF)


def search_ceiling(conn: Connection) -> int:
    """The largest size the search may try."""
    peer = conn.peer_params.max_udp_payload_size if conn.peer_params is not None else 65527
    return max(BASE_PLPMTU, min(conn.configuration.max_datagram_size, peer, conn.path_mtu_cap))


def set_datagram_size(conn: Connection, size: int) -> None:
    """Send datagrams of ``size`` from now on (congestion window per RFC 9002 §7.2)."""
    grew = size > conn.max_datagram_size
    conn.max_datagram_size = size
    conn.cc.max_datagram_size = size
    conn.pacer.max_datagram_size = size
    if grew:
        conn.cc.cwnd = max(conn.cc.cwnd, initial_window(size))


def _start_search(pm: Pmtud, conn: Connection, now: float, high: int) -> None:
    pm.low = conn.max_datagram_size
    pm.high = max(pm.low, high)
    pm.tries = 0
    pm.probe_pn = -1
    if pm.high > pm.low:
        pm.candidate = pm.high  # optimistic: the ceiling first
        pm.next_at = now
        pm.searches += 1
    else:
        _search_done(pm, conn, now)


def _search_done(pm: Pmtud, conn: Connection, now: float) -> None:
    pm.candidate = 0
    pm.probe_pn = -1
    pm.next_at = now + conn.configuration.pmtud_raise_interval


def _next_candidate(pm: Pmtud, conn: Connection, now: float) -> None:
    pm.tries = 0
    pm.probe_pn = -1
    if pm.high <= pm.low:
        _search_done(pm, conn, now)
        return
    pm.candidate = (pm.low + pm.high + 1) // 2
    pm.next_at = now


def probe_due(conn: Connection, now: float) -> bool:
    """Whether a probe (or the start of a search) is due; cheap enough for every send."""
    pm = conn.pmtud
    if now < pm.next_at or not conn.handshake_confirmed or not conn.one_rtt_ready:
        return False
    if not conn.is_client and not conn.address_validated:
        # (server) a peer that moved to an address not yet validated: a probe would go past the
        # 3x limit on what it sent from there (RFC 9000 §8, §9.3); looked at again in
        # a PTO (the connection's timer must not come due at once again)
        pm.next_at = now + conn.pto()
        return False
    if not pm.started or pm.candidate == 0:  # first search, or the raise timer expired
        if pm.next_at == 0.0:
            # the first send after confirmation: the first search starts one PTO later,
            # so a connection that ends at once never probes (it would gain nothing)
            pm.next_at = now + conn.pto()
            return False
        pm.started = True
        if pm.candidate == 0:
            conn.path_mtu_cap = 65527 if pm.searches else conn.path_mtu_cap
            _start_search(pm, conn, now, search_ceiling(conn))
    return pm.candidate > 0 and pm.probe_pn < 0 and now >= pm.next_at


def build_probe(
    conn: Connection, now: float, buf: bytearray, seal: list[tuple[int, int, int, int, bytes]]
) -> int:
    """Append one probe datagram (PING + PADDING, exactly ``candidate`` bytes) to
    ``buf``; returns its size (0 when none fits)."""
    pm = conn.pmtud
    size = pm.candidate
    if size > conn.path_mtu_cap:  # the datapath already knows it cannot pass
        on_path_mtu_cap(conn, now)
        return 0
    space = conn.spaces[2]
    pn = space.next_pn
    _, pn_len = encode_packet_number(pn, space.largest_acked if space.largest_acked >= 0
                                     else None)
    header = build_short_header(conn.peer_cid, pn, pn_len, 0)  # the engine sets the phase
    payload_len = size - len(header) - TAG_LEN
    if payload_len < 4:
        return 0
    payload = bytearray(payload_len)  # PADDING is 0x00
    payload[0] = F.PING
    offset = len(buf)
    buf += header
    buf += payload
    buf += bytes(TAG_LEN)
    seal.append((offset, len(header), payload_len, pn, conn.seal_key))
    space.next_pn = pn + 1
    if conn.qlog is not None:
        from .qlog import packet_sent

        packet_sent(conn, now, Epoch.ONE_RTT, pn, payload, size)
    packet = SentPacket(pn=pn, time_sent=now, size=size, ack_eliciting=True, in_flight=True,
                        epoch=Epoch.ONE_RTT, frames=[(R_PING,)], pmtu_probe=True)
    conn.loss.on_packet_sent(packet)
    counters = conn.counters
    counters.packets_sent += 1
    counters.datagrams_sent += 1
    counters.bytes_sent += size
    pm.probe_pn = pn
    pm.next_at = INF  # the next one when this one is acknowledged or lost
    pm.probes_sent += 1
    return size


def on_probe_acked(conn: Connection, packet: SentPacket, now: float) -> None:
    pm = conn.pmtud
    if packet.pn != pm.probe_pn:
        return  # a probe given up on earlier (its size failed meanwhile)
    pm.probes_acked += 1
    pm.low = max(pm.low, packet.size)
    if packet.size > conn.max_datagram_size:
        set_datagram_size(conn, packet.size)
    pm.big_loss_events = 0
    _next_candidate(pm, conn, now)


def on_probe_lost(conn: Connection, packet: SentPacket, now: float) -> None:
    pm = conn.pmtud
    if packet.pn != pm.probe_pn:
        return
    pm.probes_lost += 1
    pm.tries += 1
    pm.probe_pn = -1
    if pm.tries >= MAX_PROBES:
        on_size_failed(conn, now)
    else:
        pm.next_at = now


def on_size_failed(conn: Connection, now: float) -> None:
    """``candidate`` does not get through: search below it."""
    pm = conn.pmtud
    if pm.probe_pn >= 0:
        pm.probes_lost += 1
    pm.high = min(pm.high, pm.candidate - 1, max(conn.path_mtu_cap, pm.low))
    _next_candidate(pm, conn, now)


def on_path_mtu_cap(conn: Connection, now: float) -> None:
    """The datapath learned a smaller path MTU (``path_mtu_cap``): a probe above it
    fails now, and the search ceiling comes down."""
    pm = conn.pmtud
    pm.low = min(pm.low, conn.max_datagram_size)
    cap = conn.path_mtu_cap
    if pm.candidate > cap:
        # the kernel's path MTU is exact: try it next (the ICMP may be stale; then the
        # binary search below it goes on as usual)
        if pm.probe_pn >= 0:
            pm.probes_lost += 1
        pm.high = max(pm.low, cap)
        pm.tries = 0
        pm.probe_pn = -1
        if pm.high > pm.low:
            pm.candidate = pm.high
            pm.next_at = now
        else:
            _search_done(pm, conn, now)
    elif pm.high > cap:
        pm.high = max(pm.low, cap)


def on_losses(conn: Connection, lost: list[SentPacket], now: float) -> None:
    """Probes among ``lost`` fail; other full-size losses count towards a black hole: a
    loss event with full-size packets lost, BLACK_HOLE_LOSSES times in a row without an
    ACK of a full-size packet between them (:func:`on_acks` resets the count). Only
    full-size packets sent after the previous counted event make a new one: the rest
    of a burst already counted (declared lost later, by another ACK or by time) is the
    same event."""
    pm = conn.pmtud
    big = False
    after = pm.big_loss_pn
    for p in lost:
        if p.pmtu_probe:
            on_probe_lost(conn, p, now)
        elif conn.max_datagram_size > BASE_PLPMTU and p.pn + p.count - 1 > after and (
            p.unit if p.count > 1 else p.size
        ) > BASE_PLPMTU:
            big = True
    if big:
        pm.big_loss_events += 1
        pm.big_loss_pn = conn.spaces[2].next_pn - 1
        if pm.big_loss_events >= BLACK_HOLE_LOSSES:
            black_hole(conn, now)


def on_acks(conn: Connection, acked: list[SentPacket], now: float) -> bool:
    """Handle acknowledged probes; returns whether a full-size packet was acknowledged."""
    big = False
    for p in acked:
        if p.pmtu_probe:
            on_probe_acked(conn, p, now)
        elif (p.unit if p.count > 1 else p.size) > BASE_PLPMTU:
            big = True
    if big:
        conn.pmtud.big_loss_events = 0
    return big


def black_hole(conn: Connection, now: float) -> None:
    """Fall back to BASE_PLPMTU and search again below the size that failed."""
    pm = conn.pmtud
    failed = conn.max_datagram_size
    pm.black_holes += 1
    pm.big_loss_events = 0
    pm.big_loss_pn = conn.spaces[2].next_pn - 1  # (the rest of the flight: no evidence)
    set_datagram_size(conn, BASE_PLPMTU)
    if pm.enabled:
        _start_search(pm, conn, now, failed)
        pm.started = True


def restart(conn: Connection, now: float) -> None:
    """A new path (another peer host): start again from the base size."""
    pm = conn.pmtud
    set_datagram_size(conn, BASE_PLPMTU)
    conn.path_mtu_cap = 65527
    pm.candidate = 0
    pm.probe_pn = -1
    pm.started = False
    pm.next_at = now if pm.enabled else INF


def stats(conn: Connection) -> dict[str, int | bool]:
    pm = conn.pmtud
    return {
        "pmtud": pm.enabled,
        "pmtud_probes_sent": pm.probes_sent,
        "pmtud_probes_acked": pm.probes_acked,
        "pmtud_probes_lost": pm.probes_lost,
        "pmtud_black_holes": pm.black_holes,
        "pmtud_searches": pm.searches,
        "mtu": conn.max_datagram_size,
    }
