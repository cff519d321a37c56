"""Reading bounded per loop turn and shared fairly among the sockets of one event loop.

asyncio runs, in one loop turn, the callback of every socket that epoll reports ready,
and only in the next turn the tasks those callbacks woke (a stream's reader). A runner
reads its socket until the kernel queue is empty, so a process with many sockets read
them all before any reader ran. With 256 downloads on per-connection sockets (the perf
client), 77 % of the bytes were read in turns that read 134-268 MB each (issue 11, 256 x
16 MiB): the data was decrypted into buffers that waited a whole turn for their readers,
out of every cache by then. Decrypting into them cost 26 % more per byte than with one
connection, and the readers' copies twice as much.

The policy: the runners of one loop share a budget of :data:`TURN_BYTES` read per turn.
A read stops after the round that spends it (the socket still holds data and is read
later). A socket found ready while the budget is spent, or while other sockets wait, is
*parked*: queued, and taken off the selector when its runner registered it through
``EndpointRunner.watch``, so that level-triggered epoll does not report it again at
every turn until it is served. The next turn first runs the readers woken by this one's
data, then :meth:`ReadTurns._turn` serves parked sockets while the budget lasts, then the
sockets that became ready anew. A served socket that had data (or was stopped by the
budget) is parked again at once, still off the selector: while it stays busy it costs no
selector change per read (taking each one off and putting it back cost ~4 k such pairs
per GiB with 256 downloads, 5 % of the client's CPU). One read empty goes back on the
selector.

The order is start-time fair queueing by bytes read: each socket's finish tag is its
start tag plus the bytes of its latest read, a parked socket starts at the larger of its
finish tag and the virtual time (the start tag of the socket served last), and the least
start tag goes first. A socket that read less goes before one that read more, a newcomer
starts level with the others (not ahead by all the bytes they read before it came), and
none waits for longer than it takes the others to read its lag. Plain first-come order
served each socket once per cycle of all of them: 256 downloads finished spread over the
last cycle (~0.4 s of ~1.1 s), Jain's index 0.978-0.989 against 0.990-0.996 with the tags.

Measured (bench/RESULTS.md, issue 11's 34th pass): the decryption's and the readers' cost
per byte came back to one connection's, and 256 x 4 MiB ran 10-14 points of one
connection's goodput higher. A budget of 4 MiB did better than 1, 2 or 8 MiB (alternated
runs, 256 x 4 MiB: medians 1031, 1036, 1086, 1033 MB/s); left on the selector, parked
sockets cost 2-3 % more in reports.

Per loop, held by the loop's :class:`~.loopwheel.LoopWheel`. Parking, serving and
charging are O(log n) in the parked sockets. The sizes of one read of a socket (its
rounds, ``EndpointRunner.read_turn``) are here too: ``RECV_BATCH``, ``RECV_TAIL``,
``RECV_ROUNDS``.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from ..datapath.socket import UdpTransport
    from .runner import EndpointRunner, Registration

#: receive buffers (each up to 64 GRO segments) read per round. A round is the batch
#: the receiver processes before it decides about ACKs (every touched connection is
#: flushed at its end): draft-ietf-quic-ack-frequency §6.4 and RFC 9000 §13.2.2 let a
#: receiver process all packets of a batch before it determines whether to send an
#: ACK. A round fills only when the socket holds that much, i.e. when the receiver is
#: behind: the data is delivered already, the sender's window grows by the bytes
#: acknowledged (RFC 9002 §7.3.1), not by the ACKs, and an ACK per eight buffers
#: cost the receiver more than the sender's ACK_FREQUENCY threshold asked for (issue
#: 11: with 64 downloads a socket read was 2.6 rounds of 8 and each round passed the
#: threshold: 3.3-3.8 k ACKs per GiB against 2.2 k for one connection; 2.2-2.6 k with
#: 16 buffers, and 1.2-1.3 k for one connection). A gap is still acknowledged at the
#: end of the round that found it.
RECV_BATCH = 16
#: buffers read ahead past a full round: when fewer than these were left in the socket,
#: they join the round instead of making one of their own. With a socket per connection the
#: server's turns leave a connection's socket one to a few bursts at a time; a read that
#: found a full round and a short remainder made two rounds, and the remainder, under the
#: peer's ACK threshold after the first round's ACK, was acknowledged by the ACK timer
#: (issue 11, 256 x 16 MiB: ~430 of ~2,400 socket reads per GiB, each one more ACK
#: turn and one more round; draft-ietf-quic-ack-frequency §6.4 lets a receiver process
#: a batch before it decides about ACKs). A round holds at most RECV_BATCH + RECV_TAIL
#: - 1 buffers.
RECV_TAIL = 8
#: rounds per readable callback before yielding to the loop (256 buffers at most, and the
#: RECV_TAIL read ahead)
RECV_ROUNDS = 16
#: bytes read per loop turn by all the runners of a loop before the sockets found ready
#: wait for the next turn
TURN_BYTES = 4 << 20

#: a parked socket: (runner, transport, peer of a connected socket, its registration on
#: the selector when it was taken off it, else None)
Parked = tuple["EndpointRunner", "UdpTransport", "tuple[Any, ...] | None",
               "Registration | None"]


class ReadTurns:
    """The read budget of one event loop's turn and the sockets waiting for one."""

    __slots__ = ("loop", "budget", "used", "queue", "parked", "tags", "vtime", "serial",
                 "_prune_at", "armed", "parks", "turns")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: int | None = None) -> None:
        self.loop = loop
        self.budget = TURN_BYTES if budget is None else budget
        self.used = 0  # bytes read in this turn
        #: the parked sockets, (start tag, serial, entry): least start tag first
        self.queue: list[tuple[int, int, Parked]] = []
        #: id(transport) -> its entry in ``queue`` (an entry no longer here is stale)
        self.parked: dict[int, Parked] = {}
        #: id(transport) -> its finish tag: its start tag at its latest read plus the
        #: bytes read then (sockets whose tag is below ``vtime`` may be missing)
        self.tags: dict[int, int] = {}
        self.vtime = 0  # the start tag of the socket served last (virtual time)
        self.serial = 0
        self._prune_at = 64  # len(tags) at which stale tags are dropped
        self.armed = False  # _turn is scheduled
        self.parks = 0  # sockets parked so far (counters, for tests and benchmarks)
        self.turns = 0  # turns that served parked sockets

    def spent(self) -> bool:
        return self.used >= self.budget

    def charge(self, transport: UdpTransport, nbytes: int) -> None:
        """A runner read ``nbytes`` from ``transport`` in this turn."""
        if nbytes > 0:
            self.used += nbytes
            tags = self.tags
            key = id(transport)
            start = tags.get(key, 0)
            vtime = self.vtime
            tags[key] = (start if start > vtime else vtime) + nbytes
            if len(tags) >= self._prune_at:
                self._prune()
            if not self.armed:
                self._arm()

    def _prune(self) -> None:
        """Drop the tags at or below virtual time (they count as absent): amortized O(1),
        as the next pass comes only when the map has doubled again."""
        vtime = self.vtime
        self.tags = {k: t for k, t in self.tags.items() if t > vtime or k in self.parked}
        self._prune_at = max(64, 2 * len(self.tags))

    def park(self, runner: EndpointRunner, transport: UdpTransport,
             peer: tuple[Any, ...] | None) -> None:
        """``transport`` is ready but the turn's budget is spent: queue it (once)."""
        key = id(transport)
        if key in self.parked:
            return  # (reported again: it was not registered through ``watch``)
        registration = runner.registration(transport)
        if registration is not None:
            self.loop.remove_reader(transport.fileno())
        entry: Parked = (runner, transport, peer, registration)
        self._requeue(key, entry)
        self.parks += 1
        if not self.armed:
            self._arm()

    def _requeue(self, key: int, entry: Parked) -> None:
        self.parked[key] = entry
        start = self.tags.get(key, 0)
        if start < self.vtime:
            start = self.vtime
        self.serial += 1
        heapq.heappush(self.queue, (start, self.serial, entry))

    def _arm(self) -> None:
        self.armed = True
        self.loop.call_soon(self._turn)

    def _turn(self) -> None:
        """A new turn (after the tasks the last one woke): serve the parked sockets in
        order while the budget lasts."""
        self.armed = False
        self.used = 0
        queue = self.queue
        parked = self.parked
        if queue:
            self.turns += 1
        try:
            while queue and self.used < self.budget:
                start, _, entry = heapq.heappop(queue)
                runner, transport, peer, registration = entry
                key = id(transport)
                if parked.get(key) is not entry:
                    continue
                del parked[key]
                if start > self.vtime:
                    self.vtime = start
                if runner.closed or transport.closed:
                    continue
                if registration is not None and runner.registration(transport) is not registration:
                    continue  # no longer read by the runner (unwatched meanwhile)
                used = self.used
                try:
                    more = runner.read_turn(transport, peer)
                except BaseException:
                    # (the loop's handler reports it) not left off the selector for good
                    if registration is not None and not transport.closed and (
                            runner.registration(transport) is registration):
                        self.loop.add_reader(transport.fileno(), registration[1],
                                             *registration[2])
                    raise
                if registration is None:
                    if more:  # (on the selector all along: reported again, it waits)
                        self._requeue(key, entry)
                elif runner.registration(transport) is not registration:
                    pass  # unwatched by what it read (a socket released, say)
                elif more or self.used > used:
                    # stopped at the budget, or it had data: it waits again, off the
                    # selector, with its new tag (a busy socket then costs no selector
                    # change per read: issue 11, 256 downloads, ~4 k pairs per GiB)
                    self._requeue(key, entry)
                else:  # read empty: back on the selector, read when data comes
                    self.loop.add_reader(transport.fileno(), registration[1],
                                         *registration[2])
        finally:
            if (queue or self.used) and not self.armed:
                self._arm()  # the queue's rest next turn; the budget renews then too

    def forget(self, transport: UdpTransport) -> None:
        """``transport`` is no longer read here (closed, handed over): drop its place."""
        self.parked.pop(id(transport), None)
        self.tags.pop(id(transport), None)
