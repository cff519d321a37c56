"""Two sans-I/O endpoints wired together in memory, with optional loss and reordering.

Time is simulated: when nothing moves, the clock jumps to the earliest timer. This is
the protocol core alone (no sockets), deterministic for a given seed.

ECN: each link hands every delivered datagram to ``Endpoint.receive`` with the ECN bits
of ``Link.ecn`` — an int (0 = not ECT, the default; 2 = ECT(0); 3 = CE) or a callable
``ecn(index, datagram) -> int`` (``index`` counts the datagrams the link delivered), so
a test can model a path that keeps, bleaches or CE-marks the sender's marks.
More clients on the same client endpoint: :meth:`MemoryPair.add_client`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from quicflow.endpoint.endpoint import Endpoint
from quicflow.tls.certs import generate_self_signed
from quicflow.transport import stream_api
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection

# (documentation addresses, RFC 5737: a simulated path through a network, paced as
# one; a loopback address would leave the connections unpaced, path.set_pacing)
CLIENT_ADDR = ("192.0.2.1", 50000)
SERVER_ADDR = ("192.0.2.2", 4433)

_CERT = generate_self_signed(["localhost"])


@dataclass
class Link:
    """One direction: drops with ``loss`` (and the next ``drop_next`` datagrams) and holds
    back a datagram with ``reorder``."""

    rng: random.Random
    loss: float = 0.0
    reorder: float = 0.0
    held: list[bytes] = field(default_factory=list)
    dropped: int = 0
    delivered: int = 0
    ecn: int | Callable[[int, bytes], int] = 0
    marked: int = 0  # datagrams marked so far (the index passed to a callable ``ecn``)
    drop_next: int = 0  # drop this many of the next datagrams, whatever ``loss`` says
    mtu: int = 65527  # larger datagrams are dropped silently (a black hole)
    too_big: int = 0  # datagrams dropped for ``mtu``

    def mark(self, datagram: bytes) -> int:
        """The ECN bits the receiver sees on ``datagram`` (called once per delivery)."""
        index = self.marked
        self.marked += 1
        ecn = self.ecn
        return ecn(index, datagram) if callable(ecn) else ecn

    def carry(self, datagrams: list[bytes]) -> list[bytes]:
        out: list[bytes] = []
        for d in datagrams:
            if len(d) > self.mtu:
                self.too_big += 1
                continue
            if self.drop_next > 0:
                self.drop_next -= 1
                self.dropped += 1
                continue
            if self.loss and self.rng.random() < self.loss:
                self.dropped += 1
                continue
            if self.reorder and self.rng.random() < self.reorder:
                self.held.append(d)
                continue
            out.append(d)
            if self.held:
                out.extend(self.held)
                self.held.clear()
        self.delivered += len(out)
        return out

    def flush(self) -> list[bytes]:
        out, self.held = self.held, []
        return out


class MemoryPair:
    def __init__(
        self,
        *,
        seed: int = 1,
        loss: float = 0.0,
        reorder: float = 0.0,
        client_config: Configuration | None = None,
        server_config: Configuration | None = None,
        ecn: int | Callable[[int, bytes], int] = 0,
        ack_frequency: bool = True,
    ) -> None:
        cert, key = _CERT
        self.server = Endpoint(
            server_config
            or Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                             ack_frequency=ack_frequency),
            is_server=True,
        )
        self.client_ep = Endpoint(
            client_config or Configuration(alpn_protocols=["perf"], verify_peer=False,
                                           ack_frequency=ack_frequency),
            is_server=False,
        )
        rng = random.Random(seed)
        self.up = Link(rng, loss, reorder, ecn=ecn)
        self.down = Link(rng, loss, reorder, ecn=ecn)
        self.now = 0.0
        self.client_addr = CLIENT_ADDR  # where the server sees the client's datagrams from
        self.client = self.client_ep.connect(SERVER_ADDR, self.now, server_name="localhost")
        self.clients = [self.client]

    def add_client(self) -> Connection:
        """Another client connection on the same client endpoint (same address)."""
        conn = self.client_ep.connect(SERVER_ADDR, self.now, server_name="localhost")
        self.clients.append(conn)
        return conn

    @property
    def server_conns(self) -> list[Connection]:
        return list(self.server.all_connections)

    def step(self) -> bool:
        """Move datagrams once both ways; True if anything moved."""
        moved = False
        for client in self.clients:
            for d in self.up.carry(self.client_ep.datagrams_to_send(client, self.now)):
                self.server.receive(d, self.client_addr, self.now, self.up.mark(d))
                moved = True
        for d in self.down.carry([d for d, _ in self.server.pop_stateless()]):
            self.client_ep.receive(d, SERVER_ADDR, self.now, self.down.mark(d))  # Retry...
            moved = True
        for conn in self.server_conns:
            for d in self.down.carry(self.server.datagrams_to_send(conn, self.now)):
                self.client_ep.receive(d, SERVER_ADDR, self.now, self.down.mark(d))
                moved = True
        return moved

    def complete_server_handshake(self) -> None:
        """Carry the client's flights until the server has completed its handshake;
        the server's 1-RTT datagrams (HANDSHAKE_DONE & co) are left unbuilt, so the
        client has completed its handshake but not confirmed it."""
        client = self.client
        for _ in range(200):
            for d in self.client_ep.datagrams_to_send(client, self.now):
                self.server.receive(d, self.client_addr, self.now)
            if self.server_conns and self.server_conns[0].handshake_complete:
                break
            for conn in self.server_conns:
                for d in self.server.datagrams_to_send(conn, self.now):
                    self.client_ep.receive(d, SERVER_ADDR, self.now)
            self.now += 0.0002
        assert client.handshake_complete and not client.handshake_confirmed

    def run(self, until: Callable[[], bool], *, max_time: float = 60.0) -> None:
        """Step, advancing the clock to the next timer when idle, until ``until()``."""
        while not until():
            if self.step():
                self.now += 0.0002
                continue
            held = False
            for d in self.up.flush():
                self.server.receive(d, self.client_addr, self.now, self.up.mark(d))
                held = True
            for d in self.down.flush():
                self.client_ep.receive(d, SERVER_ADDR, self.now, self.down.mark(d))
                held = True
            if held:
                continue  # what the held datagrams caused is sent before time moves
            conns = [*self.clients, *self.server_conns]
            timers = [t for t in (c.timer() for c in conns) if t is not None]
            if not timers:
                raise AssertionError("no timer armed and nothing to send: stalled")
            self.now = max(self.now + 0.0002, min(timers))
            if self.now > max_time:
                raise AssertionError(f"not done after {max_time} simulated seconds")
            for c in conns:
                c.handle_timer(self.now)


def upload(pair: MemoryPair, data: bytes) -> bytes:
    """Once both sides have confirmed the handshake, the client sends ``data`` on a new
    stream with its FIN; runs until the server has read it all and the client has
    nothing in flight. Returns what the server read."""
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    (server,) = pair.server_conns
    sid = stream_api.open_stream(pair.client)
    stream_api.send_stream_data(pair.client, sid, data, True)
    got = bytearray()

    def done() -> bool:
        got.extend(stream_api.read_stream(server, sid, -1, pair.now))
        return len(got) == len(data) and not pair.client.loss.cc.bytes_in_flight

    pair.run(done)
    return bytes(got)


def confirmed(pair: MemoryPair) -> tuple[MemoryPair, Connection, Connection]:
    """``pair`` once both ends confirmed the handshake and nothing is left to move
    either way: (pair, client, server)."""
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    while pair.step():
        pair.now += 0.0002
    return pair, pair.client, pair.server_conns[0]
