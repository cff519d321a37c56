"""The closing state's sends: answers to incoming packets, and a few blind repeats.

RFC 9000 §10.2.1: an endpoint in the closing state answers packets from the peer with
its CONNECTION_CLOSE and SHOULD limit the rate at which it does. That alone is fragile:
if the one CONNECTION_CLOSE we sent is lost and the peer has nothing in flight, the peer
never sends again, so we never get a packet to answer, and the peer learns of the close
only at its idle timeout. So, while closing (never while draining), the close is also
sent again on a backoff timer — :data:`RESEND_DELAYS` (in PTOs, counted from the
close) — at most ``len(RESEND_DELAYS)`` extra copies, all inside the closing period of
3 PTO. The peer, once it has one copy, is draining and sends nothing: these copies
cost at most three small datagrams per closed connection.

A blind copy is skipped while the peer has 1-RTT ack-eliciting packets we never
acknowledged (we send no ACK while closing): the peer's loss recovery sends again at its
PTO unless it has our close, and that packet is answered as below. So a connection closed
right after its handshake (the server's HANDSHAKE_DONE not yet acknowledged) sends one
close, not four (``close_resends_skipped`` counts the copies saved). When that holds
already at the close, no resend timer is armed at all.

The same holds for a client that closes after completing its handshake but before it is
confirmed (no HANDSHAKE_DONE yet), even when none of the server's 1-RTT packets has
arrived: a server that has our Finished sends HANDSHAKE_DONE (RFC 9001 §4.1.2), which is
ack-eliciting and repeated until acknowledged; one that does not have it still waits for
the ACK of its Handshake flight, which travelled in the same packet as the Finished, and
repeats that flight. Either way it sends again unless it has our close, and is answered.
(What is left uncovered: our Finished datagram and the close both lost while the server
cannot send for the anti-amplification limit; it then ends at its half-open timeout.)

Answers to incoming packets are rate-limited the way the RFC suggests: the 1st, 2nd,
4th, 8th... ack-eliciting packet received while closing is answered, the others not.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .state import CLOSING

if TYPE_CHECKING:
    from .connection import Connection

#: When the CONNECTION_CLOSE is sent again, in PTOs after the close (a doubling gap:
#: 1/4, 1/2 then 1 PTO), each before the closing period (3 PTO) ends.
RESEND_DELAYS = (0.25, 0.75, 1.75)


#: The draining period (3 PTO, RFC 9000 §10.2) ends on a grid of this many seconds,
#: rounded up, so it is never shorter: connections that drain close together (a server's
#: handshakes whose clients closed) end in one timer wake-up of the event loop instead of
#: one each. A power of two, so the grid points are exact floats.
DRAIN_GRID = 1 / 16


def draining_deadline(now: float, pto: float) -> float:
    """When a connection that starts draining at ``now`` ends (``now + 3 * pto`` at
    least, on the :data:`DRAIN_GRID`)."""
    return math.ceil((now + 3 * pto) / DRAIN_GRID) * DRAIN_GRID


def _peer_sends_again(conn: Connection) -> bool:
    """Whether the peer waits for an ACK it never gets (we send none while closing), so
    it sends again unless it has our close, and that packet is answered. Once true it
    stays true while closing: nothing acknowledges the peer's packets, and what
    confirms a client's handshake (HANDSHAKE_DONE) is itself such a packet."""
    app = conn.spaces[2]
    return bool(app.ack_eliciting_pending and not app.discarded) or (
        conn.is_client and conn.handshake_complete and not conn.handshake_confirmed
    )


def start_closing(conn: Connection, now: float, period: float) -> None:
    """The connection has just entered the closing state at ``now`` for ``period``."""
    conn.close_deadline = now + period
    conn.close_packets_seen = 0
    conn.close_resends = 0
    conn.close_started = now
    conn.close_resend_at = None
    if period > 0:
        if _peer_sends_again(conn):
            # every blind copy would be skipped: arm no timer that only finds that out
            conn.counters.close_resends_skipped += 1
        else:
            conn.close_resend_at = now + RESEND_DELAYS[0] * conn.pto()


def closing_timer(conn: Connection) -> float | None:
    """The next deadline of a closing or draining connection."""
    deadline = conn.close_deadline
    resend = conn.close_resend_at
    if resend is None or conn.state != CLOSING:
        return deadline
    return resend if deadline is None else min(deadline, resend)


def on_closing_timer(conn: Connection, now: float) -> None:
    """Time passed in the closing or draining state: repeat the close, or end."""
    if conn.close_deadline is not None and now >= conn.close_deadline:
        conn._terminate()
        return
    resend = conn.close_resend_at
    if resend is None or now < resend:
        return
    if conn.state != CLOSING:  # draining: never send
        conn.close_resend_at = None
        return
    if _peer_sends_again(conn):  # (it became true after the close: a packet came)
        conn.counters.close_resends_skipped += 1
        conn.close_resend_at = None
        return
    conn.close_pending = True
    conn.close_resends += 1
    conn.counters.close_resends += 1
    if conn.close_resends < len(RESEND_DELAYS):
        at = conn.close_started + RESEND_DELAYS[conn.close_resends] * conn.pto()
        # never past the end of the closing period
        if conn.close_deadline is None or at < conn.close_deadline:
            conn.close_resend_at = max(at, now)
            return
    conn.close_resend_at = None


def answer_in_closing(conn: Connection) -> None:
    """An ack-eliciting packet arrived while closing: answer it, rate-limited."""
    conn.close_packets_seen += 1
    seen = conn.close_packets_seen
    if seen & (seen - 1) == 0:  # 1, 2, 4, 8, ...
        conn.close_pending = True
