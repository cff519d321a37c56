"""The 1-RTT keys of a connection as the offload engine holds them, for snapshots.

The engine's table entry of each direction (sealer under the connection's local
``seal_key``, opener under our CIDs, never the peer's CID) is the one source of truth
for the key phase, the current secret (from which the next generation follows) and the
largest packet number. :func:`capture_keys` reads both entries into plain
:class:`DirectionKeys` values (refusing when the connection and the engine disagree),
:func:`install_keys` programs another engine with them, the sealer under the new
process's own ``seal_key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .codec import SnapshotError

if TYPE_CHECKING:
    from .connection import Connection


@dataclass(slots=True, eq=False)
class DirectionKeys:
    """One direction's 1-RTT key state in the engine."""

    key_phase: int
    secret: bytes  # current generation; the next one is "quic ku" of it
    hp_key: bytes  # never changes on key update
    largest_pn: int  # sealer: largest pn sealed; opener: largest pn opened
    phase_start_pn: int  # opener: first pn of the current phase


def _read(conn: Connection, cid: bytes, opener: bool) -> DirectionKeys:
    try:
        state = conn.engine.key_state(cid, opener=opener)
    except KeyError:
        side = "receive" if opener else "send"
        raise SnapshotError(f"the offload engine holds no {side} keys for the connection") from None
    return DirectionKeys(
        key_phase=int(state.key_phase) & 1,
        secret=bytes(state.current.secret),
        hp_key=bytes(state.hp_key),
        largest_pn=int(state.largest_pn),
        phase_start_pn=int(state.phase_start_pn),
    )


def capture_keys(conn: Connection) -> tuple[DirectionKeys, DirectionKeys]:
    """``(send, receive)`` key state of an established connection, from its engine."""
    send = _read(conn, conn.seal_key, False)
    recv = _read(conn, conn.recv_key_cid(), True)
    if send.secret != conn.one_rtt_send_secret or recv.secret != conn.one_rtt_recv_secret:
        raise SnapshotError("the connection and its offload engine disagree on the 1-RTT keys")
    return send, recv


def install_keys(conn: Connection, send: DirectionKeys, recv: DirectionKeys) -> None:
    """Program ``conn.engine`` with captured keys: the opener under every CID of ours in
    use, the sealer under ``conn.seal_key`` (the restoring process's own, fresh key;
    the capturing process's key means nothing here).

    Packets of the receive direction's previous phase (reordered across a key update)
    that arrive after this are dropped; the peer repeats their frames.
    """
    engine, suite = conn.engine, conn.cipher_suite
    conn.one_rtt_send_secret, conn.one_rtt_recv_secret = send.secret, recv.secret
    conn.one_rtt_send_hp, conn.one_rtt_recv_hp = send.hp_key, recv.hp_key
    largest = max(recv.largest_pn, conn.spaces[2].largest_received)
    first: bytes | None = None
    for entry in conn.host_cids:
        if entry.retired:
            continue
        if first is None:
            engine.install(entry.cid, suite, recv.secret, opener=True, key_phase=recv.key_phase,
                           largest_pn=largest, hp_key=recv.hp_key, version=conn.version)
            first = entry.cid
        else:
            engine.alias(entry.cid, first, opener=True)
    if first is None:
        raise SnapshotError("snapshot has no connection ID in use")
    engine.install(conn.seal_key, suite, send.secret, opener=False, key_phase=send.key_phase,
                   largest_pn=send.largest_pn, hp_key=send.hp_key, version=conn.version)
    conn.one_rtt_ready = True
