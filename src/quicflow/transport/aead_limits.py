"""The AEAD limits of a connection's packet protection (RFC 9001 §6.6).

*Confidentiality*: an endpoint must not seal more than a cipher's confidentiality limit of
packets with one key, and must start a key update before it gets there. With AES-GCM that
is 2^23 packets, about 10 GB of 1,200-byte datagrams: a few tens of seconds of one bulk
connection on a fast path. quicflow starts a 1-RTT key update once three quarters of the
limit went out with the current send keys (``Configuration.key_update_after`` makes that
sooner), and while the update cannot start yet (the peer has not acknowledged a packet of
the current phase, or the previous update is less than three PTOs old: RFC 9001 §6.1 and
§6.5) it stops sending 1-RTT packets before the limit itself. ChaCha20-Poly1305's limit
is beyond the 2^62 packet numbers of a connection: no update is needed for it.

*Integrity*: packets that fail authentication are counted over the whole connection (all
keys, ``ConnectionCounters.dropped_undecryptable``); once there are more than the
cipher's integrity limit (AES-GCM 2^52, ChaCha20-Poly1305 2^36), the connection closes at
once with AEAD_LIMIT_REACHED and processes no more packets.

``Connection.aead_limits`` overrides both limits of the negotiated suite (tests lower
them). The send check costs one comparison per build (``Connection.key_limit_pn``); the
rest runs only when a threshold is reached or a packet fails to open.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..crypto.suites import CipherSuite
from .errors import AEAD_LIMIT_REACHED

if TYPE_CHECKING:
    from .connection import Connection

#: (confidentiality limit, integrity limit) in packets, per suite (RFC 9001 §6.6)
LIMITS: dict[CipherSuite, tuple[int, int]] = {
    CipherSuite.AES_128_GCM_SHA256: (1 << 23, 1 << 52),
    CipherSuite.AES_256_GCM_SHA384: (1 << 23, 1 << 52),
    # beyond any packet number (2^62): never reached
    CipherSuite.CHACHA20_POLY1305_SHA256: (1 << 62, 1 << 36),
}
#: the strictest, for a suite not in ``LIMITS``
_STRICTEST = (1 << 23, 1 << 36)
#: a key update starts once this share of the confidentiality limit went out with a key
UPDATE_NUM, UPDATE_DEN = 3, 4
#: packets a build may add besides its ``max_datagrams`` (path MTU probes)
_EXTRA = 2


def aead_limits(conn: Connection) -> tuple[int, int]:
    """``(confidentiality, integrity)`` limits of ``conn``'s negotiated suite."""
    if conn.aead_limits is not None:
        return conn.aead_limits
    return LIMITS.get(conn.cipher_suite, _STRICTEST)


def update_after(conn: Connection) -> int:
    """1-RTT packets sent with one key before a key update starts."""
    confidentiality = aead_limits(conn)[0]
    after = confidentiality * UPDATE_NUM // UPDATE_DEN
    configured = conn.configuration.key_update_after
    if configured is not None and configured < after:
        after = configured
    return after


def may_send(conn: Connection, now: float, max_datagrams: int) -> bool:
    """Called by a build whose packets could reach ``conn.key_limit_pn``: starts (or asks
    for) a key update once ``update_after`` packets went out with the current keys, and
    says whether 1-RTT packets may be built at all (False: ``max_datagrams`` more would
    pass the confidentiality limit, and the update cannot start yet; a later build, the
    ACK that allows it or the connection's timer starts it). Sets the next threshold."""
    if not conn.one_rtt_ready:
        return True  # (key_limit_pn stays where it is: looked at again on the next build)
    start = conn.key_phase_first_pn if conn.key_phase_first_pn > 0 else 0
    pn = conn.spaces[2].next_pn
    update_at = start + update_after(conn)
    if pn + max_datagrams < update_at:
        conn.key_limit_pn = update_at
        return True
    if conn.key_update_requested:
        conn._start_key_update_if_allowed(now)
    elif conn.handshake_confirmed and not conn.key_update_pending:
        conn.initiate_key_update()  # (starts now when it may, else when it may)
    if (conn.key_phase_first_pn if conn.key_phase_first_pn > 0 else 0) != start:
        return may_send(conn, now, max_datagrams)  # a new phase: its own thresholds
    conn.key_limit_pn = update_at  # (each build looks again until the update starts)
    return pn + max_datagrams + _EXTRA <= start + aead_limits(conn)[0]


def on_open_failure(conn: Connection) -> bool:
    """A packet of ``conn`` failed authentication (counted already): True when that
    passed the integrity limit, and the connection now closes (AEAD_LIMIT_REACHED)."""
    if conn.counters.dropped_undecryptable <= aead_limits(conn)[1]:
        return False
    conn.close(AEAD_LIMIT_REACHED, "AEAD integrity limit reached", application=False)
    return True


__all__ = ["LIMITS", "aead_limits", "may_send", "on_open_failure", "update_after"]
