"""Slow start shared by the connections to one host: a window that leads the others'
stops doubling until they catch up.

Slow start doubles a window every round trip from wherever it started, so connections
that start together to one host keep the ratio their first round trips gave them: one
whose first flight went out a round trip earlier holds twice the window of the others
until flow control or a loss stops it. On a busy server that round trip is long (the
others' requests are still being read and answered) and the lead lasts the whole of a
short transfer (issue 11, 256 x 4 MiB on loopback: the connections whose data went out
first had about three times the others' windows half a second in and finished in two
thirds of their time; Jain's index 0.95-0.98 in about a third of the runs).

Connections to the same host share its path (RFC 9040's "ensemble sharing" shares
congestion state among them; RFC 3124 manages it jointly), so the fair share is an equal
*rate*. Here each connection whose last send turn left it less than a datagram of window
(*window-limited*) is a member of its peer host's ensemble with its rate, window over
smoothed RTT; with at least ``ENSEMBLE_MIN`` members, slow start does not grow a window
that already gives ``CEILING_NUM / CEILING_DEN`` times the members' mean rate or more at
the connection's own RTT (``CongestionControl.ss_ceiling``). A leader keeps its window
and sends as before; it grows again once the mean has caught up. Windows that grow
together are not held: each member's rate is the one of its latest turn (a few per round
trip), so the mean trails a doubling ensemble by less than the ratio. A connection on a
longer path to the same host (a relay, another route) needs a larger window for the same
rate and gets it. Nothing changes for a connection alone on its host, one in congestion
avoidance, or one below the ceiling, and no window shrinks.

Every operation is O(1): the mean is a running sum. Sans-I/O: the runner calls
:meth:`SlowStartEnsembles.note` at each send turn and :meth:`SlowStartEnsembles.forget`
when it drops a connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .congestion import NO_CEILING

if TYPE_CHECKING:
    from .connection import Connection

#: window-limited connections a host needs before its ensemble sets a ceiling
ENSEMBLE_MIN = 8
#: the ceiling, as a ratio to the members' mean rate (3/2: at 5/4, 256 x 4 MiB was as
#: fair, Jain 0.989-1.000, but held more windows below what they would have grown to,
#: and the smaller windows cost about 5 % goodput in more ACKs and shorter send turns;
#: 3/2 about 2 %, Jain 0.982-1.000: bench/RESULTS.md, issue 11's 27th pass)
CEILING_NUM, CEILING_DEN = 3, 2
#: the least smoothed RTT a rate is computed with (seconds)
MIN_RTT = 1e-6


class _Host:
    __slots__ = ("rates", "total")

    def __init__(self) -> None:
        #: id(conn) -> its rate at its latest send turn, window / smoothed RTT in bytes
        #: per second (members only)
        self.rates: dict[int, int] = {}
        self.total = 0  # sum(rates.values())


class SlowStartEnsembles:
    """The ensembles of the connections one event loop serves, by peer host."""

    __slots__ = ("hosts", "member_of")

    def __init__(self) -> None:
        #: peer host -> its ensemble (only while it has members)
        self.hosts: dict[object, _Host] = {}
        #: id(conn) -> the host whose ensemble it is a member of
        self.member_of: dict[int, object] = {}

    def note(self, conn: Connection) -> None:
        """``conn`` had a send turn: it joins (or stays in, with its rate now) its host's
        ensemble if the window held it back, or leaves; it gets the host's ceiling."""
        loss = conn.loss
        cc = loss.cc
        srtt = loss.rtt.smoothed_rtt
        if srtt < MIN_RTT:  # (a zero sample: a clock that did not move)
            srtt = MIN_RTT
        key = id(conn)
        host_key = conn.peer_address[0]
        if cc.cwnd - cc.bytes_in_flight < conn.max_datagram_size:
            was = self.member_of.get(key)
            if was is not None and was != host_key:
                self.forget(key)  # (its peer moved to another host)
                was = None
            host = self.hosts.get(host_key)
            if host is None:
                host = self.hosts[host_key] = _Host()
            if was is None:
                self.member_of[key] = host_key
            rates = host.rates
            rate = int(cc.cwnd / srtt)
            host.total += rate - rates.get(key, 0)
            rates[key] = rate
        else:
            if key in self.member_of:
                self.forget(key)
            host = self.hosts.get(host_key)
            if host is None:
                cc.ss_ceiling = NO_CEILING
                return
        n = len(host.rates)
        if n < ENSEMBLE_MIN:
            cc.ss_ceiling = NO_CEILING
            return
        ceiling = int(host.total * srtt * CEILING_NUM / (CEILING_DEN * n))
        cc.ss_ceiling = ceiling if ceiling < NO_CEILING else NO_CEILING

    def forget(self, key: int) -> None:
        """The connection ``id`` ``key`` leaves its ensemble (if in one)."""
        host_key = self.member_of.pop(key, None)
        if host_key is None:
            return
        host = self.hosts[host_key]
        host.total -= host.rates.pop(key)
        if not host.rates:
            del self.hosts[host_key]
