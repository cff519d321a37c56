"""Worker processes: a supervising parent forks N workers, restarts those that die, stops
them all gracefully, and gathers their counters.

How the application reaches the workers: by ``fork()`` after binding. The parent binds
the reuseport group (and makes the handoff inboxes) first, then forks; a worker runs
``target(context)`` in the child with everything the parent had — the sockets, the
handler object, closures — so nothing has to be importable or picklable. A restarted
worker is forked again from the parent as it is at that moment. The child leaves the
parent's event loop alone (it drops the running-loop mark and the signal wake-up fd,
restores default signal handlers) and ends with ``os._exit`` so it never returns into
the parent's code.

Supervision is asyncio: a pidfd per worker (``os.pidfd_open``) tells the parent's loop
that a worker ended, without SIGCHLD handlers. Each worker has a control socket (a
SOCK_SEQPACKET pair) on which it sends JSON messages: ``{"ready": true}`` once it serves,
and its counters (``{"stats": {...}}``) every ``report_interval`` and when it stops.
The counters of a worker that died are kept and added to its restarted successor's.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WorkerContext", "WorkerSlot", "WorkerSupervisor", "merge_counters"]

#: Counters that are a peak, not a total: merged with max() instead of +.
PEAK_COUNTERS = frozenset({"connected_sockets"})
_MESSAGE_BYTES = 1 << 20
#: A worker that dies within this many seconds of its start is restarted with a doubling
#: delay, up to MAX_RESTART_DELAY.
YOUNG_SECONDS = 1.0
MAX_RESTART_DELAY = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when its parent ends (prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def merge_counters(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` and ``b`` added key by key (nested dicts too); peaks take the max; anything
    that is not a number takes ``b``'s value."""
    out = dict(a)
    for key, value in b.items():
        old = out.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float | dict):
            out[key] = value
        elif isinstance(value, dict):
            out[key] = merge_counters(old if isinstance(old, dict) else {}, value)
        elif isinstance(old, int | float) and not isinstance(old, bool):
            out[key] = max(old, value) if key in PEAK_COUNTERS else old + value
        else:
            out[key] = value
    return out


class WorkerContext:
    """What a worker's ``target`` gets: its index and its line to the parent."""

    def __init__(self, index: int, control: socket.socket, incarnation: int = 0) -> None:
        self.index = index
        self.control = control
        #: 0 for the slot's first worker, then 1, 2... for each restart
        self.incarnation = incarnation

    def receive(self) -> list[dict[str, Any]]:
        """Messages the parent sent (``WorkerSupervisor.send``) and not yet read (call
        when the control socket is readable)."""
        out: list[dict[str, Any]] = []
        while True:
            try:
                raw = self.control.recv(_MESSAGE_BYTES, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            if not raw:
                return out
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict):
                out.append(message)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.control.send(json.dumps(message).encode())
        except OSError:
            pass  # the parent is gone or busy: counters are best effort

    def ready(self) -> None:
        self.send({"ready": True})

    def report(self, stats: dict[str, Any]) -> None:
        self.send({"stats": stats})


@dataclass(eq=False)
class WorkerSlot:
    """One worker position (worker ID ``index``) across restarts."""

    index: int
    parent_end: socket.socket
    child_end: socket.socket
    pid: int = 0  # 0 while no worker runs in this slot
    last_pid: int = 0
    pidfd: int = -1
    restarts: int = 0
    ready: bool = False
    started: float = 0.0  # loop time of the latest fork
    backoff: float = 0.0  # delay before the latest restart
    stats: dict[str, Any] = field(default_factory=dict)  # the running worker's latest
    past: dict[str, Any] = field(default_factory=dict)  # summed over ended workers
    exit_codes: list[int] = field(default_factory=list)  # of ended workers (-N: signal N)
    #: what the worker said last about a handoff: {"handed_off": N} or {"restored": N}
    handoff: dict[str, Any] = field(default_factory=dict)

    def counters(self) -> dict[str, Any]:
        return merge_counters(self.past, self.stats)


class WorkerSupervisor:
    """Forks ``count`` workers running ``target(WorkerContext)`` (an exit code).

    Call :meth:`start` from a running event loop, then ``await wait_ready()``;
    :meth:`stop` ends them (SIGTERM, then SIGKILL after ``timeout``).
    """

    def __init__(
        self,
        count: int,
        target: Callable[[WorkerContext], int],
        *,
        restart: bool = True,
        restart_delay: float = 0.05,
        on_fork: Callable[[int], None] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError(f"workers must be at least 1, got {count}")
        self.target = target
        self.restart = restart
        self.restart_delay = restart_delay
        #: called in each new child before ``target`` (with the worker index)
        self.on_fork = on_fork
        self.slots: list[WorkerSlot] = []
        for i in range(count):
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            parent_end.setblocking(False)
            self.slots.append(WorkerSlot(i, parent_end, child_end))
        self.stopping = False
        self._parent_pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    # ------------------------------------------------------------------ parent

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        for slot in self.slots:
            self._loop.add_reader(slot.parent_end.fileno(), self._on_message, slot)
        for slot in self.slots:
            self._fork(slot)

    @property
    def pids(self) -> list[int]:
        return [slot.pid for slot in self.slots]

    def _fork(self, slot: WorkerSlot) -> None:
        assert self._loop is not None
        slot.ready = False
        sys.stdout.flush()  # or a child could write the parent's buffered output again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._child(slot)  # never returns
        slot.pid = slot.last_pid = pid
        slot.started = self._loop.time()
        slot.stats = {}
        slot.pidfd = os.pidfd_open(pid)
        self._loop.add_reader(slot.pidfd, self._on_exit, slot)
        self._notify()

    def _on_message(self, slot: WorkerSlot) -> None:
        while True:
            try:
                raw = slot.parent_end.recv(_MESSAGE_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not raw:
                break
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if message.get("ready"):
                slot.ready = True
            for key in ("handed_off", "restored", "handoff_error"):
                if key in message:
                    slot.handoff[key] = message[key]
            stats = message.get("stats")
            if isinstance(stats, dict):
                slot.stats = stats
        self._notify()

    def _on_exit(self, slot: WorkerSlot) -> None:
        assert self._loop is not None
        self._loop.remove_reader(slot.pidfd)
        os.close(slot.pidfd)
        slot.pidfd = -1
        self._on_message(slot)  # its last report, if any
        try:
            _, status = os.waitpid(slot.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = -1
        slot.exit_codes.append(code)
        slot.past = slot.counters()
        slot.stats = {}
        slot.ready = False
        slot.pid = 0
        self._notify()
        if not self.stopping and self.restart:
            slot.restarts += 1
            # A worker that dies young (a crash at start-up) is restarted ever later.
            lived = self._loop.time() - slot.started
            slot.backoff = (
                min(max(2 * slot.backoff, self.restart_delay), MAX_RESTART_DELAY)
                if lived < YOUNG_SECONDS else self.restart_delay
            )  # fmt: skip
            self._loop.call_later(slot.backoff, self._restart, slot)

    def _restart(self, slot: WorkerSlot) -> None:
        if not self.stopping and slot.pid == 0:
            self._fork(slot)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked after every worker event)."""
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("workers did not reach the expected state in time")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every worker is running and has said it serves."""
        await self.wait_for(lambda: all(s.pid and s.ready for s in self.slots), timeout)

    def send(self, index: int, message: dict[str, Any]) -> None:
        """Send worker ``index`` a message (it reads it with ``WorkerContext.receive``)."""
        try:
            self.slots[index].parent_end.send(json.dumps(message).encode())
        except OSError:
            pass  # not running: a restarted worker reads its orders from its spec

    def signal(self, index: int, signum: int) -> None:
        pid = self.slots[index].pid
        if pid:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop every worker: SIGTERM (a graceful stop), SIGKILL after ``timeout``."""
        self.stopping = True
        for slot in self.slots:
            self.signal(slot.index, signal.SIGTERM)
        try:
            await self.wait_for(lambda: all(s.pid == 0 for s in self.slots), timeout)
        except TimeoutError:
            for slot in self.slots:
                self.signal(slot.index, signal.SIGKILL)
            await self.wait_for(lambda: all(s.pid == 0 for s in self.slots), timeout)
        self.close()

    def close(self) -> None:
        """Release the control sockets (after :meth:`stop`)."""
        loop = self._loop
        for slot in self.slots:
            if loop is not None and slot.parent_end.fileno() >= 0:
                loop.remove_reader(slot.parent_end.fileno())
            slot.parent_end.close()
            slot.child_end.close()

    # ------------------------------------------------------------------ child

    def _child(self, slot: WorkerSlot) -> None:
        code = 1
        try:
            # The parent's loop stays the parent's: forget it, and its signal wake-up fd
            # (a signal to this child must not wake the parent's loop).
            asyncio.events._set_running_loop(None)
            asyncio.set_event_loop(None)
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Ctrl-C reaches the whole process group: the supervisor turns it into a
            # SIGTERM for every worker, so a worker ignores SIGINT (no restart races)...
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # ... and is told to stop when the supervisor dies without stopping it.
            _die_with_parent(self._parent_pid)
            for other in self.slots:
                other.parent_end.close()
                if other is not slot:
                    other.child_end.close()
            if self.on_fork is not None:
                self.on_fork(slot.index)
            code = self.target(WorkerContext(slot.index, slot.child_end, slot.restarts))
        except BaseException:
            try:
                traceback.print_exc()
                sys.stderr.flush()
            except BaseException:
                pass
        finally:
            os._exit(code)
