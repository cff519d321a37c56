"""TLS messages after the handshake, on two sans-I/O endpoints (RFC 9001 §4.4, §6, §8.3).

A QUIC client has no TLS message to send once its handshake is done: KeyUpdate is
forbidden, post-handshake authentication is not used and EndOfEarlyData not sent. A
server (which drops its TLS state after the handshake) closes a connection whose client
sends CRYPTO data in 1-RTT packets with unexpected_message (0x10a), as a client closes on
a server's KeyUpdate.
"""

from __future__ import annotations

from quicflow.transport.connection import Connection
from quicflow.transport.events import ConnectionTerminated

from .support.memory_pair import MemoryPair

UNEXPECTED_MESSAGE = 0x100 + 10


def _ends(conn: Connection) -> list[ConnectionTerminated]:
    return [e for e in conn.events if isinstance(e, ConnectionTerminated)]


def test_a_key_update_message_from_a_client_closes_with_unexpected_message() -> None:
    pair = MemoryPair(seed=10)
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    client, server = pair.client, pair.server_conns[0]
    assert server.tls is None  # (dropped after the handshake: nothing left to parse it)
    crypto = client.spaces[2].crypto_send
    assert crypto is not None
    crypto.write(b"\x18\x00\x00\x01\x00")  # KeyUpdate(update_not_requested), in 1-RTT
    pair.run(lambda: bool(_ends(client)), max_time=10)
    assert server.close_error is not None and server.close_error[0] == UNEXPECTED_MESSAGE
    (end,) = _ends(client)
    assert end.by_peer and end.error_code == UNEXPECTED_MESSAGE
