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
4th, 8th... packet received while closing is answered, and any packet that comes half a
PTO or more after the last copy we sent. The count alone answered a peer's PTO probes
less and less often (the 3rd, 5th, 6th, 7th not at all), so under loss a peer whose
first answers were lost kept probing unanswered; the time rule answers each probe, and a
flood still gets at most two answers per PTO beyond the count's.

A packet received while closing also keeps the closing period open: the peer is alive
and has not got our close, and its next probe would otherwise find the connection
forgotten. Its probes come at a doubling interval (RFC 9002 §6.2.1: 1, 3, 7, 15... PTOs
after its last packet before our close), so a packet T after the close keeps the period
open until T + 2 PTO after it (3 PTO at least): its next probe, about 2T + 1 PTO after
the close, is inside. The period never ends later than
:data:`MAX_CLOSING_PTOS` PTOs or our idle timeout after the close, whichever is sooner:
past the idle timeout the peer has given up too (its idle timer has run since the last
packet it got from us, which was before our close).
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


#: The closing period, kept open by the peer's packets, ends at most this many PTOs after
#: the close (and never later than the idle timeout after it): the peer's PTO probes at
#: 1, 3, 7, 15 and 31 PTOs are inside it.
MAX_CLOSING_PTOS = 34

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
    conn.close_answered_at = now
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
    conn.close_answered_at = now
    conn.close_resends += 1
    conn.counters.close_resends += 1
    if conn.close_resends < len(RESEND_DELAYS):
        at = conn.close_started + RESEND_DELAYS[conn.close_resends] * conn.pto()
        # never past the end of the closing period
        if conn.close_deadline is None or at < conn.close_deadline:
            conn.close_resend_at = max(at, now)
            return
    conn.close_resend_at = None


def answer_in_closing(conn: Connection, now: float) -> None:
    """A packet arrived while closing: answer it, rate-limited, and keep the closing
    period open for the peer's next probe (bounded: see the module's notes)."""
    conn.close_packets_seen += 1
    seen = conn.close_packets_seen
    pto = conn.pto()
    if seen & (seen - 1) == 0 or now - conn.close_answered_at >= 0.5 * pto:
        conn.close_pending = True
        conn.close_answered_at = now
    deadline = conn.close_deadline
    if deadline is not None:
        wanted = now + max(3 * pto, now - conn.close_started + 2 * pto)
        if wanted > deadline:
            limit = conn.close_started + MAX_CLOSING_PTOS * pto
            idle = conn.idle_timeout
            if 0 < idle and conn.close_started + idle < limit:
                limit = conn.close_started + idle
            conn.close_deadline = max(deadline, min(wanted, limit))
