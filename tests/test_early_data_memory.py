"""0-RTT and resumption through the sans-I/O endpoints in memory (RFC 9001 §4.6): data
sent in 0-RTT arrives intact whether the server accepts or rejects it, the remembered
limits of RFC 9000 §7.4.1 are applied, and a replayed first flight gets no 0-RTT."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from quicflow.tls.tickets import SessionTicketCache
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.events import HandshakeCompleted, SessionTicketReceived
from quicflow.wire.packet import QUIC_V1, QUIC_V2, ZERO_RTT, parse_header
from tests.support.memory_pair import _CERT, MemoryPair

DATA = os.urandom(30_000)  # more than one datagram: several 0-RTT packets


def configs(versions: list[int] | None = None,
            **server_kw: object) -> tuple[Configuration, Configuration]:
    cert, key = _CERT
    vs = versions or [QUIC_V1, QUIC_V2]
    server = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                           versions=list(vs), **server_kw)  # type: ignore[arg-type]
    client = Configuration(alpn_protocols=["perf"], verify_peer=False, versions=list(vs),
                           session_ticket_cache=SessionTicketCache())
    return client, server


def take_events(pair: MemoryPair, conn: Connection) -> list[object]:
    events = conn.pop_events()
    for event in events:
        if isinstance(event, SessionTicketReceived):
            pair.client_ep.store_ticket(conn, event.ticket)
    return events


def first_connection(pair: MemoryPair) -> None:
    client = pair.client
    got: list[object] = []
    pair.run(lambda: (got.extend(take_events(pair, client)) or False)
             or any(isinstance(e, SessionTicketReceived) for e in got))
    assert client.handshake_complete and not client.session_resumed
    assert len(pair.client_ep.configuration.session_ticket_cache) == 1


def received(server: Connection, sid: int) -> bytes:
    out = bytearray()
    while True:
        chunk = server.read_stream(sid)
        if not chunk:
            return bytes(out)
        out += chunk


def run_until_received(pair: MemoryPair, server: Connection, sid: int) -> bytes:
    """Run the pair until ``server`` has read len(DATA) bytes on ``sid``; those bytes."""
    got = bytearray()

    def done() -> bool:
        got.extend(received(server, sid))
        return len(got) == len(DATA)
    pair.run(done)
    return bytes(got)


def resumed_with_data(pair: MemoryPair, early: bool = True
                      ) -> tuple[Connection, Connection, list[bytes]]:
    """A second connection writing DATA before its handshake (``early``; else after
    it); returns (client, server connection, the client's first datagrams)."""
    client = pair.add_client()
    sid = 0
    if early:
        sid = client.open_stream()  # the remembered limits allow it before the handshake
        client.send_stream_data(sid, DATA, end_stream=True)
    first = pair.client_ep.datagrams_to_send(client, pair.now)
    pair.clients = [pair.clients[0], client]
    old = set(pair.server_conns)
    for d in first:
        pair.server.receive(d, pair.client_addr, pair.now)
    pair.run(lambda: any(c not in old for c in pair.server_conns))  # (after a Retry)
    [server] = [c for c in pair.server_conns if c not in old]
    if not early:
        pair.run(lambda: client.handshake_complete)
        sid = client.open_stream()
        client.send_stream_data(sid, DATA, end_stream=True)
    got = bytearray()

    def done() -> bool:
        got.extend(received(server, sid))
        return len(got) == len(DATA) and client.handshake_complete
    pair.run(done)
    assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()
    return client, server, first


def zero_rtt_packets(datagrams: list[bytes]) -> int:
    count = 0
    for d in datagrams:
        pos = 0
        while pos < len(d) and d[pos] & 0x80:
            hdr = parse_header(d, pos, 8)
            count += hdr.packet_type == ZERO_RTT
            pos = hdr.end
    return count


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_zero_rtt_accepted_intact(version: int) -> None:
    client_cfg, server_cfg = configs([version])
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    client, server, first = resumed_with_data(pair)
    assert zero_rtt_packets(first) >= 1  # 0-RTT in the first flight
    # the long-header type bits: 0x1 in v1, 0x2 in v2 (RFC 9369 §3.2)
    assert {(d[0] >> 4) & 3 for d in first[1:]} == {1 if version == QUIC_V1 else 2}
    assert client.version == server.version == version
    assert client.session_resumed and server.session_resumed
    assert client.early_data_accepted and server.early_data_accepted
    assert server.counters.zero_rtt_received >= 5  # the data came in 0-RTT
    completed = [e for e in client.pop_events() if isinstance(e, HandshakeCompleted)]
    assert completed and completed[0].session_resumed and completed[0].early_data_accepted
    assert client.peer_certificates == []  # no certificate in a resumed handshake


def test_zero_rtt_rejected_by_the_application_resent_in_one_rtt() -> None:
    seen: list[tuple[object, ...]] = []

    def refuse(server_name: str | None, alpn: str, address: object) -> bool:
        seen.append((server_name, alpn, address))
        return False

    client_cfg, server_cfg = configs(early_data_hook=refuse)
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    client, server, first = resumed_with_data(pair)
    assert zero_rtt_packets(first) >= 1
    assert seen == [("localhost", "perf", pair.client_addr)]
    assert client.session_resumed and server.session_resumed
    assert not client.early_data_accepted and not server.early_data_accepted
    assert server.counters.zero_rtt_received == 0
    assert server.counters.dropped_no_keys >= 1  # the 0-RTT packets were not opened


def test_server_without_early_data_resumes_only() -> None:
    client_cfg, server_cfg = configs(early_data=False)
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    assert pair.client_ep.configuration.session_ticket_cache.tickets[
        "localhost:4433"][0].max_early_data == 0
    client, server, first = resumed_with_data(pair, early=False)
    assert zero_rtt_packets(first) == 0
    assert client.session_resumed and server.session_resumed
    assert not client.early_data_attempted and not server.early_data_attempted


def test_lowered_server_limits_refuse_zero_rtt() -> None:
    # RFC 9000 §7.4.1: a server whose limits are now below what the client remembers
    # must not accept 0-RTT
    client_cfg, server_cfg = configs()
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    pair.server.configuration = dataclasses.replace(pair.server.configuration,
                                                    max_data=1024 * 1024)
    client, server, _ = resumed_with_data(pair)
    assert client.session_resumed and not client.early_data_accepted
    assert not server.early_data_accepted


def test_replayed_first_flight_gets_no_zero_rtt() -> None:
    client_cfg, server_cfg = configs()
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    client, server, first = resumed_with_data(pair)
    assert server.early_data_accepted
    for conn in pair.clients:
        conn.close(0, "bye", now=pair.now)
    pair.run(lambda: all(c.terminated for c in [*pair.clients, *pair.server_conns]))
    pair.step()  # the endpoint forgets terminated connections as it syncs them
    assert not pair.server_conns
    register = pair.server.configuration.strike_register
    # the attacker sends the recorded first flight again (same address, so it looks
    # like the client): a new connection, the session resumes, the 0-RTT is refused
    for d in first:
        pair.server.receive(d, pair.client_addr, pair.now)
    [replayed] = pair.server_conns
    assert replayed.session_resumed and replayed.early_data_attempted
    assert not replayed.early_data_accepted
    assert replayed.counters.zero_rtt_received == 0 and not replayed.streams
    assert register.refused_replay == 1


def test_stored_ticket_resumes_from_another_process_key() -> None:
    # a server with the same ticket key (another worker or host) resumes the session
    key = os.urandom(32)
    client_cfg, server_cfg = configs(ticket_key=key)
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    cache = client_cfg.session_ticket_cache
    client_cfg.session_ticket_cache = None  # (the pair's own first client takes none)
    other = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    other.client_ep.configuration.session_ticket_cache = cache
    client, server, _ = resumed_with_data(other)
    assert client.session_resumed and client.early_data_accepted
    assert server.session_resumed and server.early_data_accepted


@pytest.mark.parametrize("engine", ["python", "native"])
def test_both_engines_carry_zero_rtt(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # 0-RTT packets are sealed by the packet protector, 1-RTT ones by the offload
    # engine: the C engine and the Python one give the same result
    monkeypatch.setenv("QUICFLOW_ENGINE", engine)
    client_cfg, server_cfg = configs()
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    assert type(pair.server.engine).__name__.startswith(
        "Software" if engine == "python" else "Native")
    first_connection(pair)
    client, server, _ = resumed_with_data(pair)
    assert client.early_data_accepted and server.counters.zero_rtt_received >= 5


def test_zero_rtt_before_the_initial_is_dropped_and_resent() -> None:
    # 0-RTT datagrams that overtake the Initial find no connection: the endpoint drops
    # them (counted); the client sends their data again, intact
    client_cfg, server_cfg = configs()
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    client = pair.add_client()
    sid = client.open_stream()
    client.send_stream_data(sid, DATA, end_stream=True)
    first = pair.client_ep.datagrams_to_send(client, pair.now)
    assert len(first) >= 3 and zero_rtt_packets(first[1:]) == len(first) - 1
    dropped = pair.server.counters.dropped_unknown_cid
    for d in [*first[1:], first[0]]:  # the Initial comes last
        pair.server.receive(d, pair.client_addr, pair.now)
    assert pair.server.counters.dropped_unknown_cid == dropped + len(first) - 1
    [server] = [c for c in pair.server_conns if c.early_data_attempted]
    assert run_until_received(pair, server, sid) == DATA and client.early_data_accepted


def test_hello_retry_request_rejects_zero_rtt_data_resent() -> None:
    # RFC 9001 §4.7: a HelloRetryRequest (the server wants another key share) rejects
    # 0-RTT; the data the client sent in it arrives in 1-RTT
    client_cfg, server_cfg = configs()
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    pair.server.configuration.groups = ["secp256r1"]  # the client's share is x25519
    client, server, first = resumed_with_data(pair)
    assert zero_rtt_packets(first) >= 1
    assert client.session_resumed and server.session_resumed
    assert not client.early_data_accepted and server.counters.zero_rtt_received == 0


def test_zero_rtt_after_retry() -> None:
    # a Retry drops the first flight's 0-RTT packets with it: their data is queued
    # again at once (not left to loss detection) and arrives intact
    client_cfg, server_cfg = configs(retry="always")
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    client, server, _ = resumed_with_data(pair)
    assert client.retry_scid is not None and client.session_resumed
    assert client.early_data_accepted and server.early_data_accepted
    assert client.counters.packets_lost == 0  # requeued by the Retry, not found lost


def test_client_keeps_to_the_remembered_limits() -> None:
    # RFC 9000 §7.4.1: 0-RTT data stays within the limits the ticket remembers (here the
    # server's stream window of 8 KiB); the rest follows once the handshake completes
    client_cfg, server_cfg = configs(max_data=16 * 1024, max_stream_data=8 * 1024)
    pair = MemoryPair(client_config=client_cfg, server_config=server_cfg)
    first_connection(pair)
    client = pair.add_client()
    assert client.remembered_params is not None
    assert client.remembered_params.initial_max_stream_data_bidi_remote == 8 * 1024
    sid = client.open_stream()
    client.send_stream_data(sid, DATA, end_stream=True)
    first = pair.client_ep.datagrams_to_send(client, pair.now)
    assert zero_rtt_packets(first) >= 1
    assert 0 < client.flow.data_sent <= 8 * 1024  # blocked at the remembered window
    old = set(pair.server_conns)
    pair.clients = [pair.clients[0], client]
    for d in first:
        pair.server.receive(d, pair.client_addr, pair.now)
    [server] = [c for c in pair.server_conns if c not in old]
    assert run_until_received(pair, server, sid) == DATA and client.early_data_accepted
