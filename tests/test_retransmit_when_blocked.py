"""Lost stream data goes out again while the connection is blocked by the peer's
connection-level flow control (MAX_DATA): a retransmission carries bytes below the
highest offset already sent, so it needs no new credit (RFC 9000 §4.1).

The stall this guards against (quic-go's client under heavy host load, 3 of ~500 runs of
tests/test_interop_quicgo.py::test_multistream_transfer[qf-server] with the server
starved): a stream whose bytes were all sent leaves the send queue; one of its packets is
lost, and the stream is queued again behind a stream that waits for MAX_DATA. The
receiver cannot read past the gap, so the bytes after it fill its connection window and
it never raises the limit; the sender stopped at the first queued stream that had no
credit, never reaching the lost bytes: nothing in flight, nothing sent, until the idle
timeout on both sides.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from quicflow.tls.certs import generate_self_signed
from quicflow.transport import send as send_module
from quicflow.transport.config import Configuration
from quicflow.transport.streams import SendStream
from tests.support.memory_pair import MemoryPair

KIB = 1024
_CERT = generate_self_signed(["localhost"])


def _pair() -> MemoryPair:
    cert, key = _CERT
    # the receiver (server): a 16 KiB connection window that never grows, stream windows
    # large enough never to matter
    server = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                           max_data=16 * KIB, max_data_window=16 * KIB,
                           max_stream_data=1024 * KIB, max_stream_data_window=1024 * KIB)
    client = Configuration(alpn_protocols=["perf"], verify_peer=False)
    return MemoryPair(server_config=server, client_config=client)


def test_lost_data_is_resent_while_the_connection_waits_for_max_data() -> None:
    pair = _pair()
    client = pair.client
    # confirmed, every ACK sent: the client's next datagrams carry stream data only
    pair.run(lambda: client.handshake_confirmed and not client.spaces[2].ack_pending
             and not client.loss.bytes_in_flight)
    server = pair.server_conns[0]
    # The first stream goes whole in the first flight (its FIN too: it leaves the send
    # queue), and that flight's first datagram is lost: the other 9 KiB of the stream
    # wait unread at the server, more than half its window, so the server raises no
    # limit until the gap is filled. The second stream takes the rest of the credit and
    # waits for MAX_DATA, first in the send queue.
    first = hashlib.sha256(b"first").digest() * (10 * KIB // 32)
    second = hashlib.sha256(b"second").digest() * (100 * KIB // 32)
    a, b = client.open_stream(), client.open_stream()
    client.send_stream_data(a, first, end_stream=True)
    client.send_stream_data(b, second, end_stream=True)
    flight = pair.client_ep.datagrams_to_send(client, pair.now)
    assert client.send_queue == [b]  # stream a went whole
    for datagram in flight[1:]:
        pair.server.receive(datagram, pair.client_addr, pair.now)
    got: dict[int, bytearray] = {a: bytearray(), b: bytearray()}

    def done() -> bool:
        # the server's application reads whatever arrived, as soon as it arrived
        for sid, buf in got.items():
            buf.extend(server.read_stream(sid, -1, pair.now))
        return len(got[a]) == len(first) and len(got[b]) == len(second)

    try:
        pair.run(done, max_time=20.0)
    except AssertionError as exc:
        send = client.streams[a].send
        raise AssertionError(
            f"the upload stalled ({exc}): stream {a} lost {send.lost if send else None}, "
            f"connection credit {client.flow.peer_max_data - client.flow.data_sent}, "
            f"queue {client.send_queue}, in flight {client.loss.bytes_in_flight}") from None
    assert client.counters.packets_lost >= 1  # the first datagram was found lost, resent
    assert bytes(got[a]) == first
    assert bytes(got[b]) == second


def test_streams_waiting_for_max_data_leave_the_queue_until_it_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """64 streams wait for MAX_DATA (the server's application does not read yet): each
    leaves the send queue once it has nothing that may go without credit, so the
    packets built meanwhile (ACKs, probes) do not walk all 64 streams each; MAX_DATA
    puts them back, and every byte arrives."""
    pair = _pair()
    client = pair.client
    pair.run(lambda: client.handshake_confirmed and not client.spaces[2].ack_pending
             and not client.loss.bytes_in_flight)
    server = pair.server_conns[0]
    bodies = {client.open_stream(): hashlib.sha256(bytes([i])).digest() * 128
              for i in range(64)}  # 4 KiB each: 256 KiB against a 16 KiB window
    for sid, body in bodies.items():
        client.send_stream_data(sid, body, end_stream=True)
    pair.run(lambda: client.flow.peer_max_data == client.flow.data_sent
             and not client.loss.bytes_in_flight)
    visits = 0
    next_chunk = SendStream.next_chunk

    def counted(self: SendStream, max_len: int, conn_credit: int) -> Any:
        nonlocal visits
        visits += 1
        return next_chunk(self, max_len, conn_credit)

    monkeypatch.setattr(SendStream, "next_chunk", counted)
    for _ in range(50):  # the stream part of packets built while it waits
        send_module._fill_streams(client, bytearray(), 1200, [])
    assert visits <= 64  # (64 per packet before: 3,200)
    assert client.flow.peer_max_data == client.flow.data_sent
    got = {sid: bytearray() for sid in bodies}

    def done() -> bool:
        for sid, buf in got.items():  # the application reads now: MAX_DATA goes out
            buf.extend(server.read_stream(sid, -1, pair.now))
        return all(len(got[sid]) == len(body) for sid, body in bodies.items())

    pair.run(done, max_time=30.0)
    assert all(bytes(got[sid]) == body for sid, body in bodies.items())
    assert not client.send_queue
