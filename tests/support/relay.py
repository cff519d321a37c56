"""A lossy, reordering UDP relay for tests on loopback.

::

    client  ──►  relay.address  ─[c2s: loss, reorder]─►  (upstream socket) ──► server
    client  ◄──  relay.address  ◄─[s2c: loss, reorder]─  (upstream socket) ◄── server

The client sends to ``relay.address`` instead of the server's address.  The relay forwards
every client datagram to the server from an upstream socket of its own, and everything that
arrives on the upstream socket back to the last client address it has seen.  Each direction
has its own loss rate, its own reordering probability and its own ``random.Random`` seeded
from ``seed``, so a run is reproducible whatever the interleaving of the two directions.

Reordering: with probability ``reorder`` a datagram is held back and sent right after the
next datagram of the same direction (a swap of two neighbours).  A held datagram that no
other datagram follows within ``max_hold`` seconds is sent anyway (counted as ``delayed``),
so reordering never turns into loss.  Contents are never altered unless ``corrupt`` is set.

Use ``LossyUdpRelay`` from a running event loop (``await relay.start()`` /
``await relay.close()``, or ``async with``), or ``RelayThread`` — a context manager that runs
the relay on its own event loop in a background thread — when client and server run in
other threads or processes.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

Address = tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id)


@dataclass
class Direction:
    """Settings and counters of one direction of the relay."""

    name: str
    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0  # probability that a forwarded datagram is sent twice
    corrupt: float = 0.0  # probability that one random byte of a datagram is flipped
    rng: random.Random = field(default_factory=random.Random, repr=False)
    received: int = 0  # datagrams read from the socket
    forwarded: int = 0  # datagrams sent on (including reordered and delayed ones)
    dropped: int = 0  # datagrams lost on purpose
    reordered: int = 0  # datagrams sent after a datagram that arrived later
    delayed: int = 0  # held datagrams released by the max_hold timer instead
    duplicated: int = 0  # extra copies sent
    corrupted: int = 0  # datagrams forwarded with one byte altered
    undeliverable: int = 0  # server datagrams before any client was seen
    held: bytes | None = field(default=None, repr=False)
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    # deterministic drops: (kind, n) drops the n-th datagram (from 1) that holds a packet
    # of that kind ("initial", "handshake", "0rtt", "1rtt"; see ``packet_kinds``)
    drop_nth: list[tuple[str, int]] = field(default_factory=list)
    seen_kinds: dict[str, int] = field(default_factory=dict)
    dropped_on_purpose: list[tuple[str, int]] = field(default_factory=list)
    # deterministic drops by position: the next ``drop_next`` datagrams, whatever they hold
    # (set it from the relay's loop, e.g. right before the client sends its close)
    drop_next: int = 0
    # loss in bursts: with probability ``burst`` a datagram starts a burst that drops
    # everything of this direction for ``burst_ms`` (min, max) milliseconds; bounded in
    # time, not in datagrams (N datagrams would be N probe timeouts when only probes flow)
    burst: float = 0.0
    burst_ms: tuple[float, float] = (5.0, 60.0)
    burst_until: float = 0.0
    bursts: int = 0

    def drops(self, data: bytes) -> bool:
        """Count ``data``'s packet kinds; True if a ``drop_nth`` or ``drop_next`` rule
        takes it."""
        if self.drop_next > 0:
            self.drop_next -= 1
            self.dropped_on_purpose.append(("next", 1))
            return True
        if not self.drop_nth:
            return False
        take = False
        for kind in packet_kinds(data):
            n = self.seen_kinds[kind] = self.seen_kinds.get(kind, 0) + 1
            if (kind, n) in self.drop_nth:
                self.dropped_on_purpose.append((kind, n))
                take = True
        return take

    def counters(self) -> dict[str, int]:
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "reordered": self.reordered,
            "delayed": self.delayed,
            "duplicated": self.duplicated,
            "corrupted": self.corrupted,
            "undeliverable": self.undeliverable,
            "bursts": self.bursts,
        }


_LONG_KINDS = {0: "initial", 1: "0rtt", 2: "handshake", 3: "retry"}


def packet_kinds(data: bytes) -> list[str]:
    """The kinds of the QUIC v1 packets coalesced in ``data`` (each once, in order);
    a short header ends the datagram ("1rtt")."""
    from quicflow.wire.errors import WireError
    from quicflow.wire.packet import parse_header

    kinds: list[str] = []
    pos = 0
    while pos < len(data):
        if not data[pos] & 0x80:
            kind = "1rtt"
            end = len(data)
        else:
            kind = _LONG_KINDS[(data[pos] >> 4) & 3]
            try:
                end = parse_header(data, pos, 0).end
            except WireError:
                break
        if kind not in kinds:
            kinds.append(kind)
        if end <= pos:
            break
        pos = end
    return kinds


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyUdpRelay, client_side: bool) -> None:
        self._relay = relay
        self._client_side = client_side

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self._client_side:
            self._relay._from_client(data, addr)
        else:
            self._relay._from_server(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable while the peer restarts) are not fatal here.
        self._relay.errors.append(exc)


class LossyUdpRelay:
    """UDP relay between one client and one server with per-direction loss and reordering.

    ``loss``/``reorder`` set both directions; ``c2s_*``/``s2c_*`` override one direction.
    ``duplicate`` sends a datagram twice and ``corrupt`` flips one random bit of it, each
    with that probability, in both directions (defaults 0: the random stream is then the
    same as without them, so seeded tests keep their drops). ``burst`` is the probability
    that a datagram starts a burst of loss: everything of that direction is dropped for
    ``burst_ms`` (min, max) milliseconds (time-bounded, so where a burst falls depends on
    the timing: not reproducible datagram for datagram).
    Settings may be changed while running (``relay.c2s.loss = 0.5``).
    ``c2s_drop_nth=[("handshake", 1)]`` drops, deterministically, the client's first
    datagram that holds a Handshake packet (kinds: see :func:`packet_kinds`).
    """

    def __init__(
        self,
        server_addr: Address,
        *,
        loss: float = 0.0,
        reorder: float = 0.0,
        c2s_loss: float | None = None,
        s2c_loss: float | None = None,
        c2s_reorder: float | None = None,
        s2c_reorder: float | None = None,
        seed: int = 0,
        c2s_drop_nth: list[tuple[str, int]] | None = None,
        s2c_drop_nth: list[tuple[str, int]] | None = None,
        max_hold: float = 0.05,
        duplicate: float = 0.0,
        corrupt: float = 0.0,
        burst: float = 0.0,
        burst_ms: tuple[float, float] = (5.0, 60.0),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        for value in (loss, reorder, duplicate, corrupt, burst, c2s_loss, s2c_loss,
                      c2s_reorder, s2c_reorder):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"probabilities must be within [0, 1], got {value}")
        self.server_addr: Address = tuple(server_addr)
        self.seed = seed
        self.max_hold = max_hold
        self.c2s = Direction(
            "c2s",
            loss=loss if c2s_loss is None else c2s_loss,
            reorder=reorder if c2s_reorder is None else c2s_reorder,
            rng=random.Random(f"quicflow-relay-{seed}-c2s"),
        )
        self.s2c = Direction(
            "s2c",
            loss=loss if s2c_loss is None else s2c_loss,
            reorder=reorder if s2c_reorder is None else s2c_reorder,
            rng=random.Random(f"quicflow-relay-{seed}-s2c"),
        )
        for d in (self.c2s, self.s2c):
            d.duplicate, d.corrupt = duplicate, corrupt
            d.burst, d.burst_ms = burst, burst_ms
        self.c2s.drop_nth = list(c2s_drop_nth or [])
        self.s2c.drop_nth = list(s2c_drop_nth or [])
        self.client_addr: Address | None = None
        self.errors: list[Exception] = []
        self.rebinds = 0
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._front: asyncio.DatagramTransport | None = None
        self._back: asyncio.DatagramTransport | None = None

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> LossyUdpRelay:
        if self._front is not None:
            raise RuntimeError("relay already started")
        self._loop = asyncio.get_running_loop()
        front, _ = await self._loop.create_datagram_endpoint(
            lambda: _Side(self, True), local_addr=(self._host, self._port)
        )
        try:
            back, _ = await self._loop.create_datagram_endpoint(
                lambda: _Side(self, False), local_addr=(self._host, 0)
            )
        except BaseException:
            front.close()
            raise
        self._front, self._back = front, back
        return self

    async def rebind(self) -> Address:
        """Switch to a new upstream socket (a new source port, as a NAT rebinding does);
        the old one is closed. Returns the new upstream address."""
        if self._loop is None or self._back is None:
            raise RuntimeError("relay not started")
        back, _ = await self._loop.create_datagram_endpoint(
            lambda: _Side(self, False), local_addr=(self._host, 0)
        )
        old, self._back = self._back, back
        old.close()
        self.rebinds += 1
        return self.upstream_address

    async def close(self) -> None:
        """Stop relaying; a datagram still held back is sent first."""
        for d in (self.c2s, self.s2c):
            self._release(d, by_timer=True)
        for t in (self._front, self._back):
            if t is not None:
                t.close()
        self._front = self._back = None
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> LossyUdpRelay:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        """Where the client must send: the relay's client-facing address."""
        if self._front is None:
            raise RuntimeError("relay not started")
        addr: Address = self._front.get_extra_info("sockname")
        return addr

    @property
    def upstream_address(self) -> Address:
        """The address the server sees the client at."""
        if self._back is None:
            raise RuntimeError("relay not started")
        addr: Address = self._back.get_extra_info("sockname")
        return addr

    def stats(self) -> dict[str, dict[str, int]]:
        return {"c2s": self.c2s.counters(), "s2c": self.s2c.counters()}

    # -- forwarding ---------------------------------------------------------------------

    def _from_client(self, data: bytes, addr: Address) -> None:
        self.client_addr = addr
        self._relay(self.c2s, data)

    def _from_server(self, data: bytes, addr: Address) -> None:
        if self.client_addr is None:
            self.s2c.received += 1
            self.s2c.undeliverable += 1
            return
        self._relay(self.s2c, data)

    def _send(self, d: Direction, data: bytes) -> None:
        if d is self.c2s:
            if self._back is not None:
                self._back.sendto(data, self.server_addr)
                d.forwarded += 1
        elif self._front is not None and self.client_addr is not None:
            self._front.sendto(data, self.client_addr)
            d.forwarded += 1

    def _relay(self, d: Direction, data: bytes) -> None:
        d.received += 1
        if d.drops(data):
            d.dropped += 1
            return
        if d.burst > 0.0:
            now = time.monotonic()
            if now >= d.burst_until and d.rng.random() < d.burst:
                d.burst_until = now + d.rng.uniform(*d.burst_ms) / 1000
                d.bursts += 1
            if now < d.burst_until:
                d.dropped += 1
                return
        if d.loss > 0.0 and d.rng.random() < d.loss:
            d.dropped += 1
            return
        if d.corrupt > 0.0 and data and d.rng.random() < d.corrupt:
            altered = bytearray(data)
            altered[d.rng.randrange(len(altered))] ^= 1 << d.rng.randrange(8)
            data = bytes(altered)
            d.corrupted += 1
        if d.duplicate > 0.0 and d.rng.random() < d.duplicate:
            self._send(d, data)
            d.duplicated += 1
        if d.held is None and d.reorder > 0.0 and d.rng.random() < d.reorder:
            d.held = data
            if self._loop is not None and self.max_hold > 0:
                d.timer = self._loop.call_later(self.max_hold, self._release, d, True)
            return
        self._send(d, data)
        self._release(d, by_timer=False)

    def _release(self, d: Direction, by_timer: bool) -> None:
        if d.timer is not None:
            d.timer.cancel()
            d.timer = None
        if d.held is None:
            return
        if by_timer:
            d.delayed += 1
        else:
            d.reordered += 1
        self._send(d, d.held)
        d.held = None  # only now: other threads poll `held` and `forwarded`


class RelayThread:
    """Run a ``LossyUdpRelay`` on its own event loop in a background thread.

    ::

        with RelayThread(("127.0.0.1", server_port), loss=0.05, seed=1) as relay:
            client_connects_to(relay.address)
        print(relay.stats())

    Counters may be read from any thread; change settings with ``call(fn)``.
    """

    def __init__(self, server_addr: Address, **kwargs: Any) -> None:
        self.relay = LossyUdpRelay(server_addr, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="LossyUdpRelay", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.relay.start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self.relay.close())
            self._loop.close()

    def start(self) -> LossyUdpRelay:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("relay thread did not start")
        if self._error is not None:
            raise RuntimeError("relay thread failed to start") from self._error
        return self.relay

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the relay's loop (e.g. to change settings mid-run)."""
        self._loop.call_soon_threadsafe(fn, *args)

    def __enter__(self) -> LossyUdpRelay:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
