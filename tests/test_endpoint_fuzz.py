"""Hostile datagrams against the sans-I/O endpoint (hypothesis).

Whatever arrives, ``Endpoint.receive`` never raises; a datagram that cannot be used is
counted (endpoint ``dropped_*`` counters, or the connection's drop counters) or answered
statelessly (Version Negotiation), and a connection hit by garbage either ignores it
(counted) or closes with an error code, while the endpoint's other connections go on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.connection import Connection
from tests.support.quic_helpers import client_config, server_config

SERVER_ADDR = ("127.0.0.1", 4433)
FUZZ = settings(
    max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def conn_drops(conn: Connection) -> int:
    c = conn.counters
    return (
        c.packets_dropped
        + getattr(c, "engine_open_failures", 0)
        + getattr(c, "duplicate_packets", 0)
    )


def endpoint_score(ep: Endpoint) -> tuple[int, int]:
    """(datagrams dropped by the endpoint, stateless replies made)."""
    return ep.counters.dropped(), ep.counters.version_negotiations_sent


def feed(ep: Endpoint, data: bytes, addr: tuple[str, int], now: float) -> None:
    """Give ``data`` to ``ep`` and check it was accounted for."""
    before_ep = endpoint_score(ep)
    before_conns = {id(c): (conn_drops(c), c.is_closed) for c in ep.all_connections}
    conn = ep.receive(data, addr, now)  # must not raise
    after_ep = endpoint_score(ep)
    if after_ep != before_ep:
        return  # dropped by the endpoint, or answered statelessly
    assert conn is not None, "datagram neither dropped nor given to a connection"
    before_drops, _ = before_conns.get(id(conn), (0, False))
    closed_with_error = conn.close_error is not None and (
        conn.close_error[0] != 0 or conn.close_error[1] is not None
    )
    assert conn_drops(conn) > before_drops or closed_with_error, (
        f"datagram {data[:32].hex()}... accepted by a connection without being counted: "
        f"{conn.counters}"
    )


# ---------------------------------------------------------------------------- arbitrary bytes


@FUZZ
@given(st.binary(min_size=0, max_size=1500))
def test_arbitrary_bytes_never_raise_and_are_counted(data: bytes) -> None:
    ep = Endpoint(server_config(), is_server=True)
    feed(ep, data, ("127.0.0.1", 50000), 100.0)


@FUZZ
@given(
    st.integers(0, 255),
    st.sampled_from([0x00000001, 0x00000000, 0x1A2A3A4A, 0xFF00001D]),
    st.binary(min_size=0, max_size=21),
    st.binary(min_size=0, max_size=21),
    st.binary(min_size=0, max_size=1400),
    st.booleans(),
)
def test_long_header_shaped_garbage(
    first: int, version: int, dcid: bytes, scid: bytes, rest: bytes, pad: bool
) -> None:
    """Datagrams that look like long headers get past the first checks: the endpoint
    must still count or answer every one (and never raise)."""
    data = (
        bytes([first | 0x80]) + version.to_bytes(4, "big")
        + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + rest
    )
    if pad and len(data) < 1200:
        data += os.urandom(1200 - len(data))
    ep = Endpoint(server_config(), is_server=True)
    feed(ep, data, ("127.0.0.1", 50001), 100.0)


@FUZZ
@given(st.binary(min_size=1, max_size=3000), st.integers(0, 1600))
def test_arbitrary_gro_batches_never_raise(data: bytes, segment_size: int) -> None:
    ep = Endpoint(server_config(), is_server=True)
    before = ep.counters.segments_received
    ep.receive_batch(data, segment_size, ("127.0.0.1", 50002), 100.0)
    assert ep.counters.segments_received > before


# ---------------------------------------------------------------------------- mutated Initials


def client_initial() -> bytes:
    ep = Endpoint(client_config(), is_server=False)
    conn = ep.connect(SERVER_ADDR, 100.0, server_name="localhost")
    datagrams = ep.datagrams_to_send(conn, 100.0)
    assert datagrams and len(datagrams[0]) >= 1200
    return bytes(datagrams[0])


INITIAL = client_initial()


def test_unmodified_initial_is_accepted() -> None:
    """The control for the mutation test: the real Initial makes a connection that
    answers (so the mutations below really are what gets them dropped)."""
    ep = Endpoint(server_config(), is_server=True)
    conn = ep.receive(INITIAL, ("127.0.0.1", 50003), 100.0)
    assert conn is not None and ep.counters.connections_accepted == 1
    assert conn.counters.packets_received == 1
    assert ep.datagrams_to_send(conn, 100.0)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(INITIAL) - 1), st.integers(1, 255)),
        min_size=1, max_size=8,
    ),
    st.one_of(st.none(), st.integers(0, len(INITIAL))),
)
def test_mutated_initial_never_raises_and_is_counted(
    flips: list[tuple[int, int]], truncate: int | None
) -> None:
    data = bytearray(INITIAL)
    for pos, mask in flips:
        data[pos] ^= mask
    if truncate is not None:
        del data[truncate:]
    assume(bytes(data) != INITIAL)  # flips that cancel out
    ep = Endpoint(server_config(), is_server=True)
    feed(ep, bytes(data), ("127.0.0.1", 50004), 100.0)
    # a changed Initial never authenticates: no connection state may outlive it
    assert not ep.all_connections and not ep.connections
    assert ep.counters.connections_accepted == 0


# ---------------------------------------------------------------------------- established


@dataclass
class Client:
    endpoint: Endpoint
    conn: Connection
    addr: tuple[str, int]


@dataclass
class Network:
    """A server endpoint and its clients, exchanging datagrams in memory."""

    server: Endpoint = field(default_factory=lambda: Endpoint(server_config(), is_server=True))
    clients: list[Client] = field(default_factory=list)
    now: float = 100.0

    def add_client(self) -> Client:
        ep = Endpoint(client_config(), is_server=False)
        conn = ep.connect(SERVER_ADDR, self.now, server_name="localhost")
        client = Client(ep, conn, ("127.0.0.1", 40000 + len(self.clients)))
        self.clients.append(client)
        return client

    def pump(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            moved = 0
            for c in self.clients:
                for d in c.endpoint.datagrams_to_send(c.conn, self.now):
                    self.server.receive(bytes(d), c.addr, self.now)
                    moved += 1
            for sconn in list(self.server.all_connections):
                for d in self.server.datagrams_to_send(sconn, self.now):
                    for c in self.clients:
                        if tuple(c.addr) == tuple(sconn.peer_address):
                            c.endpoint.receive(bytes(d), SERVER_ADDR, self.now)
                    moved += 1
            self.now += 0.002
            for conn in [c.conn for c in self.clients] + list(self.server.all_connections):
                deadline = conn.timer()
                if deadline is not None and deadline <= self.now:
                    conn.handle_timer(self.now)
            if not moved:
                return

    def server_conn(self, client: Client) -> Connection:
        for sconn in self.server.all_connections:
            if tuple(sconn.peer_address) == tuple(client.addr):
                return sconn
        raise AssertionError("no server connection for this client")


def transfer(net: Network, client: Client, size: int, seed: int) -> None:
    """Send ``size`` bytes on a new stream; the server side must read them intact."""
    data = hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)
    sid = client.conn.open_stream()
    client.conn.send_stream_data(sid, data, end_stream=True)
    sconn = net.server_conn(client)
    got = bytearray()
    for _ in range(200):
        net.pump(rounds=5)
        got += sconn.read_stream(sid)
        if sconn.stream_at_eof(sid):
            break
    assert hashlib.sha256(bytes(got)).digest() == hashlib.sha256(data).digest(), len(got)


def test_garbage_to_established_connection_spares_the_others() -> None:
    net = Network()
    victim, bystander = net.add_client(), net.add_client()
    net.pump()
    assert victim.conn.handshake_complete and bystander.conn.handshake_complete
    transfer(net, bystander, 20_000, 1)
    victim_server = net.server_conn(victim)
    cid = victim.conn.peer_cid  # a CID the server issued to the victim
    assert net.server.connections.get(cid) is victim_server
    results = {"closed": 0, "ignored": 0}

    @FUZZ
    @given(st.integers(0, 255), st.binary(min_size=0, max_size=1400))
    def attack(first: int, rest: bytes) -> None:
        if first & 0x80:  # a long header naming the victim's CID
            data = bytes([first]) + (1).to_bytes(4, "big") + bytes([len(cid)]) + cid + rest
        else:  # a short header with the victim's CID
            data = bytes([first | 0x40]) + cid + rest
        feed(net.server, data, victim.addr, net.now)
        if victim_server.close_error is not None:
            results["closed"] += 1
        else:
            results["ignored"] += 1

    attack()
    # the connection hit by garbage is either intact or closed with a reason
    if victim_server.close_error is not None:
        assert victim_server.close_error[0] != 0 or victim_server.close_error[1] is not None
    else:
        transfer(net, victim, 20_000, 2)
    # the other connection of the endpoint keeps working
    transfer(net, bystander, 200_000, 3)
    assert results["closed"] + results["ignored"] > 0
