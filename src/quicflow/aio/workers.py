"""``serve(..., workers=N)``: N worker processes behind one port, steered by connection ID.

The caller's process is the supervisor. It binds the port as a reuseport group of N
sockets (member i is worker i's, bound before anything else), attaches the CBPF steering
program (unless ``steering=False``), makes the handoff inboxes, then forks the workers
(``datapath/workers.py``): each runs its own event loop, endpoint and runner on its own
member socket, issues CIDs whose QUIC-LB server ID is ``host ID + worker ID`` and hands
datagrams of other workers' connections to their owners (``datapath/handoff.py``). The
handler reaches the workers by fork: whatever ``handler`` and ``connection_handler``
are (closures included), each worker has its own copy, taken when it is forked; a worker
that dies is forked again from the supervisor as it is then.

The supervisor keeps every member socket open while the group lives, so the kernel
never moves a member into another's slot: a worker's slot waits (its datagrams queue in
its socket) until the restarted worker reads it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..crypto.native import best_engine
from ..datapath.connected import SocketPolicy, add_counters
from ..datapath.handoff import CidRoute, HandoffInboxes, SteeringTransport
from ..datapath.reuseport import ReuseportGroup
from ..datapath.socket import ensure_port_free
from ..datapath.workers import WorkerContext, WorkerSupervisor, merge_counters
from ..endpoint.cids import CidGenerator
from ..endpoint.endpoint import Endpoint
from ..endpoint.quiclb import QuicLbConfig, ServerIdLayout
from ..migration.group import offer_group, same_socket, take_over_group, worker_path
from ..migration.handoff import HandoffError, HandoffListener, Received, refuse, reply, take_over
from ..tls.shared_strikes import shared_strike_register
from ..transport.codec import SnapshotError
from ..transport.config import Configuration
from ..transport.connection import Connection
from .connection import QuicConnection, StreamHandler
from .handover import CaptureHook, Handover, RestoreHook, restore_server
from .runner import EndpointRunner
from .stats import datapath_ratios

__all__ = ["CidPlan", "WorkerGroupServer", "serve_workers", "worker_counters"]

#: How often a worker reports its counters to the supervisor (seconds).
REPORT_INTERVAL = 0.25
#: How long a stopping worker waits for its connections' closes to go out.
CLOSE_GRACE = 0.5
#: How long a successor worker waits for its predecessor to offer at ``PATH.i``.
TAKEOVER_WAIT = 10.0
#: How long a successor group waits for its workers to take over and serve.
TAKEOVER_READY_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class CidPlan:
    """The QUIC-LB layout of a server's CIDs: ``quic_lb`` (its ``server_id_len`` is
    host_id_len + 1: one worker byte last) and this host's ``host_id``."""

    quic_lb: QuicLbConfig = QuicLbConfig()
    host_id: int = 0

    def __post_init__(self) -> None:
        ServerIdLayout(self.host_id, self.host_id_len, 0, 1)  # checks the host ID fits

    @property
    def host_id_len(self) -> int:
        return self.quic_lb.server_id_len - 1

    def layout(self, worker_id: int) -> ServerIdLayout:
        return ServerIdLayout(self.host_id, self.host_id_len, worker_id, 1)

    def generator(self, worker_id: int) -> CidGenerator:
        return CidGenerator(self.quic_lb, self.layout(worker_id).server_id())

    def route(self, workers: int) -> CidRoute:
        host_part = self.host_id.to_bytes(self.host_id_len, "big") if self.host_id_len else b""
        return CidRoute(self.quic_lb.cid_len, self.quic_lb.config_id, host_part, workers)

    def configuration(self, config: Configuration) -> Configuration:
        """``config`` with its CID length set to the QUIC-LB CID length."""
        return replace(config, connection_id_length=self.quic_lb.cid_len)


def connected_sockets_peak(runner: EndpointRunner) -> int:
    """The most per-connection sockets the runner held at once (0 without them)."""
    return runner.sockets.counters.connected_sockets if runner.sockets is not None else 0


def worker_counters(
    runner: EndpointRunner, app: Callable[[], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The counters one worker reports (raw counts; the supervisor adds them up)."""
    transport = runner.transport
    endpoint = runner.endpoint
    datapath = transport.counters
    if runner.sockets is not None:  # the listener's and every per-connection socket's
        datapath = runner.sockets.datapath_totals()
        add_counters(datapath, transport.counters)
    out: dict[str, Any] = {
        "connections": endpoint.counters.connections_accepted,
        "datagrams_received": datapath.datagrams_received,
        "misrouted_datagrams": getattr(transport, "misrouted_datagrams", 0),
        "handed_over_datagrams": getattr(transport, "handed_over_datagrams", 0),
        "handoff_dropped": getattr(transport, "handoff_dropped", 0),
        "connected_sockets": connected_sockets_peak(runner),
        "live_connections": len(runner.faces),
        "endpoint": asdict(endpoint.counters),
        "datapath": {**asdict(datapath), "backend": transport.backend},
    }
    if app is not None:
        out["app"] = app()
    return out


@dataclass(slots=True)
class _WorkerSpec:
    handler: StreamHandler | None
    connection_handler: Any
    configuration: Configuration
    backend: str
    plan: CidPlan
    group: ReuseportGroup
    inboxes: HandoffInboxes
    app_stats: Callable[[], dict[str, Any]] | None
    connection_sockets: int = 0
    socket_policy: SocketPolicy | None = None
    face_class: type[QuicConnection] = QuicConnection
    capture: CaptureHook | None = None
    restore: RestoreHook | None = None
    #: the group's takeover path (worker i takes over from ``PATH.i`` when first started)
    takeover: str | None = None
    #: the group's handoff path once offered (worker i offers at ``PATH.i``)
    handoff: str | None = None
    #: called in each worker with its Handover (e.g. to set ``before_stop``)
    on_handover: Callable[[Handover], None] | None = None


def _run_worker(spec: _WorkerSpec, ctx: WorkerContext) -> int:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(_worker(spec, ctx))


async def _take_over_worker(path: str, deadline: float) -> Received:
    """Take over from old worker ``path`` (retried until ``deadline``: it may still be
    starting to offer)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await loop.run_in_executor(None, take_over, path)
        except HandoffError:
            if loop.time() >= deadline or os.path.exists(path):
                raise
            await asyncio.sleep(0.05)


async def _worker(spec: _WorkerSpec, ctx: WorkerContext) -> int:
    loop = asyncio.get_running_loop()
    index = ctx.index
    workers = len(spec.group)
    received: Received | None = None
    if spec.takeover is not None and ctx.incarnation == 0:
        try:
            received = await _take_over_worker(worker_path(spec.takeover, index),
                                               loop.time() + TAKEOVER_WAIT)
            if not received.sockets or not same_socket(received.sockets[0],
                                                        spec.group.sockets[index]):
                raise HandoffError(f"worker {index}'s predecessor passed another socket "
                                   "than the group's member socket")
        except HandoffError as exc:
            if received is not None:
                received.acknowledge({"restored": 0, "error": str(exc)})
            ctx.send({"handoff_error": str(exc)})
            return 2
        received.sockets[0].close()  # a copy of the member socket the group holds
    transport = SteeringTransport(
        spec.group.sockets[index], spec.plan.route(workers), index, spec.inboxes,
        backend=spec.backend,
    )  # fmt: skip
    endpoint = Endpoint(
        spec.configuration, is_server=True, engine=best_engine(),
        cid_generator=spec.plan.generator(index),
    )  # fmt: skip
    box: list[EndpointRunner] = []
    report_soon: list[bool] = [False]

    def report() -> None:
        report_soon[0] = False
        ctx.report(worker_counters(box[0], spec.app_stats))

    def on_accept(conn: Connection) -> QuicConnection:
        # Report each new connection at once: a worker that is killed loses only what
        # happened since its last report, and accepted connections are what tests count.
        if not report_soon[0]:
            report_soon[0] = True
            loop.call_soon(report)
        face = spec.face_class(box[0], conn, stream_handler=spec.handler)
        if spec.connection_handler is not None:
            result = spec.connection_handler(face)
            if asyncio.iscoroutine(result):
                loop.create_task(result)
        return face

    runner = EndpointRunner(transport, endpoint, on_accept=on_accept, read=received is None)
    box.append(runner)
    if spec.connection_sockets:
        # Per-connection sockets (datapath/connected.py): bound to the port after the
        # group's listeners, so they join the group behind them (indices >= N; the
        # supervisor holds the listeners open, so slots 0..N-1 stay theirs).
        runner.enable_connection_sockets(spec.connection_sockets, spec.socket_policy)
    handover = Handover(runner, spec.capture, handler=spec.handler, restore=spec.restore,
                        face_class=spec.face_class)
    if spec.on_handover is not None:
        spec.on_handover(handover)
    if received is not None:
        count = 0
        try:
            handover.guard, count = await restore_server(
                runner, received, handler=spec.handler, restore=spec.restore,
                face_class=spec.face_class)
        except (HandoffError, SnapshotError) as exc:
            ctx.send({"handoff_error": f"worker {index}: {exc}"})
            return 2
        finally:
            received.acknowledge({"restored": count})
        ctx.send({"restored": count})
    loop.add_reader(transport.inbox_fileno(), runner.read_now)

    def offer(path: str) -> None:
        if handover.listener is None and not handover.handed_off.done():
            handover.offer(worker_path(path, index))

    def on_control() -> None:
        for message in ctx.receive():
            path = message.get("handoff")
            if isinstance(path, str):
                offer(path)

    loop.add_reader(ctx.control.fileno(), on_control)
    if spec.handoff is not None:
        offer(spec.handoff)
    stop = asyncio.Event()
    handover.handed_off.add_done_callback(lambda _: stop.set())
    loop.add_signal_handler(signal.SIGTERM, stop.set)  # SIGINT is the supervisor's
    ctx.ready()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), REPORT_INTERVAL)
        except TimeoutError:
            pass
        report()
    loop.remove_reader(ctx.control.fileno())
    loop.remove_reader(transport.inbox_fileno())
    if handover.handed_off.done():  # the connections and sockets went to the successor
        error = handover.handed_off.exception()
        ctx.report(worker_counters(runner, spec.app_stats))
        if error is not None:
            ctx.send({"handoff_error": f"worker {index}: {error}"})
            return 1
        ctx.send({"handed_off": handover.handed_off.result()})
        return 0
    handover.close()
    # Graceful stop: close every connection (code 0), let the closes go out.
    for face in list(runner.faces.values()):
        face.close()
    deadline = loop.time() + CLOSE_GRACE
    while runner.faces and loop.time() < deadline:
        await asyncio.sleep(0.02)
    ctx.report(worker_counters(runner, spec.app_stats))
    runner.close()
    return 0


class WorkerGroupServer:
    """A running worker group: the supervisor's handle (see the module docstring)."""

    def __init__(
        self, group: ReuseportGroup, inboxes: HandoffInboxes, supervisor: WorkerSupervisor,
        plan: CidPlan, steering: bool, spec: _WorkerSpec | None = None,
    ) -> None:
        self.group = group
        self.inboxes = inboxes
        self.supervisor = supervisor
        self.plan = plan
        self.steering = steering
        self.spec = spec
        self._address = group.address
        self._closing: asyncio.Task[None] | None = None
        self._listener: HandoffListener | None = None
        self._handed_off: asyncio.Future[int] | None = None
        self._handing = False

    # ------------------------------------------------------------------ handoff

    @property
    def restored_connections(self) -> int:
        """How many connections the workers took over when the group started."""
        return sum(int(s.handoff.get("restored", 0)) for s in self.supervisor.slots)

    def handoff(self, path: str) -> asyncio.Future[int]:
        """Offer the group to a successor group of as many workers (``serve(workers=N,
        takeover=path)``): the group offers at ``path``, worker i at ``path.i`` (see
        ``migration.group``). The future resolves with how many connections the workers
        handed over, once every worker has ended."""
        if self._listener is not None:
            raise RuntimeError("a handoff is already offered")
        if self.spec is None:
            raise RuntimeError("this group cannot hand over")
        reason = self.spec.face_class.capture_refusal
        if reason is not None:
            raise ValueError(f"connections served through {self.spec.face_class.__name__} "
                             f"cannot be handed over: {reason}")
        loop = asyncio.get_running_loop()
        self.spec.handoff = path  # workers forked from now on offer at once
        self._listener = HandoffListener(path)
        self._handed_off = loop.create_future()
        loop.add_reader(self._listener.fileno(), self._on_connect)
        for slot in self.supervisor.slots:
            self.supervisor.send(slot.index, {"handoff": path})
        return self._handed_off

    def _on_connect(self) -> None:
        listener = self._listener
        if listener is None or self._handing:
            return
        accepted = listener.accept()
        if accepted is None:
            return
        channel, kind, payload = accepted
        workers = len(self.group)
        if kind == "move":
            reply(channel, {"error": "moving connections to another host is not available "
                                     "with workers"})
            return
        if kind == "takeover":
            refuse(channel, f"the server at {listener.path} runs {workers} worker(s): start "
                   f"the successor with --workers {workers}")
            return
        assert isinstance(payload, dict)
        wanted = payload.get("workers")
        if wanted != workers:
            refuse(channel, f"the server at {listener.path} runs {workers} worker(s), the "
                   f"successor {wanted}: start it with --workers {workers}")
            return
        self._handing = True
        self.supervisor.restart = False  # each worker ends after its own handoff
        try:
            offer_group(channel, workers, self.group.sockets)
        except HandoffError as exc:
            self._finish_handoff(exc)
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(listener.fileno())
        loop.create_task(self._wait_handed_off())

    async def _wait_handed_off(self) -> None:
        try:
            await self.supervisor.wait_for(
                lambda: all(s.pid == 0 for s in self.supervisor.slots), TAKEOVER_READY_TIMEOUT)
        except TimeoutError as exc:
            self._finish_handoff(HandoffError(f"the workers did not hand over: {exc}"))
            return
        missing = [s.index for s in self.supervisor.slots if "handed_off" not in s.handoff]
        if missing:
            errors = [str(s.handoff.get("handoff_error", "")) for s in self.supervisor.slots]
            self._finish_handoff(HandoffError(
                f"worker(s) {missing} ended without handing over {' '.join(errors)}".strip()))
            return
        total = sum(int(s.handoff["handed_off"]) for s in self.supervisor.slots)
        self._finish_handoff(total)

    def _finish_handoff(self, result: int | BaseException) -> None:
        if self._listener is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            except (ValueError, OSError):
                pass
            # after a handoff the successor owns the path: never unlink it from here
            self._listener.close(unlink=isinstance(result, BaseException))
            self._listener = None
        future = self._handed_off
        if future is not None and not future.done():
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    @property
    def address(self) -> tuple[Any, ...]:
        return self._address

    @property
    def pids(self) -> list[int]:
        """The running workers' process IDs, by worker ID (0 while one restarts)."""
        return self.supervisor.pids

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until every worker serves (after start, or after a restart)."""
        await self.supervisor.wait_ready(timeout)

    def kill_worker(self, index: int, signum: int = signal.SIGKILL) -> None:
        self.supervisor.signal(index, signum)

    def workers(self) -> list[dict[str, Any]]:
        """One dict per worker ID: ``pid``, ``connections`` (accepted),
        ``datagrams_received``, ``misrouted_datagrams``, ``connected_sockets`` (peak),
        and more (``handed_over_datagrams``, ``restarts``, ``endpoint``, ``datapath``...);
        counts include the worker's earlier incarnations."""
        out = []
        for slot in self.supervisor.slots:
            entry = slot.counters()
            entry["live_connections"] = slot.stats.get("live_connections", 0)
            entry.update(
                pid=slot.pid or slot.last_pid,
                worker_id=slot.index,
                restarts=slot.restarts,
                exit_codes=list(slot.exit_codes),
            )
            out.append(entry)
        return out

    def stats(self) -> dict[str, Any]:
        """``workers`` (see :meth:`workers`) and the totals over them (``endpoint``,
        ``datapath``, ``app`` and the per-worker counts added up)."""
        workers = self.workers()
        total: dict[str, Any] = {}
        for w in workers:
            total = merge_counters(total, w)
        datapath = dict(total.get("datapath", {}))
        if datapath:
            datapath.update(datapath_ratios(datapath))
        endpoint = dict(total.get("endpoint", {}))
        if endpoint:  # a ratio of the totals, not a sum of the workers' ratios
            calls = endpoint.get("engine_seal_calls", 0)
            sealed = endpoint.get("engine_packets_sealed", 0)
            endpoint["packets_per_engine_call"] = sealed / calls if calls else 0.0
        return {
            "workers": workers,
            "connections": total.get("connections", 0),
            "misrouted_datagrams": total.get("misrouted_datagrams", 0),
            "handed_over_datagrams": total.get("handed_over_datagrams", 0),
            "endpoint": endpoint,
            "datapath": datapath,
            "app": total.get("app", {}),
        }

    def close(self) -> None:
        """Start a graceful stop of every worker (``await wait_closed()`` for the end)."""
        if self._listener is not None and not self._handing:
            try:
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
            except (ValueError, OSError):
                pass
            self._listener.close()
            self._listener = None
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._stop())

    async def _stop(self) -> None:
        try:
            await self.supervisor.stop()
        finally:
            self.inboxes.close()
            self.group.close()

    async def wait_closed(self) -> None:
        self.close()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def __aenter__(self) -> WorkerGroupServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.wait_closed()


async def serve_workers(
    handler: StreamHandler | None,
    host: str,
    port: int,
    *,
    configuration: Configuration,
    workers: int,
    backend: str = "auto",
    connection_handler: Any = None,
    steering: bool = True,
    plan: CidPlan | None = None,
    app_stats: Callable[[], dict[str, Any]] | None = None,
    ready_timeout: float = 10.0,
    connection_sockets: int = 0,
    socket_policy: SocketPolicy | None = None,
    face_class: type[QuicConnection] = QuicConnection,
    capture: CaptureHook | None = None,
    restore: RestoreHook | None = None,
    takeover: str | None = None,
    on_handover: Callable[[Handover], None] | None = None,
) -> WorkerGroupServer:
    """Bind, steer, fork ``workers`` workers and wait until they serve.
    ``connection_sockets``: each worker's cap of per-connection sockets (0: off), given
    by ``socket_policy`` (see ``datapath/connected.py``). ``takeover=path``: take over
    the group offering a handoff at ``path`` (as many workers; ``host``/``port`` unused;
    see ``migration.group``); ``capture``/``restore``: the application's hooks;
    ``on_handover(handover)`` runs in each worker with its :class:`Handover`."""
    if not 1 <= workers <= 256:
        raise ValueError(f"workers must be 1..256, got {workers}")
    if connection_sockets < 0:
        raise ValueError("connection_sockets must be >= 0")
    plan = plan or CidPlan()
    if plan.quic_lb.key is not None and steering:
        raise ValueError("steering reads plaintext QUIC-LB CIDs: use no key, or steering=False")
    config = plan.configuration(configuration)
    # one set of keys for every worker (not one per worker's endpoint): a session ticket,
    # a NEW_TOKEN token or a reset token from one worker is good at all the others. A
    # group taking over leaves them unset: each worker adopts its predecessor's, the old
    # group's shared ones (migration/server_keys.py)
    if takeover is None:
        config = replace(config, ticket_key=config.ticket_key or os.urandom(32),
                         token_key=config.token_key or os.urandom(32),
                         reset_key=config.reset_key or os.urandom(32))
    if config.early_data and config.strike_register is None:
        # one anti-replay record for the whole group: a first flight replayed to another
        # worker gets no 0-RTT there either (tls/shared_strikes.py)
        shared = shared_strike_register(config.ticket_age_window)
        if shared is not None:
            config = replace(config, strike_register=shared)
    if takeover is not None:
        loop = asyncio.get_running_loop()
        members = await loop.run_in_executor(None, take_over_group, takeover, workers)
        group = ReuseportGroup(members)
        ready_timeout = max(ready_timeout, TAKEOVER_READY_TIMEOUT)
    else:
        ensure_port_free(host, port)  # not silently sharing another server's port
        group = ReuseportGroup.bind(host, port, workers)
    inboxes: HandoffInboxes | None = None
    try:
        if steering:
            group.steer(
                plan.layout(0).worker_cid_offset, config_id=plan.quic_lb.config_id,
                cid_length=plan.quic_lb.cid_len,
            )
        inboxes = HandoffInboxes(workers)
        spec = _WorkerSpec(
            handler, connection_handler, config, backend, plan, group, inboxes, app_stats,
            connection_sockets, socket_policy, face_class, capture, restore, takeover,
            on_handover=on_handover,
        )
        supervisor = WorkerSupervisor(workers, lambda ctx: _run_worker(spec, ctx))
        server = WorkerGroupServer(group, inboxes, supervisor, plan, steering, spec)
        supervisor.start()
    except BaseException:
        if inboxes is not None:
            inboxes.close()
        group.close()
        raise
    try:
        if takeover is not None:
            await supervisor.wait_for(lambda: all(
                (s.pid and s.ready) or "handoff_error" in s.handoff for s in supervisor.slots
            ), ready_timeout)
            errors = [str(s.handoff["handoff_error"]) for s in supervisor.slots
                      if "handoff_error" in s.handoff]
            if errors:
                raise HandoffError("; ".join(errors))
        await server.wait_ready(ready_timeout)
    except BaseException:
        await server.wait_closed()
        raise
    return server
