"""Path validation of new paths (RFC 9000 §8.2, §9): client migration, the server's
preferred address (§9.6), and answering probes that arrive off the current path.

A client moves in two steps. :func:`start_probe` picks a peer connection ID never used
before and opens a :class:`~.path.PathProbe`; :func:`probe_datagrams` builds its
datagrams (PATH_CHALLENGE padded to 1200 bytes, with that CID) for the caller to send on
the new path, while everything else keeps going on the current path. When the
PATH_RESPONSE arrives (on any path) :func:`complete_probe` moves the connection: the new
CID and address from now on, the old CID retired, RTT and congestion state restarted
(§9.4), :class:`~.events.PathMigrated`. Without an answer by the probe's deadline
(three times the larger of the current PTO and a new path's initial PTO, §8.2.4) the
connection stays where it was and :class:`~.events.PathProbeFailed` says so.

Both roles: a packet with only probing frames (PATH_CHALLENGE, PATH_RESPONSE,
NEW_CONNECTION_ID, PADDING) from an address that is not the peer's current one does not
move the connection (§9.1, §9.3); its PATH_CHALLENGE is answered on the path it came
from (``off_path_challenges``, at most 3x the bytes that path brought, §8.2.2, §8.1).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..crypto.epoch import Epoch
from ..wire import frames as F
from ..wire.packet import build_short_header, encode_packet_number
from ..wire.tparams import PreferredAddress, TransportParameters
from .errors import TRANSPORT_PARAMETER_ERROR, QuicError
from .events import PathMigrated, PathProbeFailed, PreferredAddressAvailable
from .path import PROBE_MIGRATE, PROBE_PREFERRED, Address, PathProbe, set_pacing
from .pmtud import restart as restart_pmtud
from .recovery import SentPacket
from .rtt import RttEstimator
from .state import CLOSING, PeerCid

if TYPE_CHECKING:
    from .connection import Connection

TAG_LEN = 16
#: Frame types that only probe a path (RFC 9000 §9.1); anything else is non-probing.
PROBING_FRAMES = frozenset({F.PathChallenge, F.PathResponse, F.NewConnectionId, F.Padding})
#: PATH_CHALLENGE answers kept for other paths (a flood must not grow the connection).
MAX_OFF_PATH_CHALLENGES = 4
#: PATH_CHALLENGE datagrams sent on one probe at most (the first and resends).
MAX_PROBE_SENDS = 5
#: The sequence number of the connection ID in preferred_address (RFC 9000 §5.1.1).
PREFERRED_CID_SEQ = 1


class MigrationError(Exception):
    """A migration that cannot start (the message says why)."""


# ---------------------------------------------------------------------- client


def spare_peer_cid(conn: Connection, *, exclude_preferred: bool = True) -> PeerCid | None:
    """The peer's unused connection ID with the lowest sequence number (not the one
    reserved for the preferred address while that is still to be tried)."""
    best: PeerCid | None = None
    for entry in conn.peer_cids:
        if entry.sequence == conn.peer_cid_seq or entry.sequence in conn.retire_pending:
            continue
        if exclude_preferred and conn.preferred_pending and entry.sequence == PREFERRED_CID_SEQ:
            continue
        if best is None or entry.sequence < best.sequence:
            best = entry
    return best


def start_probe(
    conn: Connection, now: float, kind: int = PROBE_MIGRATE, peer_address: Address | None = None
) -> PathProbe:
    """(client) Start validating a new path; its datagrams come from
    :func:`probe_datagrams`. ``kind`` PROBE_MIGRATE: a new local address or port towards
    the same server address (``peer_address`` defaults to the current one);
    PROBE_PREFERRED: the server's preferred address (``peer_address`` required).

    Raises :class:`MigrationError` when the RFC forbids it or it cannot be done: not a
    client, handshake not confirmed, closing, a probe already running, the server set
    disable_active_migration (PROBE_MIGRATE only, §18.2), or no spare connection ID."""
    if not conn.is_client:
        raise MigrationError("only a client migrates a connection (RFC 9000 §9)")
    if conn.state >= CLOSING or conn.terminated:
        raise MigrationError("the connection is closing")
    if not conn.handshake_confirmed or not conn.one_rtt_ready:
        raise MigrationError("a connection migrates only once its handshake is confirmed "
                             "(RFC 9000 §9)")
    if conn.probe is not None:
        raise MigrationError("a migration is already in progress")
    params = conn.peer_params
    if kind == PROBE_MIGRATE and params is not None and params.disable_active_migration:
        raise MigrationError("the server does not allow migration "
                             "(it sent disable_active_migration, RFC 9000 §18.2)")
    if not conn.peer_cid:
        raise MigrationError("the server uses zero-length connection IDs: no fresh one to "
                             "migrate with")
    if kind == PROBE_PREFERRED:
        if peer_address is None:
            raise MigrationError("the preferred address is missing")
        entry = next((c for c in conn.peer_cids if c.sequence == PREFERRED_CID_SEQ), None)
        conn.preferred_pending = False
    else:
        entry = spare_peer_cid(conn)
    if entry is None:
        raise MigrationError("no spare connection ID from the server: it issued none "
                             "unused (RFC 9000 §9.5 needs a fresh one for a new path)")
    pto = max(conn.pto(), RttEstimator().pto_duration(conn.loss.max_ack_delay, True))
    probe = PathProbe(
        kind=kind,
        peer_address=tuple(peer_address if peer_address is not None else conn.peer_address),
        cid=entry.cid, cid_seq=entry.sequence, challenge=os.urandom(8),
        started=now, next_send=now, deadline=now + 3 * pto,
    )
    conn.probe = probe
    return probe


def complete_probe(conn: Connection, now: float) -> None:
    """The probe's PATH_RESPONSE came: move the connection to the new path."""
    probe = conn.probe
    assert probe is not None
    conn.probe = None
    old_seq = conn.peer_cid_seq
    entry: PeerCid | None = next((c for c in conn.peer_cids if c.sequence == probe.cid_seq),
                                 None)
    if entry is None:  # the server retired it meanwhile (Retire Prior To)
        entry = spare_peer_cid(conn, exclude_preferred=False)
    if entry is not None and entry.sequence != old_seq:
        conn.peer_cid = entry.cid
        conn.peer_cid_seq = entry.sequence
        conn.peer_cids = [c for c in conn.peer_cids if c.sequence != old_seq]
        if old_seq not in conn.retire_pending:
            conn.retire_pending.append(old_seq)
    conn.peer_address = probe.peer_address
    set_pacing(conn)
    conn.path_changes += 1
    conn.counters.migrations += 1
    conn.ecn_state = 0  # validate ECN again on the new path
    conn.loss.reset_path(now)  # RFC 9000 §9.4: fresh RTT estimate and congestion window
    restart_pmtud(conn, now)  # a new path: 1200 bytes (what the probe proved), search again
    conn.pacer.max_datagram_size = conn.max_datagram_size
    conn.events.append(PathMigrated(probe.kind, probe.peer_address))


def use_fresh_peer_cid(conn: Connection) -> None:
    """(server, following a client to a new address) Send there with a connection ID of
    the client's never used on another path, if it gave a spare one, and retire the old
    one (RFC 9000 §9.5)."""
    entry = spare_peer_cid(conn, exclude_preferred=False)
    if entry is None:
        return  # none spare: the current one goes on (allowed after a NAT rebinding)
    old_seq = conn.peer_cid_seq
    conn.peer_cid = entry.cid
    conn.peer_cid_seq = entry.sequence
    conn.peer_cids = [c for c in conn.peer_cids if c.sequence != old_seq]
    if old_seq not in conn.retire_pending:
        conn.retire_pending.append(old_seq)


def probe_timer(conn: Connection) -> float | None:
    probe = conn.probe
    if probe is None:
        return None
    return min(probe.deadline, probe.next_send) if probe.sends < MAX_PROBE_SENDS \
        else probe.deadline


def on_probe_timer(conn: Connection, now: float) -> None:
    probe = conn.probe
    if probe is None or now < probe.deadline:
        return
    conn.probe = None
    conn.counters.migrations_failed += 1
    if conn.state < CLOSING:
        conn.events.append(PathProbeFailed(
            probe.kind, probe.peer_address,
            f"no PATH_RESPONSE on the new path within {probe.deadline - probe.started:.2f} s; "
            "the connection stays on its current path",
        ))


# ---------------------------------------------------------------------- both roles


def from_probed_address(conn: Connection, addr: Address) -> bool:
    """(client) ``addr`` is the server address the running probe validates (its
    preferred address): besides the current one, the only one a client takes packets
    from (RFC 9000 §9: those of an unknown server address are discarded)."""
    probe = conn.probe
    return probe is not None and tuple(addr) == probe.peer_address


def after_one_rtt_packet(
    conn: Connection, addr: Address, newest: bool, size: int, challenges_before: int
) -> None:
    """Called for each 1-RTT packet (or run) received from ``addr`` (``newest``: it
    raised the largest packet number; ``size``: datagram bytes). A non-probing newest
    packet from a new address moves a server there (``Connection.on_peer_address``); a
    probing-only one from another address gets its PATH_CHALLENGE answered there."""
    probing = conn.last_packet_probing
    if not probing and newest:
        conn.last_non_probing_pn = conn.spaces[2].largest_received
    if addr == conn.peer_address:
        return
    if not probing:
        if newest:
            conn.on_peer_address(addr)
            conn.bytes_received_unvalidated += size
        return
    received = conn.path_challenges_received
    if len(received) <= challenges_before:
        return
    fresh = received[challenges_before:]
    del received[challenges_before:]
    out = conn.off_path_challenges
    # the datagram's 3x budget (RFC 9000 §8) goes to one answer: the last of its
    # challenges (several in one datagram are no probe a peer needs answered each, and
    # answering each in its own datagram multiplied the bytes sent to that address)
    out.append((fresh[-1], tuple(addr), 3 * size))
    if len(out) > MAX_OFF_PATH_CHALLENGES:
        del out[: len(out) - MAX_OFF_PATH_CHALLENGES]


def probe_datagrams(conn: Connection, now: float) -> list[tuple[bytes, Address]]:
    """Datagrams for paths other than the current one, with their destinations: answers
    to challenges that came from elsewhere, and (client) the running probe's
    PATH_CHALLENGE when due. Not retransmitted by loss recovery: a lost challenge is sent
    again on the probe's own timer, a lost PATH_RESPONSE is never resent (§8.2.2)."""
    conn._now_hint = now
    if conn.state >= CLOSING or not conn.one_rtt_ready or conn.terminated:
        conn.off_path_challenges.clear()
        return []
    out: list[tuple[bytes, Address]] = []
    while conn.off_path_challenges:
        data, addr, budget = conn.off_path_challenges.pop(0)
        frames = bytearray()
        F.encode_frame(F.PathResponse(data=data), frames)
        out.append((_packet(conn, conn.peer_cid, frames, min(1200, budget)), addr))
    previous = conn.previous_path
    if previous is not None and previous.challenge_pending:
        # (server) the path the peer apparently left is challenged once (RFC 9000
        # §9.3.3): a peer still there answers from it, and its newer packet brings the
        # connection back (Connection.on_peer_address); a validated path: 1200 bytes
        previous.challenge_pending = False
        frames = bytearray()
        F.encode_frame(F.PathChallenge(data=previous.challenge), frames)
        out.append((_packet(conn, conn.peer_cid, frames, 1200), previous.peer_address))
    probe = conn.probe
    if probe is not None and probe.sends < MAX_PROBE_SENDS and now >= probe.next_send:
        frames = bytearray()
        F.encode_frame(F.PathChallenge(data=probe.challenge), frames)
        out.append((_packet(conn, probe.cid, frames, 1200), probe.peer_address))
        probe.sends += 1
        conn.counters.path_probes_sent += 1
        # resend after one PTO, doubling (never more often than an Initial would go)
        interval = max(conn.pto(), 0.01) * (1 << (probe.sends - 1))
        probe.next_send = min(now + interval, probe.deadline)
    return out


def _packet(conn: Connection, dcid: bytes, frames: bytearray, size: int) -> bytes:
    space = conn.spaces[2]
    pn = space.next_pn
    space.next_pn = pn + 1
    _, pn_len = encode_packet_number(pn, space.largest_acked if space.largest_acked >= 0
                                     else None)
    header = build_short_header(dcid, pn, pn_len, 0)  # the engine sets the key phase
    room = size - len(header) - TAG_LEN
    if len(frames) < room:
        frames.extend(bytes(room - len(frames)))  # PADDING
    if pn_len + len(frames) < 4:
        frames.extend(bytes(4 - pn_len - len(frames)))
    buf = bytearray(header)
    buf += frames
    buf += bytes(TAG_LEN)
    conn.engine.seal(buf, [(0, len(header), len(frames), pn, conn.seal_key)])
    # known to recovery (so its ACK is valid), but neither in flight nor an RTT sample:
    # it went on another path
    conn.loss.on_packet_sent(SentPacket(pn=pn, time_sent=conn._now_hint, size=len(buf),
                                        ack_eliciting=False, in_flight=False,
                                        epoch=Epoch.ONE_RTT, frames=[]))
    counters = conn.counters
    counters.packets_sent += 1
    counters.datagrams_sent += 1
    counters.bytes_sent += len(buf)
    return bytes(buf)


# ---------------------------------------------------------------------- preferred address


def preferred_address_parameter(conn: Connection) -> PreferredAddress | None:
    """(server) The preferred_address transport parameter: the configured address(es)
    with the connection ID of sequence 1 the endpoint issued for it."""
    cfg = conn.configuration
    if conn.is_client or (cfg.preferred_address is None and cfg.preferred_address_v6 is None):
        return None
    entry = next((c for c in conn.host_cids if c.sequence == PREFERRED_CID_SEQ), None)
    if entry is None:
        return None
    v4 = cfg.preferred_address
    v6 = cfg.preferred_address_v6
    return PreferredAddress(
        ipv4=(v4[0], int(v4[1])) if v4 is not None else None,
        ipv6=(v6[0], int(v6[1])) if v6 is not None else None,
        connection_id=entry.cid, stateless_reset_token=entry.reset_token,
    )


def issue_preferred_cid(conn: Connection) -> None:
    """(server, at set-up) Issue the connection ID the preferred address carries (it is
    never announced with NEW_CONNECTION_ID)."""
    cfg = conn.configuration
    if conn.is_client or (cfg.preferred_address is None and cfg.preferred_address_v6 is None):
        return
    if conn.local_cid_length and len(conn.host_cids) == 1:
        conn.issue_host_cid().announced = True


def on_peer_parameters(conn: Connection, params: TransportParameters) -> None:
    """(client) Keep the preferred address's connection ID (sequence 1)."""
    pa = params.preferred_address
    if pa is None or not conn.is_client:
        return
    if not conn.peer_cid:  # RFC 9000 §18.2
        raise QuicError(TRANSPORT_PARAMETER_ERROR,
                        "preferred_address from a server with zero-length connection IDs")
    conn.peer_cids.append(PeerCid(PREFERRED_CID_SEQ, bytes(pa.connection_id),
                                  bytes(pa.stateless_reset_token)))
    conn.preferred_pending = True


def preferred_target(conn: Connection) -> Address | None:
    """The server's preferred address in the family of its current address, if any."""
    params = conn.peer_params
    if params is None or params.preferred_address is None:
        return None
    pa = params.preferred_address
    host = str(conn.peer_address[0])
    if ":" in host and not host.startswith("::ffff:"):
        return pa.ipv6 if pa.ipv6 is not None else None
    if pa.ipv4 is None:
        return None
    if ":" in host:  # an IPv4-mapped peer on a dual-stack socket
        return (f"::ffff:{pa.ipv4[0]}", pa.ipv4[1])
    return pa.ipv4


def on_handshake_confirmed(conn: Connection) -> None:
    """(client) Tell the application the server offered a preferred address it may move
    to (RFC 9000 §9.6.1; ``Configuration.use_preferred_address``)."""
    if not conn.preferred_pending:
        return
    target = preferred_target(conn)
    if target is None or not conn.configuration.use_preferred_address:
        conn.preferred_pending = False
        return
    conn.events.append(PreferredAddressAvailable(target))
