"""The sans-I/O core end to end in memory: handshake, transfers under loss and
reordering, flow control, stream limits, closing, key discard. Deterministic seeds."""

from __future__ import annotations

import hashlib
import random

import pytest

import quicflow.endpoint.endpoint as endpoint_module
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection, StreamLimitReached
from quicflow.transport.events import ConnectionTerminated, StreamOpened
from quicflow.transport.state import ESTABLISHED

from .support.memory_pair import CLIENT_ADDR, MemoryPair


def _drain(conn: Connection, sink: dict[int, bytearray]) -> None:
    for sid in list(conn.streams):
        data = conn.read_stream(sid)
        if data:
            sink.setdefault(sid, bytearray()).extend(data)


def _transfer(pair: MemoryPair, up: bytes, down_size: int) -> tuple[bytes, bytes]:
    """Client uploads ``up`` and the server answers with ``down_size`` bytes on one
    bidirectional stream; returns (what the server got, what the client got)."""
    pair.run(lambda: pair.client.handshake_complete and bool(pair.server_conns))
    c = pair.client
    sid = c.open_stream()
    c.send_stream_data(sid, up, end_stream=True)
    got_up: dict[int, bytearray] = {}
    got_down: dict[int, bytearray] = {}
    answered: set[int] = set()
    down = random.Random(7).randbytes(down_size)

    def done() -> bool:
        s = pair.server_conns[0]
        _drain(s, got_up)
        if sid not in answered and s.stream_at_eof(sid) and sid in s.streams:
            s.send_stream_data(sid, down, end_stream=True)
            answered.add(sid)
        _drain(c, got_down)
        return bool(answered) and c.stream_at_eof(sid)

    pair.run(done)
    assert hashlib.sha256(got_down.get(sid, b"")).digest() == hashlib.sha256(down).digest()
    return bytes(got_up.get(sid, b"")), bytes(got_down.get(sid, b""))


def test_handshake_discards_initial_and_handshake_keys() -> None:
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    server = pair.server_conns[0]
    for conn in (pair.client, server):
        assert conn.state == ESTABLISHED
        assert conn.spaces[0].discarded and conn.spaces[1].discarded
        assert conn.alpn_protocol == "perf"
    assert server.address_validated


@pytest.mark.parametrize("loss,reorder", [(0.0, 0.0), (0.1, 0.1), (0.03, 0.3)])
def test_transfer_intact_under_loss_and_reordering(loss: float, reorder: float) -> None:
    pair = MemoryPair(seed=3, loss=loss, reorder=reorder)
    up = random.Random(5).randbytes(1_500_000)
    got_up, _ = _transfer(pair, up, 3_000_000)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    if loss:
        assert pair.down.dropped > 0 and pair.server_conns[0].counters.packets_lost > 0


def test_flow_control_windows_small_still_complete() -> None:
    cfg = Configuration(alpn_protocols=["perf"], verify_peer=False, max_data=16_384,
                        max_data_window=16_384, max_stream_data=4096,
                        max_stream_data_window=4096)
    pair = MemoryPair(client_config=cfg)
    _transfer(pair, b"x" * 10_000, 200_000)


def test_stream_limit_is_enforced_and_raised() -> None:
    from quicflow.tls.certs import generate_self_signed

    cert, key = generate_self_signed(["localhost"])
    server_cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                               private_key=key, max_streams_bidi=4)
    pair = MemoryPair(server_config=server_cfg)
    pair.run(lambda: pair.client.handshake_complete and bool(pair.server_conns))
    c = pair.client
    sids = [c.open_stream() for _ in range(4)]
    with pytest.raises(StreamLimitReached):
        c.open_stream()
    for sid in sids:
        c.send_stream_data(sid, b"hello", end_stream=True)
    server = pair.server_conns[0]
    opened: list[int] = []

    def server_done() -> bool:
        for ev in server.pop_events():
            if isinstance(ev, StreamOpened):
                opened.append(ev.stream_id)
        for sid in list(server.streams):
            if server.read_stream(sid) or server.stream_at_eof(sid):
                if sid in server.streams and not server.streams[sid].send.fin_written:
                    server.send_stream_data(sid, b"", end_stream=True)
        return len(opened) == 4 and c.bidi.peer_max > 4

    pair.run(server_done)
    assert sorted(opened) == sids
    assert c.open_stream() == 16  # the fifth client bidi stream


def test_application_close_reaches_peer_with_code_and_reason() -> None:
    pair = MemoryPair()
    # (before the handshake is confirmed, the close also goes in Handshake packets,
    # where an application close is masked as APPLICATION_ERROR: RFC 9000 §10.2.3)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    pair.client.close(42, "bye", now=pair.now)
    server = pair.server_conns[0]
    events: list[object] = []

    def closed() -> bool:
        events.extend(server.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    pair.run(closed)
    term = [e for e in events if isinstance(e, ConnectionTerminated)][0]
    assert (term.error_code, term.reason, term.by_peer, term.frame_type) == (42, "bye", True, None)
    pair.run(lambda: pair.client.terminated and server.terminated)


def test_key_update_both_directions_keeps_data_flowing() -> None:
    pair = MemoryPair(seed=11)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    client, server = pair.client, pair.server_conns[0]
    old_secret = client.one_rtt_send_secret
    client.initiate_key_update()
    _transfer(pair, b"u" * 200_000, 300_000)
    assert client.one_rtt_send_secret != old_secret
    assert server.key_updates_received == 1 and client.key_updates_received == 1
    assert client.key_phase == server.key_phase == 1 and not client.key_update_pending
    # and the server can start the next one
    server.initiate_key_update()  # starts 3 PTO after the previous one (RFC 9001 §6.5)
    pair.run(lambda: server.key_phase == 0)
    _transfer(pair, b"v" * 100_000, 100_000)
    assert client.key_updates_received == 2 and client.key_phase == 0


def test_key_update_after_peer_started_one_waits_for_an_ack_of_the_current_phase() -> None:
    """RFC 9001 §6.1: after following the client's update, the server may start its own
    only once the client acknowledged a packet the server sent with the current keys,
    and three PTOs after that ACK (§6.5) - however long it waits for it."""
    pair = MemoryPair(seed=5)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    client, server = pair.client, pair.server_conns[0]
    client.initiate_key_update()
    sid = client.open_stream()
    client.send_stream_data(sid, b"phase one", end_stream=True)
    pair.run(lambda: server.key_updates_received == 1)  # the server followed: phase 1
    assert server.key_phase == 1
    first_pn = server.spaces[2].next_pn  # the server's first packet of phase 1 (and later)
    pair.up.loss = 1.0  # nothing from the client arrives: no ACK of a phase-1 packet
    server.initiate_key_update()
    blocked_from = pair.now
    pair.run(lambda: pair.now > blocked_from + 40 * server.pto())
    assert server.key_phase == 1 and server.key_update_requested  # still waiting
    assert server.spaces[2].largest_acked < first_pn
    pair.up.loss = 0.0
    acked_at: list[float] = []

    def updated() -> bool:
        if not acked_at and server.spaces[2].largest_acked >= first_pn:
            acked_at.append(pair.now)
        return server.key_phase == 0

    pto = server.pto()
    pair.run(updated)  # no new data: the server's PING asks for the ACK
    assert acked_at and pair.now - acked_at[0] >= 2.5 * pto
    got_up, _ = _transfer(pair, b"w" * 30_000, 40_000)  # the down hash is checked inside
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(b"w" * 30_000).digest()
    assert client.key_updates_received == 2 and client.key_phase == client.recv_key_phase == 0


def test_hello_retry_request_over_quic() -> None:
    from quicflow.tls.certs import generate_self_signed

    cert, key = generate_self_signed(["localhost"])
    server_cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                               private_key=key, groups=["secp256r1"])
    pair = MemoryPair(server_config=server_cfg)  # the client sends an X25519 share first
    _transfer(pair, b"hrr", 10_000)


def test_server_respects_three_times_amplification_limit() -> None:
    from quicflow.tls.certs import generate_self_signed

    cert, key = generate_self_signed(["localhost"], key_type="rsa")
    chain = [cert] * 8  # a large Certificate message: the first flight exceeds 3 x 1200
    server_cfg = Configuration(alpn_protocols=["perf"], certificate_chain=chain,
                               private_key=key)
    pair = MemoryPair(server_config=server_cfg)
    first = pair.client_ep.datagrams_to_send(pair.client, 0.0)
    received = sum(len(d) for d in first)
    for d in first:
        pair.server.receive(d, CLIENT_ADDR, 0.0)
    server = pair.server_conns[0]
    sent = sum(len(d) for d in pair.server.datagrams_to_send(server, 0.0))
    assert 0 < sent <= 3 * received
    assert not server.address_validated
    # the client's Handshake packets validate the address and the handshake completes
    pair.run(lambda: pair.client.handshake_confirmed)
    assert server.address_validated and server.counters.bytes_sent > 3 * received


def test_connection_ids_issued_up_to_the_peer_limit_and_retired() -> None:
    client_cfg = Configuration(alpn_protocols=["perf"], verify_peer=False,
                               active_connection_id_limit=3)
    pair = MemoryPair(client_config=client_cfg)
    _transfer(pair, b"x", 1000)
    client, server = pair.client, pair.server_conns[0]
    # the server issued as many CIDs as the client accepts, the client as many as the
    # server accepts (4 by default)
    assert len(client.peer_cids) == 3
    assert len(server.peer_cids) == 4
    assert len(pair.server.connections) >= 3  # every server CID routes to the connection
    # retiring a CID makes the issuer replace it
    from quicflow.transport.receive import _HANDLERS
    from quicflow.wire.frames import RetireConnectionId

    before = {c.sequence for c in server.host_cids}
    _HANDLERS[RetireConnectionId](server, RetireConnectionId(sequence=1), None, pair.now)
    after = {c.sequence for c in server.host_cids}
    assert 1 not in after and len(after) == len(before) and max(after) > max(before)


def test_idle_connection_is_quiet_no_ack_of_acks() -> None:
    """Peers acknowledge ack-eliciting packets only: an idle connection exchanges
    (almost) nothing instead of acknowledging each other's ACKs forever."""
    pair = MemoryPair()
    _transfer(pair, b"x" * 5000, 5000)
    client, server = pair.client, pair.server_conns[0]
    # (the path MTU searches, one PTO after confirmation, end first)
    pair.run(lambda: all(c.pmtud.started and c.pmtud.candidate == 0 and not
                         c.loss.bytes_in_flight for c in (client, server)))
    before = client.counters.datagrams_sent + server.counters.datagrams_sent
    start = pair.now
    pair.run(lambda: client.terminated and server.terminated)
    after = client.counters.datagrams_sent + server.counters.datagrams_sent
    assert after - before <= 4
    # the simulated clock jumped straight to the idle timeout (30 s): no timer before it
    assert pair.now >= start + 29.9
    assert client.close_error is not None and client.close_error[2] == "idle timeout"


def test_server_follows_a_client_whose_address_changed() -> None:
    """NAT rebinding: the server sends to the new address, validates it with
    PATH_CHALLENGE/PATH_RESPONSE (3x limit until then), and the transfer completes."""
    pair = MemoryPair(seed=17)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    server = pair.server_conns[0]
    client = pair.client
    sid = client.open_stream()
    up = random.Random(9).randbytes(400_000)
    client.send_stream_data(sid, up[:200_000])
    pair.run(lambda: server.streams.get(sid) is not None
             and server.streams[sid].recv.highest_offset >= 100_000)
    assert server.address_validated and server.path_changes == 0
    pair.client_addr = (CLIENT_ADDR[0], 61000)  # the client's NAT picked a new port
    client.send_stream_data(sid, up[200_000:], end_stream=True)
    got = bytearray()

    def done() -> bool:
        if sid in server.streams:
            got.extend(server.read_stream(sid))
        return server.stream_at_eof(sid)

    pair.run(done)
    assert bytes(got) == up
    assert server.peer_address == (CLIENT_ADDR[0], 61000)
    assert server.path_changes == 1 and server.address_validated
    assert server.path_challenge == b""  # answered by the client's PATH_RESPONSE


def test_lost_path_response_is_challenged_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH_RESPONSE is never retransmitted (RFC 9000 §8.2.2): when the one answering the
    server's challenge is lost, the server must challenge again, or it stays held to 3x
    what it receives on the new path for good (seen with a NAT rebinding through a relay
    that dropped the client's datagram carrying the response)."""
    pair = MemoryPair(seed=23)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    server = pair.server_conns[0]
    client = pair.client
    sid = client.open_stream()
    up = random.Random(5).randbytes(300_000)
    client.send_stream_data(sid, up[:100_000])
    pair.run(lambda: server.streams.get(sid) is not None
             and server.streams[sid].recv.highest_offset >= 50_000)
    pair.client_addr = (CLIENT_ADDR[0], 61001)
    send = endpoint_module.datagrams_to_send
    dropped: list[int] = []

    def drop_the_response(conn: Connection, now: float) -> list[bytes]:
        answering = conn.is_client and bool(conn.path_challenges_received)
        out = send(conn, now)
        if answering and not dropped:
            dropped.append(len(out))
            return []  # the datagrams carrying the PATH_RESPONSE are lost
        return out

    monkeypatch.setattr(endpoint_module, "datagrams_to_send", drop_the_response)
    client.send_stream_data(sid, up[100_000:], end_stream=True)
    got = bytearray()

    def done() -> bool:
        if sid in server.streams:
            got.extend(server.read_stream(sid))
        return server.stream_at_eof(sid) and server.address_validated

    pair.run(done, max_time=30.0)
    assert dropped, "no PATH_RESPONSE was dropped"
    assert bytes(got) == up
    assert server.path_changes == 1 and server.path_challenge == b""
