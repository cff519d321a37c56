"""Receive side: installing the keys TLS hands over (Initial/Handshake packet
protectors, the 1-RTT keys in the offload engine) and answering a peer's key update."""

from __future__ import annotations

from typing import Any

from ..crypto.epoch import Epoch
from ..crypto.keys import (
    PacketProtector,
    derive_hp_key,
    next_generation_secret,
)
from ..crypto.suites import CipherSuite
from . import qlog
from .connection import Connection

_ONE_RTT = Epoch.ONE_RTT  # (a global: an enum class attribute costs about four times more)


def install_secret(
    conn: Connection, epoch: Epoch, is_send: bool, suite: CipherSuite, secret: bytes
) -> None:
    """A traffic secret from TLS: a packet protector for Initial/Handshake/0-RTT; for
    1-RTT, kept until both directions are known, then the engine is programmed."""
    if epoch == _ONE_RTT:
        if conn.qlog is not None:
            qlog.key_updated(conn, conn._now_hint, epoch, is_send, "tls")
        conn.cipher_suite = suite
        if is_send:
            conn.one_rtt_send_secret = secret
        else:
            conn.one_rtt_recv_secret = secret
        if conn.one_rtt_send_secret and conn.one_rtt_recv_secret and not conn.one_rtt_ready:
            program_engine(conn)
        return
    if conn.qlog is not None:
        qlog.key_updated(conn, conn._now_hint, epoch, is_send, "tls")
    protector = PacketProtector.for_secret(suite, secret, conn.version)
    if is_send:
        conn.send_protectors[epoch] = protector
    else:
        conn.recv_protectors[epoch] = protector


def program_engine(conn: Connection) -> None:
    """Install the 1-RTT keys in the offload engine under every CID in use."""
    engine = conn.engine
    suite = conn.cipher_suite
    # the header-protection keys stay the same across key updates: kept on the
    # connection; the first time, the engine derives them with the packet keys (the
    # same "quic hp" expansion as derive_hp_key) and they are read back from its entries
    recv_hp = conn.one_rtt_recv_hp or None
    send_hp = conn.one_rtt_send_hp or None
    largest = conn.spaces[2].largest_received
    first: bytes | None = None
    opener: Any = None
    for entry in conn.host_cids:
        if entry.retired:
            continue
        if first is None:
            # (install returns the entry: its hp key without a key_state look-up)
            opener = engine.install(entry.cid, suite, conn.one_rtt_recv_secret, opener=True,
                                    largest_pn=largest, hp_key=recv_hp, version=conn.version)
            first = entry.cid
        else:
            engine.alias(entry.cid, first, opener=True)
    if recv_hp is None:
        conn.one_rtt_recv_hp = (
            opener.hp_key if first is not None
            else derive_hp_key(suite, conn.one_rtt_recv_secret, conn.version)
        )
    # the sealer is keyed by a local key, never by the peer's CID (which it chooses);
    # both directions start in key phase 0 (the engine keeps the phases from then on)
    sealer = engine.install(conn.seal_key, suite, conn.one_rtt_send_secret, opener=False,
                            hp_key=send_hp, version=conn.version)
    if send_hp is None:
        conn.one_rtt_send_hp = sealer.hp_key
    conn.one_rtt_ready = True


def on_peer_key_update(conn: Connection) -> None:
    """A packet in the next key phase opened (the engine has rotated its receive keys).

    If we started the update, this is the peer's answer; otherwise the peer started it
    and we update our send keys too (RFC 9001 §6.2).
    """
    suite = conn.cipher_suite
    conn.one_rtt_recv_secret = next_generation_secret(suite, conn.one_rtt_recv_secret,
                                                      conn.version)
    conn.key_updates_received += 1
    # the next update waits three PTOs: the peer may still be on the old keys' timer
    conn.key_update_allowed_at = conn._now_hint + 3 * conn.pto()
    if conn.qlog is not None:
        qlog.key_updated(conn, conn._now_hint, _ONE_RTT, False, "remote_update",
                         key_phase=conn.recv_key_phase)
    if conn.send_key_phase == conn.recv_key_phase:
        return  # the peer answered the update we started
    conn.key_phase_first_pn = conn.spaces[2].next_pn
    conn.one_rtt_send_secret = next_generation_secret(suite, conn.one_rtt_send_secret,
                                                      conn.version)
    conn.engine.update(conn.seal_key, opener=False)
    if conn.qlog is not None:
        qlog.key_updated(conn, conn._now_hint, _ONE_RTT, True, "remote_update",
                         key_phase=conn.send_key_phase)


__all__ = ["install_secret", "on_peer_key_update", "program_engine"]
