"""What an established, idle connection keeps: a discarded packet number space (Initial,
Handshake) holds no CRYPTO streams, on both ends, through a snapshot and restore too
(memory per idle connection, issue 11: each discarded space's pair of streams with their
buffers and range sets was ~1 KB of Python objects per connection)."""

from __future__ import annotations

import hashlib

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.offload import SoftwareOffloadEngine
from quicflow.transport.connection import Connection
from quicflow.transport.errors import CRYPTO_BUFFER_EXCEEDED
from quicflow.transport.snapshot import restore_connection, snapshot_connection
from tests.support.forge import forge, raw
from tests.support.memory_pair import MemoryPair


def _discarded_spaces_hold_nothing(conn: Connection) -> None:
    for index in (0, 1):  # Initial, Handshake
        space = conn.spaces[index]
        assert space.discarded
        assert space.crypto_send is None and space.crypto_recv is None
    app = conn.spaces[2]
    assert not app.discarded
    assert app.crypto_send is not None
    # a server makes its 1-RTT CRYPTO receive stream only when a CRYPTO frame comes
    assert (app.crypto_recv is not None) == conn.is_client


def test_discarded_spaces_drop_their_crypto_streams_and_data_still_flows() -> None:
    pair = MemoryPair(seed=7)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    client, server = pair.client, pair.server_conns[0]
    _discarded_spaces_hold_nothing(client)
    _discarded_spaces_hold_nothing(server)

    data = bytes(range(256)) * 300
    sid = client.open_stream()
    client.send_stream_data(sid, data, end_stream=True)
    got = bytearray()

    def done() -> bool:
        got.extend(server.read_stream(sid))
        return sid in server.streams and server.stream_at_eof(sid)

    pair.run(done)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    pair.run(lambda: client.loss.bytes_in_flight == 0 and server.loss.bytes_in_flight == 0)
    server.pop_events()

    blob = snapshot_connection(server, pair.now)
    restored, _ = restore_connection(blob, engine=SoftwareOffloadEngine(), now=pair.now)
    _discarded_spaces_hold_nothing(restored)


def test_a_servers_first_one_rtt_crypto_frame_makes_its_stream_and_keeps_the_limit() -> None:
    # the server holds no application-space CRYPTO receive stream until a 1-RTT CRYPTO
    # frame arrives: then it is made with the same window as a client's. A client has no
    # TLS message to send after its handshake (RFC 9001 §6, §4.4, §8.3), so data within
    # the window closes with unexpected_message; data past it with CRYPTO_BUFFER_EXCEEDED
    for offset, code in ((0, 0x100 + 10), (None, CRYPTO_BUFFER_EXCEEDED)):
        pair = MemoryPair(seed=3)
        pair.run(lambda pair=pair: pair.client.handshake_confirmed
                 and bool(pair.server_conns) and pair.server_conns[0].handshake_confirmed)
        server = pair.server_conns[0]
        assert server.spaces[2].crypto_recv is None
        window = pair.client.spaces[2].crypto_recv.window
        at = window if offset is None else offset
        pair.server.receive(forge(pair.client, Epoch.ONE_RTT, raw(0x06, at, 3, b"abc")),
                            pair.client_addr, pair.now)
        recv = server.spaces[2].crypto_recv
        assert recv is not None and recv.window == window
        assert server.close_error is not None and server.close_error[0] == code
