"""RFC 9002 §7.3.2: when a loss starts a recovery period and the window is reduced at
once, "a single packet can be sent prior to reduction". quicflow sends that one packet
(the lost data first) instead of waiting for the next ACK; at small windows on a lossy
path that packet is often what keeps the ACK clock going (bench/RESULTS.md, "lossy
paths")."""

from __future__ import annotations

import pytest

from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection

from .support.memory_pair import _CERT, SERVER_ADDR, MemoryPair


def _server_sending(size: int, pacing: str = "auto"
                    ) -> tuple[MemoryPair, Connection, Connection, int]:
    cert, key = _CERT
    pair = MemoryPair(seed=3, ack_frequency=False, server_config=Configuration(
        alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
        ack_frequency=False, pacing=pacing))
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    client, server = pair.client, pair.server_conns[0]
    sid = client.open_stream()
    client.send_stream_data(sid, b"get", end_stream=True)
    pair.run(lambda: sid in server.streams and server.read_stream(sid) == b"get")
    pair.run(lambda: server.loss.bytes_in_flight == 0 and not pair.step())
    server.send_stream_data(sid, bytes(size), end_stream=True)
    return pair, client, server, sid


def _deliver(pair: MemoryPair, datagrams: list[bytes]) -> None:
    for d in datagrams:
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)


def _acks_to_server(pair: MemoryPair, client: Connection) -> None:
    pair.now += 0.001
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)


def _send_all(pair: MemoryPair, server: Connection) -> list[bytes]:
    """Everything the server sends now and at its pacer's deadlines, with no ACK."""
    out: list[bytes] = []
    for _ in range(50):
        batch = pair.server.datagrams_to_send(server, pair.now)
        out += batch
        if server.pacer_deadline is None or (not batch and server.pacer_deadline <= pair.now):
            break
        pair.now = max(pair.now, server.pacer_deadline)
    return out


@pytest.mark.parametrize("pacing", ["auto", "off"])  # (a network path; unpaced as loopback)
def test_one_packet_goes_beyond_the_reduced_window_when_recovery_starts(pacing: str) -> None:
    """Paced or not: unpaced, the whole reduced window goes at once, and a path MTU probe
    that is due waits for room in the window rather than go beyond it."""
    pair, client, server, sid = _server_sending(1 << 20, pacing)
    cc, mds = server.loss.cc, server.max_datagram_size
    flight = pair.server.datagrams_to_send(server, pair.now)
    assert cc.available() < mds  # the initial window is full
    _deliver(pair, flight[1:])  # the first datagram of the flight is lost
    _acks_to_server(pair, client)  # the later ones are acknowledged: the first is lost
    assert cc.congestion_events == 1
    window = cc.cwnd
    assert window < len(b"".join(flight))  # reduced
    again = _send_all(pair, server)
    # the reduced window, and one packet beyond it
    assert window < cc.bytes_in_flight <= window + mds
    # the lost bytes went too: the client reads every byte sent so far, no gap
    _deliver(pair, again)
    send = server.streams[sid].send
    assert send is not None
    assert len(client.read_stream(sid)) == send.next_offset
    # the credit is spent: the next ACK clocks out packets within the window only
    _acks_to_server(pair, client)
    _send_all(pair, server)
    assert cc.bytes_in_flight <= cc.cwnd


@pytest.mark.parametrize("pacing", ["auto", "off"])
def test_no_extra_packet_without_a_new_recovery_period(pacing: str) -> None:
    """A second loss from the same flight starts no recovery period: one packet beyond
    the window, not two."""
    pair, client, server, sid = _server_sending(1 << 20, pacing)
    cc, mds = server.loss.cc, server.max_datagram_size
    flight = pair.server.datagrams_to_send(server, pair.now)
    _deliver(pair, flight[1:2] + flight[3:])  # two of the flight lost
    _acks_to_server(pair, client)
    assert cc.congestion_events == 1
    _send_all(pair, server)
    assert cc.cwnd < cc.bytes_in_flight <= cc.cwnd + mds
