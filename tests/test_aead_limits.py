"""The AEAD limits of RFC 9001 §6.6 (transport/aead_limits.py), on two sans-I/O endpoints.

Confidentiality: a sender starts a key update before its packets under one key reach the
limit, and sends nothing more with that key while the update cannot start. Integrity:
more packets that fail authentication than the limit close the connection with
AEAD_LIMIT_REACHED, and no packet after them is processed: while closing, a packet is
answered but only its ACKs and CONNECTION_CLOSE are taken (RFC 9000 §10.2.1).
"""

from __future__ import annotations

import hashlib

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.suites import CipherSuite
from quicflow.transport import stream_api
from quicflow.transport.aead_limits import LIMITS, update_after
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.errors import AEAD_LIMIT_REACHED
from quicflow.transport.events import ConnectionTerminated
from quicflow.transport.receive import _process_frames
from quicflow.transport.state import CLOSING, DRAINING
from quicflow.wire import frame_types as F
from quicflow.wire.frames import encode_frame

from .support.memory_pair import SERVER_ADDR, MemoryPair, upload


def _confirmed(pair: MemoryPair) -> tuple[Connection, Connection]:
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    return pair.client, pair.server_conns[0]


def test_the_rfc_limits_and_the_default_update_point() -> None:
    gcm = (1 << 23, 1 << 52)
    assert LIMITS[CipherSuite.AES_128_GCM_SHA256] == gcm
    assert LIMITS[CipherSuite.AES_256_GCM_SHA384] == gcm
    assert LIMITS[CipherSuite.CHACHA20_POLY1305_SHA256][1] == 1 << 36
    pair = MemoryPair(seed=3)
    client, _ = _confirmed(pair)
    assert client.cipher_suite == CipherSuite.AES_128_GCM_SHA256
    assert update_after(client) == 3 << 21  # three quarters of 2^23
    client.configuration.key_update_after = 1000
    assert update_after(client) == 1000
    client.configuration.key_update_after = 1 << 40  # never past the limit's 3/4
    assert update_after(client) == 3 << 21
    with pytest.raises(ValueError, match="key_update_after"):
        Configuration(alpn_protocols=["x"], key_update_after=0).validate()


def test_updates_come_by_themselves_and_the_upload_arrives_intact() -> None:
    config = Configuration(alpn_protocols=["perf"], verify_peer=False, key_update_after=200)
    pair = MemoryPair(seed=4, client_config=config)
    client, server = _confirmed(pair)
    data = bytes(range(256)) * 12_000  # 3 MB: about 2,600 packets
    got = upload(pair, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    # each after 200 packets (less one build's) and three PTOs after the one before
    assert client.counters.key_updates_started >= 2
    assert client.key_phase_first_pn >= 2 * (200 - 64)
    assert server.key_updates_received == client.counters.key_updates_started
    assert not client.terminated and not server.terminated


def test_sending_stops_short_of_the_confidentiality_limit_until_an_update_may_start() -> None:
    pair = MemoryPair(seed=6)
    client, server = _confirmed(pair)
    client.aead_limits = (400, 1 << 52)  # the update point: 300 packets
    client.key_limit_pn = 0  # (looked at again on the next build)
    # as if the peer had just updated: ours may not start for 3 PTOs (here: 2 s)
    wait_until = pair.now + 2.0
    client.key_update_allowed_at = wait_until
    data = b"\x5a" * 1_500_000  # over 1,000 packets
    sid = stream_api.open_stream(client)
    stream_api.send_stream_data(client, sid, data, True)
    phases: list[tuple[int, float]] = []  # (first pn of each new phase, when it began)
    got = bytearray()

    def watch() -> bool:
        first = client.key_phase_first_pn
        if first >= 0 and (not phases or phases[-1][0] != first):
            phases.append((first, pair.now))
        # never more than the limit under one key, the current one included
        start = phases[-1][0] if phases else 0
        assert client.spaces[2].next_pn - start <= 400
        got.extend(stream_api.read_stream(server, sid, -1, pair.now))
        return len(got) == len(data)

    pair.run(watch, max_time=30)
    assert bytes(got) == data
    # the first phase ended between the update point and the limit, once it could
    assert phases and 300 - 64 <= phases[0][0] <= 400
    assert phases[0][1] >= wait_until
    starts = [0] + [first for first, _ in phases]
    assert all(b - a <= 400 for a, b in zip(starts, starts[1:], strict=False))
    assert server.key_updates_received == len(phases)


def _corrupted_one_rtt(pair: MemoryPair, count: int) -> list[bytes]:
    """``count`` copies of a real 1-RTT datagram of the client with its tag damaged."""
    sid = stream_api.open_stream(pair.client)
    stream_api.send_stream_data(pair.client, sid, b"never read " * 20, False)
    (datagram,) = pair.client_ep.datagrams_to_send(pair.client, pair.now)
    assert not datagram[0] & 0x80  # short header
    bad = bytearray(datagram)
    bad[-1] ^= 0x01
    return [bytes(bad)] * count


@pytest.mark.parametrize("path", ["one-by-one", "gro-batch"])
def test_failed_authentications_past_the_integrity_limit_close_the_connection(
    path: str,
) -> None:
    pair = MemoryPair(seed=7)
    client, server = _confirmed(pair)
    server.aead_limits = (1 << 23, 3)
    bad = _corrupted_one_rtt(pair, 4)
    # a good packet after them: not processed once the limit is passed
    sid = stream_api.open_stream(client)
    stream_api.send_stream_data(client, sid, b"after the limit", True)
    (good,) = pair.client_ep.datagrams_to_send(client, pair.now)
    for datagram in bad[:3]:
        pair.server.receive(datagram, pair.client_addr, pair.now)
    assert server.state < CLOSING  # at the limit, not past it
    assert server.counters.dropped_undecryptable == 3
    received = server.counters.packets_received
    if path == "one-by-one":
        pair.server.receive(bad[3], pair.client_addr, pair.now)
        pair.server.receive(good, pair.client_addr, pair.now)
    else:  # one GRO buffer: the bad segment, then the good one (padded to its size)
        assert len(good) <= len(bad[3])
        pair.server.receive_batch(bad[3] + good, len(bad[3]), pair.client_addr, pair.now)
    assert server.state >= CLOSING
    assert server.close_error is not None and server.close_error[0] == AEAD_LIMIT_REACHED
    if path == "gro-batch":  # (one by one, a closing connection counts what it answers)
        assert server.counters.packets_received == received  # not even opened
    assert sid not in server.streams  # its data was not taken
    # the client hears why
    for d in pair.server.datagrams_to_send(server, pair.now):
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    ends = [e for e in client.events if isinstance(e, ConnectionTerminated)]
    assert ends and ends[0].error_code == AEAD_LIMIT_REACHED


def test_a_closing_connection_takes_the_peers_close_after_an_ack_and_no_stream_data() -> None:
    """While closing (RFC 9000 §10.2.1-2), a packet with an ACK, stream data and the peer's
    own CONNECTION_CLOSE, in that order: the close is taken (draining), the data is not
    (no stream is made after our close)."""
    pair = MemoryPair(seed=8)
    client, server = _confirmed(pair)
    stream_api.send_stream_data(client, stream_api.open_stream(client), b"x", False)
    assert pair.client_ep.datagrams_to_send(client, pair.now)  # (lost)
    largest = client.spaces[2].next_pn - 1  # what the server's ACK acknowledges
    client.close(0, "client done")
    assert client.state == CLOSING
    sid = 1  # the server's first bidirectional stream
    payload = bytearray()
    for frame in (F.Ack([(largest, largest)], 0), F.Stream(sid, 0, b"late data"),
                  F.ConnectionClose(0, None, b"server done")):
        encode_frame(frame, payload)
    assert _process_frames(client, bytes(payload), Epoch.ONE_RTT, pair.now)  # (eliciting)
    assert client.state == DRAINING
    assert sid not in client.streams
