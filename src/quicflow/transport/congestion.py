"""Congestion control (RFC 9002 §7 NewReno, RFC 9438 CUBIC) and pacing (RFC 9002 §7.7).

All sizes are bytes (ints), all times float seconds. One dataclass serves both
algorithms, selected by ``algorithm``; it is plain data so it snapshots as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rtt import RttEstimator

ALGORITHMS = ("newreno", "cubic")

#: Stands for an infinite slow-start threshold (kept an int so the state is plain data).
SSTHRESH_INFINITE = (1 << 62) - 1
#: ``CongestionControl.ss_ceiling`` when none applies: the same largest value the engine
#: reads (QF_FIELD_MAX; anything above sends every ACK to the Python twin)
NO_CEILING = SSTHRESH_INFINITE

#: RFC 9002 §7.3.2: kLossReductionFactor of NewReno.
LOSS_REDUCTION_FACTOR = 0.5

#: RFC 9438 §5: the CUBIC constants.
CUBIC_C = 0.4
CUBIC_BETA = 0.7
#: RFC 9438 §4.3: additive increase factor of the Reno-friendly estimate.
CUBIC_ALPHA = 3 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA)


def initial_window(max_datagram_size: int) -> int:
    """RFC 9002 §7.2: min(10·mds, max(14720, 2·mds))."""
    return min(10 * max_datagram_size, max(14720, 2 * max_datagram_size))


def minimum_window(max_datagram_size: int) -> int:
    """RFC 9002 §7.2: kMinimumWindow = 2·mds."""
    return 2 * max_datagram_size


@dataclass(slots=True, eq=False)
class CongestionControl:
    """Congestion window and bytes in flight of one path.

    ``cwnd == 0`` at construction means "start from the initial window". The
    connection may set ``app_limited`` while it has nothing to send so the window
    does not grow on ACKs it did not earn (RFC 9002 §7.8).
    """

    algorithm: str = "cubic"
    max_datagram_size: int = 1200
    cwnd: int = 0
    ssthresh: int = SSTHRESH_INFINITE
    bytes_in_flight: int = 0
    recovery_start_time: float | None = None
    app_limited: bool = False
    #: Sub-datagram growth not yet added to cwnd (NewReno: bytes acked in congestion
    #: avoidance; CUBIC: fractional bytes).
    ca_acked: float = 0.0
    congestion_events: int = 0
    persistent_congestion_events: int = 0
    #: one packet may still go on the window from before the current reduction (RFC 9002
    #: §7.3.2: "If the congestion window is reduced immediately, a single packet can be
    #: sent prior to reduction"); set when a recovery period starts, spent by the next
    #: packet that the reduced window would have held back (``send._fill_payload``)
    recovery_credit: bool = False
    # CUBIC state (RFC 9438 §4), sizes in bytes.
    cubic_w_max: float = 0.0
    cubic_cwnd_prior: float = 0.0
    cubic_k: float = 0.0
    cubic_t_epoch: float | None = None
    cubic_cwnd_epoch: float = 0.0
    cubic_w_est: float = 0.0
    #: slow start grows the window up to here only: the ceiling of the connections to
    #: the same host (``ensemble.py``; set at each send turn, NO_CEILING when none)
    ss_ceiling: int = NO_CEILING

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown congestion control algorithm {self.algorithm!r}")
        if self.max_datagram_size < 1200:
            raise ValueError("max_datagram_size must be at least 1200")
        if self.cwnd == 0:
            self.cwnd = initial_window(self.max_datagram_size)

    @property
    def minimum_window(self) -> int:
        return 2 * self.max_datagram_size

    def available(self) -> int:
        """Bytes that may be sent now: cwnd − bytes in flight (never negative)."""
        room = self.cwnd - self.bytes_in_flight
        return room if room > 0 else 0

    def in_recovery(self, time_sent: float) -> bool:
        """Whether a packet sent at ``time_sent`` belongs to the current recovery period."""
        start = self.recovery_start_time
        return start is not None and time_sent <= start

    def on_sent(self, size: int, now: float) -> None:
        """An in-flight packet of ``size`` bytes was sent."""
        self.bytes_in_flight += size

    def on_removed_from_flight(self, size: int) -> None:
        """Bytes leave the flight without an ACK and without a congestion signal."""
        remaining = self.bytes_in_flight - size
        self.bytes_in_flight = remaining if remaining > 0 else 0

    def on_acked(self, size: int, time_sent: float, now: float, rtt: RttEstimator) -> None:
        """In-flight bytes were acknowledged (RFC 9002 §7.3, A.9).

        ``size`` may be the sum of several packets of one ACK, ``time_sent`` the send
        time of the latest of them (they must all be outside the recovery period).

        In slow start the window grows only while at least a quarter of it was in flight
        when the ACK came (RFC 9002 §7.8: a window that flow control or the application
        leaves underused SHOULD NOT grow). Without that, on a path that loses nothing a window
        held back by flow control grew by every byte acknowledged (to 69 MB for a 64 MiB
        download with 5 MB in flight), and the pacing rate (1.25·cwnd/srtt) and each send
        turn's burst with it: the connections that had sent the most got the most per
        turn (issue 11, 64 x 64 MiB: Jain's index under 0.98 in about half the runs). A
        window-limited or pacing-limited sender (paced at 1.25·cwnd/srtt, so about 0.8·cwnd
        in flight) keeps growing as before; congestion avoidance is unchanged. (A half,
        as Linux takes in slow start, kept windows of 256 connections x 4 MiB, held to
        about 1 MiB each by the endpoint's send buffer, under the 2048 datagrams at which
        the pacer's burst reaches its 256: more, shorter turns, +25-40 % server CPU per GB.)
        Nor does it grow a window at or past ``ss_ceiling`` (ensemble.py).
        """
        # (on_removed_from_flight and in_recovery inline: this runs for every ACK)
        prior = self.bytes_in_flight
        remaining = prior - size
        self.bytes_in_flight = remaining if remaining > 0 else 0
        start = self.recovery_start_time
        if self.app_limited or (start is not None and time_sent <= start):
            return
        if self.cwnd < self.ssthresh:
            if 4 * prior < self.cwnd or self.cwnd >= self.ss_ceiling:
                return  # under a quarter of the window in use, or at the ceiling
            step = self.ssthresh - self.cwnd
            if size <= step:
                self.cwnd += size
                return
            self.cwnd += step
            size -= step
        if self.algorithm == "cubic":
            self._cubic_grow(size, now, rtt.smoothed_rtt)
        else:
            acked = self.ca_acked + size
            while acked >= self.cwnd:
                acked -= self.cwnd
                self.cwnd += self.max_datagram_size
            self.ca_acked = acked

    def on_congestion_event(self, time_sent: float, now: float) -> None:
        """Loss or ECN-CE of a packet sent at ``time_sent`` (RFC 9002 §7.3.2).

        At most one reduction per recovery period: a packet sent before the current
        recovery started does not reduce the window again.
        """
        if self.in_recovery(time_sent):
            return
        self.recovery_start_time = now
        self.congestion_events += 1
        self.recovery_credit = True
        self.ca_acked = 0.0
        if self.algorithm == "cubic":
            cwnd = float(self.cwnd)
            # RFC 9438 §4.7: fast convergence.
            if cwnd < self.cubic_w_max:
                self.cubic_w_max = cwnd * (1 + CUBIC_BETA) / 2
            else:
                self.cubic_w_max = cwnd
            self.cubic_cwnd_prior = cwnd
            self.ssthresh = int(cwnd * CUBIC_BETA)
            self.cubic_t_epoch = None
        else:
            self.ssthresh = int(self.cwnd * LOSS_REDUCTION_FACTOR)
        self.cwnd = max(self.ssthresh, self.minimum_window)

    def on_ecn_ce(self, time_sent: float, now: float) -> None:
        """The peer reported a higher ECN-CE count for an ACK whose largest packet was
        sent at ``time_sent`` (RFC 9002 §7.1)."""
        self.on_congestion_event(time_sent, now)

    def on_persistent_congestion(self) -> None:
        """RFC 9002 §7.6.2: collapse to the minimum window and leave recovery.

        CUBIC (RFC 9438 §4.8) then restarts with K = 0 and W_max equal to the window
        at the start of the next congestion avoidance stage.
        """
        self.cwnd = self.minimum_window
        self.recovery_start_time = None
        self.recovery_credit = False
        self.persistent_congestion_events += 1
        self.ca_acked = 0.0
        self.cubic_t_epoch = None
        self.cubic_w_max = 0.0

    # -- CUBIC ---------------------------------------------------------------

    def cubic_window(self, t: float) -> float:
        """W_cubic(t) in bytes, t seconds after the start of the current epoch."""
        d = t - self.cubic_k
        return CUBIC_C * d * d * d * self.max_datagram_size + self.cubic_w_max

    def _cubic_start_epoch(self, now: float) -> None:
        mss = self.max_datagram_size
        cwnd = float(self.cwnd)
        self.cubic_t_epoch = now
        self.cubic_cwnd_epoch = cwnd
        self.cubic_w_est = cwnd
        if self.cubic_w_max <= cwnd:
            # Slow start ended without loss, or first stage after a timeout.
            self.cubic_w_max = cwnd
            self.cubic_k = 0.0
        else:
            self.cubic_k = ((self.cubic_w_max - cwnd) / mss / CUBIC_C) ** (1.0 / 3.0)

    def _cubic_grow(self, size: int, now: float, srtt: float) -> None:
        if self.cubic_t_epoch is None:
            self._cubic_start_epoch(now)
        assert self.cubic_t_epoch is not None
        t = now - self.cubic_t_epoch
        cwnd = float(self.cwnd)
        mss = self.max_datagram_size
        # Reno-friendly estimate (RFC 9438 §4.3).
        alpha = 1.0 if self.cubic_w_est >= self.cubic_cwnd_prior else CUBIC_ALPHA
        self.cubic_w_est += alpha * mss * size / cwnd
        if self.cubic_window(t) < self.cubic_w_est:
            if self.cubic_w_est > cwnd:
                self.cwnd = int(self.cubic_w_est)
            return
        # Concave / convex region (RFC 9438 §4.4, §4.5).
        target = self.cubic_window(t + srtt)
        if target < cwnd:
            target = cwnd
        elif target > 1.5 * cwnd:
            target = 1.5 * cwnd
        growth = self.ca_acked + (target - cwnd) * size / cwnd
        whole = int(growth)
        self.cwnd += whole
        self.ca_acked = growth - whole


#: the pacing rate is this multiple of cwnd/srtt (RFC 9002 §7.7's N)
PACING_MULTIPLIER = 1.25


@dataclass(slots=True, eq=False)
class Pacer:
    """Token-bucket pacer (RFC 9002 §7.7): rate 1.25·cwnd/srtt, bursts of 10 datagrams.

    Use ``next_send_time`` (or ``budget`` for a whole batch) before sending and
    ``consume`` after. ``rtt`` is an :class:`RttEstimator` or a smoothed RTT in seconds.
    """

    max_datagram_size: int = 1200
    burst_datagrams: int = 10
    #: the rate is ``multiplier``·cwnd/srtt; 0 leaves the connection unpaced (its path
    #: does not need it: path.set_pacing), as before the first RTT sample
    multiplier: float = PACING_MULTIPLIER
    burst_interval: float = 0.0  # seconds of rate a burst may hold (0: fixed burst only)
    max_burst_datagrams: int = 64
    #: how early a send may be, in seconds: what the rate earns within the timer
    #: resolution of the event loop (epoll sleeps in whole milliseconds) may be spent now
    #: instead of in an oversleeping timer
    granularity: float = 0.0
    #: the bucket holds at least this many datagrams when cwnd is 8 times that or more
    #: (0: no such floor). A connection's pacing rate is 1.25·cwnd/srtt, and with many
    #: connections on one busy sender srtt grows with the sender's own queue, so the 2 ms
    #: bucket shrank to a few datagrams: each turn built a short run, more turns and
    #: ACKs cost more CPU per byte, the queue and srtt grew further, and connections
    #: with a larger window got larger runs than the rest (issue 11: 256 connections).
    #: Connections use ``max_burst_datagrams`` (256): every connection with a window of
    #: 2048 datagrams or more may then send the same burst per turn (measured with 64
    #: connections: Jain 0.83-0.99 with a floor of 64, 0.990-0.998 with 256). The
    #: average rate is unchanged; only the largest burst is larger.
    run_datagrams: int = 0
    #: the burst (bytes) the last deadline ``run_budget`` gave waits for (0: none). While
    #: a connection waits, its ACKs grow the window and so the bucket (cwnd / 8); the
    #: run then due is the one promised, not a larger one that would move the deadline
    #: again (issue 11, 256 x 4 MiB: 636 such second waits per GiB before)
    promised: float = 0.0
    tokens: float = 0.0
    last_time: float | None = None

    def rate(self, rtt: RttEstimator | float, cwnd: int) -> float:
        """Pacing rate in bytes per second (0 means unpaced)."""
        srtt = rtt.smoothed_rtt if isinstance(rtt, RttEstimator) else rtt
        if srtt <= 0.0:
            return 0.0
        return self.multiplier * cwnd / srtt

    def capacity(self, rate: float, cwnd: int = 0) -> float:
        """The bucket size in bytes: the largest burst at ``rate``."""
        capacity = float(self.burst_datagrams * self.max_datagram_size)
        if self.burst_interval > 0.0 and rate > 0.0:
            # a batch-sized burst: what the rate allows in ``burst_interval``, at most
            # ``max_burst_datagrams`` (one GSO send), at least the fixed burst
            # (min(), a slow call, written out: the first of equal values)
            timed = rate * self.burst_interval
            top = float(self.max_burst_datagrams * self.max_datagram_size)
            if top < timed:
                timed = top
            # ``run_datagrams`` at least when the window is eight times that or more
            # (cwnd / 8 below that)
            floor = float(self.run_datagrams * self.max_datagram_size)
            if cwnd / 8 < floor:
                floor = cwnd / 8
            if floor > timed:
                timed = floor
            if timed > capacity:
                capacity = timed
        return capacity

    def _refill(self, now: float, rate: float, capacity: float) -> float:
        """Add what ``rate`` earned since the last call, up to ``capacity`` (the caller
        computes the bucket once per call: ``capacity(rate, cwnd)``)."""
        last = self.last_time
        if last is None or rate == 0.0:
            self.tokens = capacity
        elif now > last:
            tokens = self.tokens + (now - last) * rate
            self.tokens = tokens if tokens < capacity else capacity
        if last is None or now > last:
            self.last_time = now
        return self.tokens

    def next_send_time(
        self, now: float, size: int, rtt: RttEstimator | float, cwnd: int
    ) -> float:
        """Earliest time (≥ now) at which a packet of ``size`` bytes may leave."""
        rate = self.rate(rtt, cwnd)
        tokens = self._refill(now, rate, self.capacity(rate, cwnd)) + rate * self.granularity
        if tokens >= size or rate == 0.0:
            return now
        return now + (size - tokens) / rate

    def budget(self, now: float, rtt: RttEstimator | float, cwnd: int) -> int:
        """Bytes that may leave right now (for filling a batch)."""
        srtt = rtt.smoothed_rtt if isinstance(rtt, RttEstimator) else rtt  # self.rate()
        rate = self.multiplier * cwnd / srtt if srtt > 0.0 else 0.0
        tokens = self._refill(now, rate, self.capacity(rate, cwnd)) + rate * self.granularity
        return int(tokens) if tokens > 0 else 0

    def run_budget(
        self, now: float, rtt: RttEstimator | float, cwnd: int, want: int
    ) -> tuple[int, float | None]:
        """Bytes a run may take now, or (0, when to try again).

        A run is worth an engine call only when it is a burst: while the budget covers
        neither ``want`` bytes nor a full bucket, nothing is handed out and the second
        value says when the budget will cover ``min(want, bucket)``. Sending one datagram
        each time a datagram's worth of budget trickles in would make every call (and
        every connection's turn) build one packet; waiting for a burst keeps the same
        average rate, in bursts no larger than the bucket the pacer allows anyway.
        The burst waited for is remembered (``promised``): a bucket grown meanwhile (the
        window grows with every ACK in slow start) does not move the deadline later.
        """
        srtt = rtt.smoothed_rtt if isinstance(rtt, RttEstimator) else rtt  # self.rate()
        rate = self.multiplier * cwnd / srtt if srtt > 0.0 else 0.0
        if rate == 0.0:
            return want, None
        capacity = self.capacity(rate, cwnd)
        early = rate * self.granularity
        last = self.last_time
        if last is not None and now <= last:
            # _refill would change nothing (no time passed, as in ``consume``): the
            # question after a run, at the run's ``now`` (bulk.py's _pace_after_run)
            tokens = self.tokens + early
        else:
            tokens = self._refill(now, rate, capacity) + early
        need = float(want) if want < capacity else capacity
        promised = self.promised
        if promised and promised < need:
            need = promised  # the burst this connection was told to wait for
        if tokens > need - 1.0:  # (a deadline's refill can round to a hair under need)
            self.promised = 0.0
            return int(tokens), None
        self.promised = need
        return 0, now + (need - tokens) / rate

    def consume(self, now: float, size: int, rtt: RttEstimator | float, cwnd: int) -> None:
        """``size`` bytes were sent at ``now``."""
        srtt = rtt.smoothed_rtt if isinstance(rtt, RttEstimator) else rtt  # self.rate()
        rate = self.multiplier * cwnd / srtt if srtt > 0.0 else 0.0
        last = self.last_time
        if last is not None and rate != 0.0 and now <= last:
            # _refill would change nothing (no time passed): no bucket to compute (the
            # packets of one flight, built at one ``now``)
            self.tokens -= size
            return
        self._refill(now, rate, self.capacity(rate, cwnd))
        self.tokens -= size
