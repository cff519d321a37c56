"""The connection registry: identity, refused collisions, O(1) teardown (issue 11 item 1,
issue 10 item 8), shown with the registry's dict-operation counter, not with timings."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.endpoint.endpoint import Endpoint
from quicflow.endpoint.registry import ConnectionRegistry
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from tests.support.memory_pair import _CERT, SERVER_ADDR, MemoryPair


class Entity:
    """Stands for a connection: compared by identity, like ``Connection``."""


def test_collisions_are_refused_and_counted() -> None:
    reg: ConnectionRegistry[Entity] = ConnectionRegistry()
    a, b = Entity(), Entity()
    assert reg.add_cid(b"x" * 8, a) and reg.add_cid(b"x" * 8, a)  # again: no-op
    assert not reg.add_cid(b"x" * 8, b)
    assert reg.by_cid(b"x" * 8) is a and reg.counters.collisions_refused == 1
    # the two maps are separate: a client may pick one of our CIDs as its initial DCID
    assert reg.add_initial(b"x" * 8, b)
    assert reg.by_initial(b"x" * 8) is b and reg.by_cid(b"x" * 8) is a
    assert not reg.add_initial(b"x" * 8, a)


def test_forget_removes_exactly_the_connections_own_entries() -> None:
    reg: ConnectionRegistry[Entity] = ConnectionRegistry()
    a, b = Entity(), Entity()
    reg.add_initial(b"init-a..", a)
    reg.add_cid(b"cid-a-1.", a)
    reg.add_cid(b"shared..", a)
    reg.remove_cid(b"shared..", a)  # a retired it ...
    reg.add_cid(b"shared..", b)  # ... and b now holds the same bytes
    reg.remove_cid(b"cid-a-1.", b)  # not b's: nothing happens
    reg.forget(a)
    assert a not in reg and b in reg and len(reg) == 1
    assert reg.ours == {b"shared..": b} and reg.initial == {}
    reg.forget(a)  # twice: harmless
    assert reg.counters.forgotten == 1


_ops = st.lists(
    st.tuples(
        st.sampled_from(("add_cid", "add_initial", "remove_cid", "forget")),
        st.integers(0, 3),  # which entity
        st.sampled_from((b"", b"k1", b"k2", b"k3", b"k4")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_registry_matches_a_model(ops: list[tuple[str, int, bytes]]) -> None:
    reg: ConnectionRegistry[Entity] = ConnectionRegistry()
    ents = [Entity() for _ in range(4)]
    ours: dict[bytes, int] = {}
    initial: dict[bytes, int] = {}
    alive: set[int] = set()
    for op, who, key in ops:
        conn = ents[who]
        if op in ("add_cid", "add_initial"):
            model = ours if op == "add_cid" else initial
            claimed = model.setdefault(key, who) == who
            assert getattr(reg, op)(key, conn) == claimed
            if claimed:  # a refused key does not register the connection
                alive.add(who)
        elif op == "remove_cid":
            reg.remove_cid(key, conn)
            if ours.get(key) == who:
                del ours[key]
        else:
            reg.forget(conn)
            ours = {k: v for k, v in ours.items() if v != who}
            initial = {k: v for k, v in initial.items() if v != who}
            alive.discard(who)
        assert {k: ents.index(v) for k, v in reg.ours.items()} == ours
        assert {k: ents.index(v) for k, v in reg.initial.items()} == initial
        assert {ents.index(c) for c in reg} == alive
        for i in alive:  # each connection's own key set is exactly what it holds
            held = {(1, k) for k, v in ours.items() if v == i}
            held |= {(0, k) for k, v in initial.items() if v == i}
            assert reg.keys_of(ents[i]) == held


def test_connections_have_no_value_equality() -> None:
    assert Connection.__eq__ is object.__eq__ and Connection.__hash__ is object.__hash__
    assert Endpoint.__eq__ is object.__eq__


def _server() -> Endpoint:
    cert, key = _CERT
    cfg = Configuration(
        alpn_protocols=["perf"], certificate_chain=[cert], private_key=key, idle_timeout=5.0,
        retry="never", max_half_open=10_000,  # every spoofed Initial opens a connection
    )
    return Endpoint(cfg, is_server=True)


def _half_open(server: Endpoint, count: int, now: float) -> None:
    """``count`` spoofed Initials from as many addresses: half-open server connections."""
    client_ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False), False)
    for i in range(count):
        conn = client_ep.connect(SERVER_ADDR, now, server_name="localhost")
        initial = client_ep.datagrams_to_send(conn, now)[0]
        client_ep.forget(conn)
        sconn = server.receive(initial, (f"127.0.{1 + i // 250}.{1 + i % 250}", 40000), now)
        assert sconn is not None
        server.datagrams_to_send(sconn, now)


def _teardown_ops(server: Endpoint, conn: Connection) -> int:
    before = server.registry.counters.ops
    server.forget(conn)
    return server.registry.counters.ops - before


def test_teardown_costs_the_same_whatever_the_connections_held() -> None:
    few, many = _server(), _server()
    _half_open(few, 2, 0.0)
    _half_open(many, 600, 0.0)
    assert len(few.registry) == 2 and len(many.registry) == 600
    per_few = [_teardown_ops(few, c) for c in list(few.all_connections)]
    per_many = [_teardown_ops(many, c) for c in list(many.all_connections)]
    # every half-open connection owns the same keys (its initial DCID and one CID)
    assert set(per_few) == set(per_many) == {per_few[0]} and per_few[0] <= 8
    assert len(many.registry) == 0 and not many.connections and not many.registry.initial


def test_mass_expiry_while_a_transfer_flows() -> None:
    """Issue 10 item 8: 2,000 connections that expire together are forgotten with a
    constant number of table operations each (it was O(N^2) deep comparisons: 18.9 s),
    and the legitimate connection on the same server keeps transferring intact."""
    pair = MemoryPair(server_config=_server().configuration)
    server = pair.server
    pair.run(lambda: pair.client.handshake_complete)
    legit = pair.server_conns[0]
    data = hashlib.shake_256(b"legit").digest(400_000)
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, data[:200_000])

    _half_open(server, 2000, pair.now)
    assert len(server.registry) == 2001
    expire_at = pair.now + 5.0 + 0.001

    got = bytearray()

    def step_legit() -> None:
        # the legitimate pair only (MemoryPair.step would visit every server connection)
        for d in pair.client_ep.datagrams_to_send(pair.client, pair.now):
            server.receive(d, pair.client_addr, pair.now)
        for d in server.datagrams_to_send(legit, pair.now):
            pair.client_ep.receive(d, SERVER_ADDR, pair.now)
        got.extend(legit.read_stream(sid))
        pair.now += 0.001

    while pair.now < expire_at - 0.5:
        step_legit()
    assert len(got) == 200_000

    # every half-open connection times out at once; the runner forgets each as it sends
    pair.now = expire_at
    ops_before = server.registry.counters.ops
    expired = [c for c in server.all_connections if c is not legit]
    for conn in expired:
        conn.handle_timer(pair.now)
        server.datagrams_to_send(conn, pair.now)
    ops = server.registry.counters.ops - ops_before
    assert all(c.terminated for c in expired)
    assert list(server.all_connections) == [legit]
    assert ops <= 8 * len(expired)  # O(1) each, not O(connections held)

    pair.client.send_stream_data(sid, data[200_000:], end_stream=True)
    for _ in range(3000):
        step_legit()
        if legit.stream_at_eof(sid):
            break
    assert hashlib.sha256(bytes(got)).digest() == hashlib.sha256(data).digest()
    assert legit.counters.dropped_undecryptable == 0


def test_an_expired_connection_costs_what_forget_alone_costs() -> None:
    """A connection that ends (here: idle timeout) drops its CIDs in the one forget:
    no removal of each CID first, then the forget's own pass over the same keys."""
    server = _server()
    _half_open(server, 2, 0.0)
    first, second = list(server.all_connections)
    direct = _teardown_ops(server, first)
    second.handle_timer(5.0 + 0.001)
    assert second.terminated and second.cid_changes  # its CIDs, listed as removed
    before = server.registry.counters.ops
    assert server.datagrams_to_send(second, 5.001) == []
    assert server.registry.counters.ops - before == direct
    assert len(server.registry) == 0 and not server.registry.ours
    assert not server.registry.initial and not second.cid_changes
