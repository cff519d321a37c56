"""The endpoint owns connection IDs (issue 6 items 1-2), in memory.

- every CID a server issues is a QUIC-LB CID carrying its server ID;
- short-header packets whose DCID is not ours are dropped before any lookup;
- two clients with the same source CID, or with zero-length CIDs, do not break each
  other (the sealer is keyed by a local key, not by the peer's CID): the defect was
  "after B's handshake A's packets are undecryptable" and "KeyError in
  datagrams_to_send(A) once B is gone".
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from quicflow.endpoint.cids import CidGenerator, RandomCidGenerator
from quicflow.endpoint.endpoint import Endpoint
from quicflow.endpoint.quiclb import QuicLbConfig, ServerIdLayout
from quicflow.tls.certs import generate_self_signed
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from tests.support.cid_helpers import FixedFirstCid

SERVER_ADDR = ("127.0.0.1", 4433)
_CERT = generate_self_signed(["localhost"])


def server_config(**kw: object) -> Configuration:
    cert, key = _CERT
    return Configuration(
        alpn_protocols=["perf"], certificate_chain=[cert], private_key=key, **kw  # type: ignore[arg-type]
    )


@dataclass
class Client:
    endpoint: Endpoint
    conn: Connection
    addr: tuple[str, int]
    gone: bool = False


@dataclass
class Network:
    server: Endpoint = field(default_factory=lambda: Endpoint(server_config(), is_server=True))
    clients: list[Client] = field(default_factory=list)
    now: float = 10.0

    def add_client(self, endpoint: Endpoint) -> Client:
        conn = endpoint.connect(SERVER_ADDR, self.now, server_name="localhost")
        client = Client(endpoint, conn, ("127.0.0.1", 40000 + len(self.clients)))
        self.clients.append(client)
        return client

    def pump(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            moved = 0
            for c in self.clients:
                if c.gone:
                    continue
                for d in c.endpoint.datagrams_to_send(c.conn, self.now):
                    self.server.receive(bytes(d), c.addr, self.now)
                    moved += 1
            for sconn in list(self.server.all_connections):
                for d in self.server.datagrams_to_send(sconn, self.now):
                    for c in self.clients:
                        if not c.gone and c.addr == tuple(sconn.peer_address):
                            c.endpoint.receive(bytes(d), SERVER_ADDR, self.now)
                    moved += 1
            self.now += 0.002
            live = [c.conn for c in self.clients if not c.gone]
            for conn in live + list(self.server.all_connections):
                deadline = conn.timer()
                if deadline is not None and deadline <= self.now:
                    conn.handle_timer(self.now)
            if not moved:
                return

    def server_conn(self, client: Client) -> Connection:
        for sconn in self.server.all_connections:
            if tuple(sconn.peer_address) == client.addr:
                return sconn
        raise AssertionError("no server connection for this client")


def upload(net: Network, client: Client, size: int, seed: int) -> None:
    """``size`` bytes on a new stream; the server must read them intact (SHA-256)."""
    data = hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)
    sid = client.conn.open_stream()
    client.conn.send_stream_data(sid, data, end_stream=True)
    sconn = net.server_conn(client)
    got = bytearray()
    for _ in range(300):
        net.pump(rounds=5)
        got += sconn.read_stream(sid)
        if sconn.stream_at_eof(sid):
            break
    assert hashlib.sha256(bytes(got)).digest() == hashlib.sha256(data).digest(), len(got)


def client_endpoint(**kw: object) -> Endpoint:
    cfg = Configuration(alpn_protocols=["perf"], verify_peer=False, **kw)  # type: ignore[arg-type]
    return Endpoint(cfg, is_server=False)


def copying_client(scid: bytes) -> Endpoint:
    cfg = client_endpoint().configuration
    return Endpoint(cfg, is_server=False, cid_generator=FixedFirstCid(scid))


def test_server_cids_are_quic_lb_with_the_server_id() -> None:
    layout = ServerIdLayout(host_id=0x12, worker_id=3)
    gen = CidGenerator.from_layout(layout)
    net = Network(server=Endpoint(server_config(), is_server=True, cid_generator=gen))
    client = net.add_client(client_endpoint())
    net.pump()
    assert client.conn.handshake_complete
    upload(net, client, 10_000, 1)
    sconn = net.server_conn(client)
    issued = [c.cid for c in sconn.host_cids]
    assert len(issued) >= 2  # NEW_CONNECTION_ID went out too
    for cid in issued + [p.cid for p in client.conn.peer_cids]:
        assert len(cid) == 8 and cid[0] == 0x07  # config 0, 7 bytes follow
        assert gen.server_id_of(cid) == b"\x12\x03"
        assert cid[layout.worker_cid_offset] == 3


def test_default_server_generator_follows_configured_length() -> None:
    ep = Endpoint(server_config(connection_id_length=12), is_server=True)
    assert ep.cid_length == 12 and ep.generator.is_ours(ep.issue_cid()[0])
    with pytest.raises(ValueError, match="at least 7 bytes"):
        Endpoint(server_config(connection_id_length=6), is_server=True)
    # an explicit generator wins over the configured length
    gen = CidGenerator(QuicLbConfig(server_id_len=3, nonce_len=10), b"abc")
    ep = Endpoint(server_config(), is_server=True, cid_generator=gen)
    assert ep.cid_length == 14 and ep.configuration.connection_id_length == 14


def test_short_header_not_ours_is_dropped_before_lookup() -> None:
    net = Network()
    client = net.add_client(client_endpoint())
    net.pump()
    assert client.conn.handshake_complete
    ops = net.server.registry.counters.ops
    lookups_before = net.server.counters.dropped_unknown_cid
    other = CidGenerator.from_layout(ServerIdLayout(host_id=9)).generate()
    held = client.conn.peer_cid  # a live CID of ours, under another config id
    for dcid in (other, bytes([0xC0 | os.urandom(1)[0] & 0x1F]) + os.urandom(7),
                 bytes([held[0] ^ 0x20]) + held[1:]):
        net.server.receive(bytes([0x41]) + dcid + os.urandom(40), client.addr, net.now)
    assert net.server.counters.dropped_not_ours == 3
    assert net.server.registry.counters.ops == ops  # no table was consulted
    assert net.server.counters.dropped_unknown_cid == lookups_before
    # one of our CIDs that is not (or no longer) held is looked up, and counted as such
    net.server.receive(bytes([0x41]) + net.server.issue_cid()[0] + bytes(40), client.addr, net.now)
    assert net.server.counters.dropped_unknown_cid == lookups_before + 1


def test_two_clients_with_the_same_source_cid_do_not_break_each_other() -> None:
    net = Network()
    same = b"\x42" * 8
    a = net.add_client(copying_client(same))
    net.pump()
    assert a.conn.handshake_complete and a.conn.initial_scid == same
    upload(net, a, 30_000, 1)
    b = net.add_client(copying_client(same))
    net.pump()
    assert b.conn.handshake_complete and b.conn.initial_scid == same
    sa, sb = net.server_conn(a), net.server_conn(b)
    assert sa.peer_cid == sb.peer_cid == same and sa.seal_key != sb.seal_key
    # A after B's handshake: nothing undecryptable on either side, bytes intact
    upload(net, a, 30_000, 2)
    upload(net, b, 30_000, 3)
    assert sa.counters.dropped_undecryptable == 0 and a.conn.counters.dropped_undecryptable == 0
    # B goes away (closes, then is forgotten): A's sending path still has its keys
    b.conn.close(0, "bye", now=net.now)
    net.pump()
    b.gone = True
    for _ in range(50):
        net.now += 0.1
        net.pump(rounds=2)
        if sb not in net.server.all_connections:
            break
    assert sb.terminated and sb not in net.server.all_connections
    upload(net, a, 30_000, 4)  # would raise KeyError in datagrams_to_send before the fix
    assert a.conn.counters.dropped_undecryptable == 0


def test_clients_with_zero_length_cids_share_a_server() -> None:
    net = Network()
    clients = [net.add_client(client_endpoint(connection_id_length=0)) for _ in range(3)]
    net.pump()
    for c in clients:
        assert c.conn.handshake_complete and c.conn.initial_scid == b""
        assert len(c.conn.host_cids) == 1  # no NEW_CONNECTION_ID for zero-length CIDs
    for i, c in enumerate(clients):
        upload(net, c, 20_000, 10 + i)
    for i, c in enumerate(clients):  # again, after every handshake
        upload(net, c, 20_000, 20 + i)
    for c in clients:
        assert net.server_conn(c).counters.dropped_undecryptable == 0
        assert c.conn.counters.dropped_undecryptable == 0


def test_zero_length_cids_need_an_endpoint_each() -> None:
    ep = client_endpoint(connection_id_length=0)
    ep.connect(SERVER_ADDR, 0.0, server_name="localhost")
    with pytest.raises(ValueError, match="zero-length"):
        ep.connect(SERVER_ADDR, 0.0, server_name="localhost")


def test_initial_dcid_of_another_address_is_refused() -> None:
    server = Endpoint(server_config(), is_server=True)
    cep = client_endpoint()
    conn = cep.connect(SERVER_ADDR, 0.0, server_name="localhost")
    initial = cep.datagrams_to_send(conn, 0.0)[0]
    server.receive(initial, ("127.0.0.1", 1000), 0.0)
    held = next(iter(server.all_connections))
    server.receive(initial, ("127.0.0.2", 1000), 0.0)  # same DCID, another client
    assert server.counters.dropped_initial_collision == 1
    assert list(server.all_connections) == [held]
    assert held.counters.datagrams_received == 1


def test_engine_sealers_are_keyed_locally() -> None:
    net = Network()
    client = net.add_client(client_endpoint())
    net.pump()
    sconn = net.server_conn(client)
    engine: Any = net.server.engine  # key_state is on the table engines, not the Protocol
    engine.key_state(sconn.seal_key, opener=False)  # present under the local key
    with pytest.raises(KeyError):
        engine.key_state(sconn.peer_cid, opener=False)
    for entry in sconn.host_cids:  # openers under our own CIDs
        engine.key_state(entry.cid, opener=True)


def test_random_client_generator_is_default() -> None:
    ep = client_endpoint(connection_id_length=5)
    assert isinstance(ep.generator, RandomCidGenerator) and ep.cid_length == 5
