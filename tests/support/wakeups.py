"""A lost wake-up check for the asyncio runners (test-only; nothing in ``src`` knows it).

Whenever the event loop is about to wait for I/O (the selector's ``select``: every ready
callback of the iteration has run), every live connection of every runner on the loop
must be in one of these states:

- *scheduled*: queued for a flush (``runner._dirty`` with the flush callback pending),
  for the send of a round that woke application code (``runner._deferred``), or
  waiting for its socket to drain (``runner._waiting``);
- *armed*: its deadline ``Connection.timer()`` is in the runner's ``_timers`` (not later
  than what the connection asks for), the loop wheel's heap holds that entry, and the
  wheel's loop timer is armed no later than it;
- and, when its next wake-up is more than ``quiet`` seconds away, *nothing to send now*:
  a send turn made now (a *probe*: ``runner._send``, what a spurious timer would do)
  builds no datagram. Something sendable with no wake-up near is a lost wake-up: a
  connection that owes a frame (stream data, MAX_DATA, MAX_STREAMS, an ACK, a BLOCKED
  frame...) while nothing will send it. A connection that waits on the peer (flow
  control, the congestion window with packets in flight) builds nothing.
- and, when that probe built nothing although neither the congestion window nor the
  pacer holds the connection back, *nothing owed* (``owed``, read from the state, not
  from what the build decided): no lost stream bytes, FIN, RESET_STREAM, STOP_SENDING,
  new bytes within both credits, pending control frame or due ACK. This is what finds a
  build that wrongly holds something back (lost bytes queued behind a stream waiting for
  MAX_DATA: tests/test_retransmit_when_blocked.py).

The application side too: a reader waits only while its stream has nothing to read, a
writer only while a bound holds it (or a woken writer has yet to pass the turn on), a
``create_stream`` only while the peer's stream limit is reached; pending events are
dispatched (``conn.events`` empty) unless a flush is scheduled.

And invariants of the connection's own state (``invariants``), which hold whether or
not a turn would send: an ACK owed for ack-eliciting packets has a deadline (or is due
at once), packets in flight have a loss/PTO deadline, an established connection has a
deadline at all (its idle timeout at least). They are checked at every pass and right
after every restore of a snapshot (``watch_restores``: a connection moved here, handed
over from another process or worker), before anything has run on it: a restore that
drops a deadline (the ACK's, the PTO's) is caught there, even when traffic would hide
it later.

Restored connections are checked like any other on the runner that adopted them
(``restore_one``: in-process takeovers and moves, and the successor's runner, which
serves before it reads its socket). A *paused* runner (``EndpointRunner.pause``: a
handoff passes its socket on) is skipped like a closed one: pausing is a legal quiet
state, because a paused runner never serves again — each of its connections was
captured and released (served by the successor from its restore on) or ends with the
process.

Install it on a running loop (``WakeupCheck(loop).install()``); ``violations`` lists
what it found, each kind once per connection with a count, and the connection's state
at the first finding. ``tests/conftest.py`` installs it on every runner's loop when
``QUICFLOW_WAKEUP_CHECK=1`` is set, and fails the test that left violations. Other
processes report through a *spool* directory (``QUICFLOW_WAKEUP_SPOOL``): forked
workers inherit the test's patches, and perf server subprocesses load them through
``tests/support/wakeup_site/sitecustomize.py`` (``install_in_process``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quicflow.aio import loopwheel
from quicflow.aio.sendbuffer import SendGate
from quicflow.aio.streams import WRITE_HIGH_WATER
from quicflow.transport.state import CLOSING

if TYPE_CHECKING:
    from quicflow.aio.connection import QuicConnection
    from quicflow.aio.runner import EndpointRunner
    from quicflow.transport.connection import Connection

#: a connection whose next wake-up is further away than this is probed (seconds)
QUIET = 0.25
#: the check runs at most this often while the loop is busy (it always runs before the
#: loop goes to sleep for longer than this)
INTERVAL = 0.005
#: a probe turn that ends this close to the connection's wake-up proves nothing (the
#: pacer lets a send go up to its granularity early)
SLACK = 0.002


@dataclass
class Violation:
    kind: str
    conn: str
    at: float  # loop time of the first finding
    detail: str
    state: dict[str, Any] = field(default_factory=dict)
    count: int = 1

    def __str__(self) -> str:
        return (f"{self.kind} x{self.count} on {self.conn} at {self.at:.3f}: {self.detail}\n"
                f"    state: {self.state}")


def conn_state(conn: Connection, now: float) -> dict[str, Any]:
    """What a lost wake-up report needs to know about ``conn`` (relative times)."""

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - now, 4)

    loss, cc, pacer = conn.loss, conn.loss.cc, conn.pacer
    queued = []
    for sid in conn.send_queue[:8]:
        stream = conn.streams.get(sid)
        send = stream.send if stream is not None else None
        if send is None:
            queued.append((sid, None))
            continue
        queued.append((sid, {"next": send.next_offset, "written": send.write_offset,
                             "max": send.max_data, "blocked_sent": send.blocked_sent_at,
                             "lost": bool(send.lost.starts), "fin": send.fin_written,
                             "fin_sent": send.fin_sent, "has_data": send.has_data_to_send()}))
    app = conn.spaces[2]
    return {
        "state": conn.state, "confirmed": conn.handshake_confirmed, "client": conn.is_client,
        "timer": rel(conn.timer()), "loss_timer": rel(loss.timer()),
        "pacer_deadline": rel(conn.pacer_deadline),
        "pacer": {"tokens": round(pacer.tokens), "last": rel(pacer.last_time),
                  "promised": round(pacer.promised)},
        "cwnd": cc.cwnd, "in_flight": cc.bytes_in_flight,
        "eliciting_in_flight": loss.ack_eliciting_in_flight, "pto_count": loss.pto_count,
        "srtt": round(loss.rtt.smoothed_rtt, 4),
        "send_queue": queued, "queue_len": len(conn.send_queue),
        "flow": {"peer_max": conn.flow.peer_max_data, "sent": conn.flow.data_sent,
                 "blocked_sent": conn.flow.blocked_sent_at,
                 "pending_max_data": conn.flow.pending_max_data},
        "pending_stream_updates": list(conn.pending_stream_updates[:8]),
        "max_streams_pending": (conn.bidi.pending_max_streams, conn.uni.pending_max_streams),
        "streams_blocked_pending": (conn.bidi.blocked_pending, conn.uni.blocked_pending),
        "ack": {"pending": app.ack_pending, "eliciting": app.ack_eliciting_pending,
                "deadline": rel(app.ack_deadline), "repeat_at": rel(app.ack_repeat_at)},
        "probes": list(conn.probes_pending), "idle": rel(conn.idle_deadline),
        "amplification": (conn.amplification_credit() if not conn.address_validated
                          else None),
        "events": len(conn.events), "sent": conn.counters.datagrams_sent,
    }


def conn_details(conn: Connection, now: float) -> dict[str, Any]:
    """``conn_state`` with every stream and the counters (a failed run's report)."""
    out = conn_state(conn, now)
    streams = {}
    for sid, stream in list(conn.streams.items())[:32]:
        send, recv = stream.send, stream.recv
        streams[sid] = {
            "send": None if send is None else (send.next_offset, send.write_offset,
                                               send.acked_offset, send.max_data,
                                               send.fin_written, send.fin_sent,
                                               send.fin_acked, send.reset_code),
            "recv": None if recv is None else (recv.read_offset, recv.ready_bytes,
                                               recv.max_data, recv.final_size,
                                               recv.fin_read, recv.reset_code)}
    out["streams"] = streams
    out["bidi"], out["uni"] = repr(conn.bidi), repr(conn.uni)
    out["counters"] = repr(conn.counters)
    out["host_cids"] = [(e.sequence, e.announced, e.retired) for e in conn.host_cids]
    out["spaces_discarded"] = [sp.discarded for sp in conn.spaces]
    out["received"] = repr(conn.spaces[2].received)[:200]
    return out


class WakeupCheck:
    """The check of one event loop (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, quiet: float = QUIET,
                 interval: float = INTERVAL, probe: bool = True) -> None:
        self.loop = loop
        self.quiet = quiet
        self.interval = interval
        self.probe = probe
        self.violations: dict[tuple[int, str], Violation] = {}
        self.checks = 0  # check passes made
        self.probes = 0  # probe turns made
        self.late_probes = 0  # of them, those that ran into the wake-up (not judged)
        #: every connection object checked, by id: held, so that an id is never that of
        #: an ended connection's successor (ended connections are freed at once)
        self.connections_seen: dict[int, Any] = {}
        self._last = -math.inf
        self._select: Any = None
        self._busy = False
        #: (``record``) each connection's details at the latest check: id -> state
        self.record = False
        self.last: dict[int, dict[str, Any]] = {}
        #: a directory: each finding (and each connection first seen) is written there
        #: at once, as JSON lines of this process (a worker process that ends with
        #: ``os._exit`` reports what it found that way)
        self.spool: str | None = None
        self.restores = 0  # snapshots restored on this loop (checked by watch_restores)

    # ------------------------------------------------------------------ install

    def install(self) -> WakeupCheck:
        selector = self.loop._selector  # type: ignore[attr-defined]
        if getattr(selector, "_wakeup_check", None) is not None:
            raise RuntimeError("a WakeupCheck is installed on this loop already")
        self._select = selector.select
        check = self

        def select(timeout: float | None = None) -> Any:
            if timeout is None or timeout > check.interval or (
                    check.loop.time() - check._last >= check.interval):
                check.check()
            return check._select(timeout)

        selector.select = select
        selector._wakeup_check = self
        return self

    def uninstall(self) -> None:
        selector = self.loop._selector  # type: ignore[attr-defined]
        if getattr(selector, "_wakeup_check", None) is self:
            del selector.select
            del selector._wakeup_check

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> WakeupCheck | None:
        selector = getattr(loop, "_selector", None)
        return getattr(selector, "_wakeup_check", None)

    def report(self) -> str:
        return "\n".join(str(v) for v in self.violations.values())

    def spool_line(self, kind: str, text: str) -> None:
        if self.spool is not None:
            spool_write(self.spool, kind, text)

    # ------------------------------------------------------------------ the check

    def _found(self, conn: Connection, kind: str, detail: str, now: float,
               state: dict[str, Any] | None = None) -> None:
        key = (id(conn), kind)
        found = self.violations.get(key)
        if found is not None:
            found.count += 1
            return
        name = f"{'client' if conn.is_client else 'server'} conn {conn.original_dcid.hex()[:8]}"
        found = self.violations[key] = Violation(
            kind, name, now, detail, state if state is not None else conn_state(conn, now))
        self.spool_line("violation", str(found))

    def check(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._check()
        finally:
            self._busy = False

    def _check(self) -> None:
        loop = self.loop
        now = loop.time()
        self._last = now
        self.checks += 1
        wheel = loopwheel._WHEELS.get(id(loop))
        if wheel is None or wheel.loop is not loop:
            return
        heap = {(id(t), k, d) for d, _, t, k in wheel.heap}
        handle = wheel.handle
        wheel_at = wheel.at if handle is not None and not handle.cancelled() else math.inf
        for runner in list(wheel.runners.values()):
            if runner._closed:
                continue
            for conn in list(runner.endpoint.all_connections):
                if conn.terminated or conn.released:
                    continue
                if id(conn) not in self.connections_seen:
                    self.connections_seen[id(conn)] = conn
                    self.spool_line("seen", conn.original_dcid.hex())
                if self.record:
                    self.last[id(conn)] = conn_details(conn, now)
                self._check_conn(runner, conn, now, heap, wheel_at)
            self._check_faces(runner, now)

    def _check_conn(self, runner: EndpointRunner, conn: Connection, now: float,
                    heap: set[tuple[int, int, float]], wheel_at: float) -> None:
        if ((conn in runner._dirty and runner._flush_scheduled) or conn in runner._deferred
                or _waits_writable(runner, conn)):
            return  # a turn comes at once (a flush, or a round's send queued by defer_send)
        if conn in runner._dirty:
            self._found(conn, "dirty-unscheduled", "in _dirty without a flush scheduled", now)
        for broken in invariants(conn):
            self._found(conn, "invariant", broken, now)
        if conn.events:
            self._found(conn, "undispatched-events",
                        f"{[type(e).__name__ for e in conn.events[:4]]} left in conn.events",
                        now)
        key = id(conn)
        entry = runner._timers.get(key)
        wake = math.inf
        if entry is not None and entry[1] is conn:
            if (id(runner._timers), key, entry[0]) in heap:
                wake = max(entry[0], wheel_at)
            else:
                self._found(conn, "timer-not-in-wheel",
                            f"deadline {entry[0] - now:+.4f} s not in the wheel's heap", now)
        deadline = conn.timer()
        if deadline is not None and deadline < wake - 1e-6:
            self._found(conn, "deadline-not-armed",
                        f"timer() {deadline - now:+.4f} s but the next wake-up is "
                        f"{wake - now:+.4f} s", now)
            wake = deadline  # (a lost deadline is reported once, not probed for too)
        if not self.probe or wake <= now + self.quiet or conn.state >= CLOSING:
            return
        # nothing comes within ``quiet``: a turn now must build nothing. (The clock is
        # read again around the turn: a starved process can lose the CPU for longer than
        # ``quiet`` in the middle of a check, and a turn made at or after the wake-up may
        # rightly send what was held until then.)
        start = self.loop.time()
        if wake <= start + self.quiet:
            return
        state = conn_state(conn, start)
        counters = conn.counters
        before = counters.datagrams_sent + counters.packets_sent
        self.probes += 1
        runner._send(conn)
        built = counters.datagrams_sent + counters.packets_sent - before
        end = self.loop.time()
        if built and end + SLACK < wake:
            self._found(conn, "sendable-without-wakeup",
                        f"a turn now built datagrams/packets ({built}); next wake-up was "
                        f"{wake - start:+.4f} s away (turn {end - start:.4f} s); after it: "
                        f"{conn_state(conn, end)}", start, state)
        if built:
            if end + SLACK >= wake:
                self.late_probes += 1
            return
        now = end
        # The turn built nothing: then nothing may be owed that the congestion window,
        # the pacer and the amplification limit let go now (what is owed is read from
        # the state, not from what the build decided: a build that wrongly holds
        # something back is what this finds).
        if conn.state >= CLOSING or not conn.address_validated or (
                _waits_writable(runner, conn) or conn in runner._dirty):
            return  # (the probe's turn left it waiting for its socket, or more to send)
        paced = conn.pacer_deadline
        if paced is not None and paced > now:
            return  # the pacer holds it back: the timer is armed for it (checked above)
        cc = conn.loss.cc
        if cc.cwnd - cc.bytes_in_flight < conn.max_datagram_size:
            if not conn.loss.ack_eliciting_in_flight:
                self._found(conn, "window-full-nothing-in-flight",
                            "the congestion window is full with nothing ack-eliciting in "
                            "flight", now, state)
            return
        reasons = owed(conn, now)
        if reasons:
            self._found(conn, "owed-not-built",
                        f"a turn now built nothing, yet owed: {reasons[:6]}; next wake-up "
                        f"{wake - now:+.3f} s away", now, state)

    def _check_faces(self, runner: EndpointRunner, now: float) -> None:
        budget = runner.send_budget
        faces: list[QuicConnection] = list(runner.faces.values())
        # a writer woken at a gate and not yet back (it passes the turn on when it is)
        woken = any(w._waiter is not None and w._waiter.done()
                    for face in faces for w in face._writers.values())
        gates_passing = budget.gate._pass_scheduled or any(
            f.send_gate._pass_scheduled for f in faces)
        for face in faces:
            conn = face.conn
            if conn.terminated or face.closed:
                continue
            for sid, reader in face._readers.items():
                waiter = reader._waiter
                if waiter is not None and not waiter.done() and _readable(conn, sid):
                    self._found(conn, "reader-not-woken",
                                f"stream {sid}: a reader waits with data, FIN or reset there",
                                now)
            held = conn.send_buffered
            bound = (held > face.send_limit or budget.used > budget.limit
                     or budget.over_fair_share(held, len(runner.faces)))
            for sid, writer in face._writers.items():
                waiter = writer._waiter
                if waiter is None or waiter.done():
                    continue
                if writer._gated:
                    if not bound and not woken and not gates_passing and not _gate_has_done(
                            face.send_gate, budget.gate):
                        self._found(conn, "writer-not-woken",
                                    f"stream {sid}: a writer waits at a gate with no bound "
                                    f"exceeded (held {held}, endpoint {budget.used})", now)
                elif _waits_in(waiter, "wait_closed"):
                    stream = conn.streams.get(sid)
                    if stream is None or stream.send is None or stream.send.is_complete():
                        self._found(conn, "writer-not-woken",
                                    f"stream {sid}: wait_closed() waits on a stream whose "
                                    "data is all acknowledged", now)
                elif conn.stream_buffered(sid) <= WRITE_HIGH_WATER:
                    self._found(conn, "writer-not-woken",
                                f"stream {sid}: a writer waits under the high-water mark",
                                now)
            # (a waiter's stream type is not known: only when both types have room)
            if (any(not w.done() for w in face._streams_waiters)
                    and conn.bidi.opened_local < conn.bidi.peer_max
                    and conn.uni.opened_local < conn.uni.peer_max):
                self._found(conn, "opener-not-woken",
                            "create_stream() waits with streams of both types free", now)


def _waits_writable(runner: EndpointRunner, conn: Connection) -> bool:
    """``conn`` waits for a socket of ``runner`` to drain (its turn comes then)."""
    return any(conn in queue for _, queue in runner._waiting.values())


def _gate_has_done(*gates: SendGate) -> bool:
    return any(w.done() for g in gates for w in (g._waiters or ()))


def watch_runners(monkeypatch: Any, spool: str | None = None) -> list[WakeupCheck]:
    """Install a check on the loop of every :class:`EndpointRunner` made from now on,
    and ``watch_restores`` (``monkeypatch``: undone at the test's end); the list fills
    with the checks made in this process. A worker forked meanwhile inherits the
    patches: its checks write to ``spool`` (it reports nothing otherwise)."""
    from quicflow.aio.runner import EndpointRunner

    checks: list[WakeupCheck] = []
    origin = os.getpid()
    init = EndpointRunner.__init__

    def patched(self: EndpointRunner, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        if WakeupCheck.of(self.loop) is None:
            check = WakeupCheck(self.loop)
            if os.getpid() != origin:  # a forked worker
                check.spool = spool
                check.spool_line("installed", "forked worker")
            checks.append(check.install())

    monkeypatch.setattr(EndpointRunner, "__init__", patched)
    watch_restores(monkeypatch.setattr, spool)
    return checks


def install_in_process(spool: str) -> None:
    """In a process the tests started (``wakeup_site/sitecustomize.py``): a check with
    ``spool`` on the loop of every runner, and ``watch_restores``, for the process's
    life."""
    from quicflow.aio.runner import EndpointRunner

    init = EndpointRunner.__init__

    def patched(self: EndpointRunner, *args: Any, **kw: Any) -> None:
        init(self, *args, **kw)
        if WakeupCheck.of(self.loop) is None:
            check = WakeupCheck(self.loop)
            check.spool = spool
            check.spool_line("installed", " ".join(sys.argv[:4]))
            check.install()

    EndpointRunner.__init__ = patched  # type: ignore[method-assign]
    watch_restores(setattr, spool)


def watch_restores(setattr_: Any, spool: str | None = None) -> None:
    """Check ``invariants`` on every connection restored from a snapshot right after its
    restore (``restore_sealed`` as ``restore_one`` calls it), before anything runs on it;
    findings go to the check of the running loop (or to ``spool``)."""
    from quicflow.aio import handover

    restore = handover.restore_sealed
    if getattr(restore, "_wakeup_watch", False):
        return  # watched already (this process, or the process it was forked from)

    def checked(*args: Any, **kw: Any) -> Any:
        conn, app_state = restore(*args, **kw)
        check = WakeupCheck.of(asyncio.get_running_loop())
        if check is not None:
            check.restores += 1
            check.spool_line("restored", conn.original_dcid.hex())
        for broken in invariants(conn):
            if check is not None:
                check._found(conn, "restored-invariant", broken, kw.get("now", 0.0))
            elif spool is not None:
                spool_write(spool, "violation", f"restored-invariant: {broken}")
        return conn, app_state

    checked._wakeup_watch = True  # type: ignore[attr-defined]
    setattr_(handover, "restore_sealed", checked)


def invariants(conn: Connection) -> list[str]:
    """Deadlines ``conn``'s state must have, whatever a turn would send: an ACK owed for
    ack-eliciting packets has a deadline or is due at once; ack-eliciting packets in
    flight have a loss/PTO deadline (unless the anti-amplification limit holds the
    server back); an established connection has a deadline at all
    (its idle timeout at least). Empty when all hold (or the connection is closing)."""
    if conn.terminated or conn.released or conn.state >= CLOSING:
        return []
    out = []
    app = conn.spaces[2]
    if (not app.discarded and app.ack_eliciting_pending and not app.ack_immediately
            and app.ack_deadline is None):
        out.append(f"{app.ack_eliciting_pending} ack-eliciting packets owe an ACK with no "
                   "ACK deadline")
    loss = conn.loss
    # (a server at its anti-amplification limit on a path not validated yet, after a
    # client's address changed, arms no PTO: RFC 9002 §6.2.2.1, "packets sent on PTO
    # count against the anti-amplification limit"; what the client sends wakes it)
    if (conn.handshake_confirmed and loss.ack_eliciting_in_flight and loss.timer() is None
            and not loss.amplification_limited):
        out.append(f"{loss.ack_eliciting_in_flight} ack-eliciting packets in flight with "
                   "no loss/PTO deadline")
    if conn.handshake_confirmed and conn.timer() is None:
        out.append("an established connection with no deadline at all")
    return out


def spool_write(spool: str, kind: str, text: str) -> None:
    """One JSON line (this process, ``kind``, ``text``) appended to ``spool``'s file of
    this process, in one write (workers end with ``os._exit``: nothing is buffered)."""
    line = json.dumps({"pid": os.getpid(), "kind": kind, "text": text}) + "\n"
    fd = os.open(os.path.join(spool, f"wakeups-{os.getpid()}.jsonl"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_spool(spool: str) -> list[dict[str, Any]]:
    """Every line the processes wrote to ``spool`` (see ``spool_write``)."""
    out = []
    for name in sorted(os.listdir(spool)):
        if name.startswith("wakeups-") and name.endswith(".jsonl"):
            with open(os.path.join(spool, name)) as f:
                out += [json.loads(line) for line in f if line.strip()]
    return out


def _waits_in(waiter: asyncio.Future[None], name: str) -> bool:
    """Whether the task waiting for ``waiter`` waits in a coroutine function ``name``."""
    for callback, _ in getattr(waiter, "_callbacks", None) or ():
        task = getattr(callback, "__self__", None)
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        while coro is not None:
            code = getattr(coro, "cr_code", None)
            if code is not None and code.co_name == name:
                return True
            coro = getattr(coro, "cr_await", None)
    return False


def _readable(conn: Connection, sid: int) -> bool:
    """A read of stream ``sid`` now would return data, the end, or raise the reset."""
    stream = conn.streams.get(sid)
    recv = stream.recv if stream is not None else None
    return recv is None or bool(recv.ready_bytes) or recv.at_eof() or (
        recv.reset_code is not None)


def owed(conn: Connection, now: float) -> list[str]:
    """What ``conn`` owes its peer that only its congestion window, pacer or
    amplification limit may hold back (not the peer's flow control): lost stream bytes, a
    FIN, RESET_STREAM, STOP_SENDING, new stream bytes within both credits, control
    frames (credit updates, BLOCKED frames, CIDs...), an ACK that is due. A probe turn
    that builds nothing while this is not empty has held something back for nothing."""
    out: list[str] = []
    flow = conn.flow
    credit = flow.peer_max_data - flow.data_sent
    queued = set(conn.send_queue)
    for sid, stream in conn.streams.items():
        send, recv = stream.send, stream.recv
        if send is not None and send.reset_code is None:
            if send.lost.starts or send.fin_lost:
                out.append(f"stream {sid}: lost bytes {send.lost} fin {send.fin_lost}")
            elif (send.next_offset < send.write_offset and send.next_offset < send.max_data
                  and credit > 0):
                out.append(f"stream {sid}: new bytes at {send.next_offset} (credit {credit}, "
                           f"stream limit {send.max_data}){'' if sid in queued else ', unqueued'}")
            elif (send.fin_written and not send.fin_sent
                  and send.next_offset == send.write_offset):
                out.append(f"stream {sid}: a FIN")
            elif send.is_flow_blocked() and send.blocked_sent_at != send.max_data:
                out.append(f"stream {sid}: STREAM_DATA_BLOCKED at {send.max_data}")
        if send is not None and send.reset_pending:
            out.append(f"stream {sid}: RESET_STREAM")
        if recv is not None and recv.stop_sending_pending:
            out.append(f"stream {sid}: STOP_SENDING")
    if credit <= 0 and flow.blocked_sent_at != flow.peer_max_data and any(
            (s := conn.streams.get(sid)) is not None and s.send is not None
            and s.send.next_offset < min(s.send.write_offset, s.send.max_data)
            for sid in queued):
        out.append(f"DATA_BLOCKED at {flow.peer_max_data}")
    flags = {
        "MAX_DATA": flow.pending_max_data,
        "MAX_STREAM_DATA": any(
            (s := conn.streams.get(sid)) is not None and s.recv is not None
            and s.recv.final_size is None for sid in conn.pending_stream_updates),
        "MAX_STREAMS": conn.bidi.pending_max_streams or conn.uni.pending_max_streams,
        "STREAMS_BLOCKED": conn.bidi.blocked_pending or conn.uni.blocked_pending,
        "HANDSHAKE_DONE": conn.handshake_done_pending,
        "PING (key update)": conn.key_update_ping,
        "NEW_TOKEN": conn.new_token_pending and conn.handshake_confirmed and bool(conn.new_token),
        "PATH_CHALLENGE": conn.path_challenge_pending and bool(conn.path_challenge),
        "PATH_RESPONSE": bool(conn.path_challenges_received),
        "RETIRE_CONNECTION_ID": bool(conn.retire_pending),
        "NEW_CONNECTION_ID": conn.host_cids_pending or any(
            not e.announced and not e.retired and e.sequence > 0
            and e.sequence >= conn.host_retire_prior_to for e in conn.host_cids),
        "ACK_FREQUENCY": conn.ack_freq.pending or conn.ack_freq.immediate_pending,
        "DATAGRAM": bool(conn.datagrams_pending),
        "probe": bool(conn.probes_pending[2]),
    }
    out += [name for name, due in flags.items() if due]
    app = conn.spaces[2]
    if app.ack_pending and app.ack_eliciting_pending and not app.discarded and (
            app.ack_immediately or (app.ack_deadline is not None and app.ack_deadline <= now)):
        out.append("ACK (due)")
    return out
