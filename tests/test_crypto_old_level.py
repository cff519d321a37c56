"""CRYPTO data at an encryption level the handshake has left (RFC 9001 §4.1.3).

"If the packet is from a previously installed encryption level, it MUST NOT contain
data that extends past the end of previously received data in that flow", and "if
there is data from a previous encryption level that TLS has not consumed" when keys for
a higher one come: both are connection errors of type PROTOCOL_VIOLATION. Before, the
first closed with TLS's unexpected_message (0x10a), or not at all when the bytes were
an incomplete message, and the second with 0x10a. On two sans-I/O endpoints; the peer
hears the code in the CONNECTION_CLOSE.
"""

from __future__ import annotations

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.errors import PROTOCOL_VIOLATION
from quicflow.transport.events import ConnectionTerminated

from .support.forge import forge, raw
from .support.memory_pair import SERVER_ADDR, MemoryPair

CRYPTO = 0x06
WHOLE = bytes([1, 0, 0, 4, 0, 0, 0, 0])  # a whole (empty-bodied) handshake message
PARTIAL = bytes([1, 0, 1, 0, 0, 0, 0, 0])  # the start of a 256-byte one


def _closed_with_protocol_violation(conn: Connection, peer: Connection) -> None:
    assert conn.close_error is not None, "not closed"
    assert conn.close_error[:2] == (PROTOCOL_VIOLATION, CRYPTO)
    ends = [e for e in peer.events if isinstance(e, ConnectionTerminated)]
    assert ends and ends[0].error_code == PROTOCOL_VIOLATION and ends[0].by_peer


def _server_after_client_hello() -> tuple[MemoryPair, Connection]:
    pair = MemoryPair()
    for d in pair.client_ep.datagrams_to_send(pair.client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    (server,) = pair.server_conns
    assert server.recv_protectors[Epoch.HANDSHAKE] is not None
    return pair, server


def _to_client(pair: MemoryPair, server: Connection) -> None:
    """The server's datagrams (its CONNECTION_CLOSE) to the client."""
    for d in pair.server.datagrams_to_send(server, pair.now):
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)


def test_server_initial_crypto_past_the_client_hello() -> None:
    for extra in (WHOLE, PARTIAL):
        pair, server = _server_after_client_hello()
        recv = server.spaces[0].crypto_recv
        assert recv is not None
        datagram = forge(pair.client, Epoch.INITIAL, raw(CRYPTO, recv.read_offset, 8, extra),
                         pad_to=1200)
        pair.server.receive(datagram, pair.client_addr, pair.now)
        _to_client(pair, server)
        _closed_with_protocol_violation(server, pair.client)


def test_a_retransmitted_client_hello_is_no_violation() -> None:
    """The same range again (a ClientHello sent again) is not past the end."""
    pair, server = _server_after_client_hello()
    recv = server.spaces[0].crypto_recv
    assert recv is not None
    datagram = forge(pair.client, Epoch.INITIAL, raw(CRYPTO, 0, 8, bytes(8)), pad_to=1200)
    pair.server.receive(datagram, pair.client_addr, pair.now)
    assert server.close_error is None and server.counters.packets_received == 2


def test_client_initial_crypto_past_the_server_hello() -> None:
    pair, server = _server_after_client_hello()
    client = pair.client
    _to_client(pair, server)
    assert client.recv_protectors[Epoch.HANDSHAKE] is not None
    recv = client.spaces[0].crypto_recv
    assert recv is not None and not client.spaces[0].discarded
    pair.client_ep.receive(forge(server, Epoch.INITIAL,
                                 raw(CRYPTO, recv.read_offset, 8, WHOLE)),
                           SERVER_ADDR, pair.now)
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    _closed_with_protocol_violation(client, server)


def test_initial_data_left_unconsumed_at_the_key_change() -> None:
    """The start of a second message behind the ClientHello (sent first, so that it is
    buffered and handed to TLS with the ClientHello)."""
    pair = MemoryPair()
    client = pair.client
    first = pair.client_ep.datagrams_to_send(client, pair.now)
    send = client.spaces[0].crypto_send
    assert send is not None
    after = forge(client, Epoch.INITIAL, raw(CRYPTO, send.write_offset, 8, PARTIAL),
                  pad_to=1200)
    pair.server.receive(after, pair.client_addr, pair.now)
    for d in first:
        pair.server.receive(d, pair.client_addr, pair.now)
    (server,) = pair.server_conns
    _to_client(pair, server)
    _closed_with_protocol_violation(server, client)
