"""A 0-RTT client and the server's new transport parameters (RFC 9000 §7.4.1, RFC 9001
§4.6.2, RFC 9221 §3), on two sans-I/O endpoints with a real ticket.

- 0-RTT rejected: its frames are sent again in 1-RTT only when they fit what the server
  now allows and its application protocol is the ticket's; else the client closes with
  INTERNAL_ERROR and says why. Before, it sent them anyway: the server closed with
  FLOW_CONTROL_ERROR or STREAM_LIMIT_ERROR, or bytes written for one protocol reached
  another's application.
- 0-RTT accepted: the server's parameters may not lower the remembered ones (a
  max_datagram_frame_size below the stored one is PROTOCOL_VIOLATION, RFC 9221 §3), and
  after its EncryptedExtensions no 0-RTT packet goes, as 0-RTT may only use the
  remembered limits. Before, the client went on in 0-RTT under the new, larger limits.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.tls.tickets import SessionTicketCache
from quicflow.transport import early_data
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.errors import INTERNAL_ERROR, PROTOCOL_VIOLATION
from quicflow.transport.events import ConnectionTerminated, SessionTicketReceived
from quicflow.wire import frame_types as FT
from quicflow.wire.frames import encode_frame
from quicflow.wire.packet import (
    HANDSHAKE,
    INITIAL,
    QUIC_V1,
    build_long_header,
)
from tests.support.memory_pair import _CERT, SERVER_ADDR, MemoryPair
from tests.test_early_data_memory import zero_rtt_packets


def _resumed(**limits: Any) -> MemoryPair:
    """A pair whose client holds a ticket of a first connection (server limits
    ``limits``), ALPN "perf" or "other"."""
    cert, key = _CERT
    server = Configuration(alpn_protocols=["perf", "other"], certificate_chain=[cert],
                           private_key=key, versions=[QUIC_V1], **limits)
    client = Configuration(alpn_protocols=["perf", "other"], verify_peer=False,
                           versions=[QUIC_V1], max_datagram_frame_size=1200,
                           session_ticket_cache=SessionTicketCache())
    pair = MemoryPair(client_config=client, server_config=server)
    tickets: list[SessionTicketReceived] = []

    def have_ticket() -> bool:
        for event in pair.client.pop_events():
            if isinstance(event, SessionTicketReceived):
                pair.client_ep.store_ticket(pair.client, event.ticket)
                tickets.append(event)
        return bool(tickets)

    pair.run(have_ticket)
    return pair


def _second(pair: MemoryPair, streams: int, size: int) -> tuple[Connection, Connection]:
    """The resumed connection: ``streams`` streams of ``size`` bytes written before the
    handshake (0-RTT), run for 0.3 s."""
    client = pair.add_client()
    for _ in range(streams):
        sid = client.open_stream()
        client.send_stream_data(sid, os.urandom(size), end_stream=True)
    old = set(pair.server_conns)
    for _ in range(300):
        pair.step()
        pair.now += 0.001
    (server,) = [c for c in pair.server_conns if c not in old]
    return client, server


@pytest.mark.parametrize("lowered, streams, size", [({"max_data": 8192}, 1, 30_000),
                                                     ({"max_streams_bidi": 2}, 6, 100)])
def test_rejected_0rtt_that_no_longer_fits_closes_the_client(
        lowered: dict[str, int], streams: int, size: int) -> None:
    pair = _resumed()
    pair.server.configuration = dataclasses.replace(pair.server.configuration, **lowered)
    client, server = _second(pair, streams, size)
    assert client.early_data_attempted and not client.early_data_accepted
    assert client.close_error is not None and client.close_error[0] == INTERNAL_ERROR
    assert "0-RTT rejected" in client.close_error[2]
    assert server.close_error is None, "the server saw its limits broken"
    ends = [e for e in server.pop_events() if isinstance(e, ConnectionTerminated)]
    assert ends and ends[0].by_peer and ends[0].error_code == INTERNAL_ERROR


def test_rejected_0rtt_for_another_protocol_reaches_no_application() -> None:
    pair = _resumed()
    pair.server.configuration = dataclasses.replace(pair.server.configuration,
                                                    alpn_protocols=["other"])
    client, server = _second(pair, 1, 50)
    assert client.early_data_attempted and not client.early_data_accepted
    assert client.close_error is not None and "ALPN" in client.close_error[2]
    assert not server.read_stream(0), "bytes written for 'perf' reached 'other'"


def test_rejected_0rtt_that_fits_is_sent_again() -> None:
    pair = _resumed()
    pair.server.configuration = dataclasses.replace(pair.server.configuration,
                                                    max_data=1 << 21)  # (lower: rejected)
    client, server = _second(pair, 1, 30_000)
    assert client.early_data_attempted and not client.early_data_accepted
    assert client.close_error is None and server.close_error is None
    assert len(server.read_stream(0, 1 << 20)) == 30_000


def test_accepted_0rtt_with_a_lower_datagram_limit_is_a_protocol_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pair = _resumed(max_datagram_frame_size=1200)
    pair.server.configuration = dataclasses.replace(pair.server.configuration,
                                                    max_datagram_frame_size=0)
    monkeypatch.setattr(early_data, "REMEMBERED", ())  # a server that accepts anyway
    client, _ = _second(pair, 1, 10)
    assert client.early_data_accepted
    assert client.close_error is not None and client.close_error[0] == PROTOCOL_VIOLATION


def _sealed(conn: Connection, epoch: Epoch, payload: bytes, pad_to: int = 0) -> bytes:
    """A long-header packet of ``conn`` carrying ``payload``."""
    space = conn.spaces[0 if epoch == Epoch.INITIAL else 1]
    pn = space.next_pn
    space.next_pn += 1
    ptype = INITIAL if epoch == Epoch.INITIAL else HANDSHAKE

    def header(n: int) -> bytes:
        return build_long_header(ptype, QUIC_V1, conn.peer_cid, conn.initial_scid, b"",
                                 4 + n + 16, pn, 4)

    body = bytes(payload)
    if pad_to:
        body += bytes(max(0, pad_to - len(header(len(body))) - len(body) - 16))
    protector = conn.send_protectors[epoch]
    assert protector is not None
    return protector.seal(header(len(body)), body, pn)


def _crypto(data: bytes) -> bytes:
    out = bytearray()
    encode_frame(FT.Crypto(0, data), out)
    return bytes(out)


def test_no_0rtt_after_encrypted_extensions_raised_the_limits() -> None:
    """The server's flight split: its EncryptedExtensions (raising every limit to 1 MiB,
    0-RTT accepted) before its Finished. Until the 1-RTT keys come the client sends no
    more 0-RTT: its stream bytes stay at the remembered 4096."""
    pair = _resumed(max_data=4096, max_stream_data=4096)
    pair.server.configuration = dataclasses.replace(pair.server.configuration,
                                                    max_data=1 << 20, max_stream_data=1 << 20)
    client = pair.add_client()
    client.send_stream_data(client.open_stream(), os.urandom(100_000), end_stream=True)
    old = set(pair.server_conns)
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    (server,) = [c for c in pair.server_conns if c not in old]
    assert server.early_data_accepted
    remembered = client.flow.data_sent
    assert remembered == 4096
    initial, handshake = server.spaces[0].crypto_send, server.spaces[1].crypto_send
    assert initial is not None and handshake is not None
    hello = initial._slice(0, initial.write_offset)
    flight = handshake._slice(0, handshake.write_offset)
    assert flight[0] == 8  # EncryptedExtensions first, the Finished after it
    ee = flight[:4 + int.from_bytes(flight[1:4], "big")]
    pair.now += 0.01
    pair.client_ep.receive(_sealed(server, Epoch.INITIAL, _crypto(hello), pad_to=1200),
                           SERVER_ADDR, pair.now)
    pair.client_ep.receive(_sealed(server, Epoch.HANDSHAKE, _crypto(ee)), SERVER_ADDR, pair.now)
    assert not client.one_rtt_ready and client.early_data_accepted
    out = pair.client_ep.datagrams_to_send(client, pair.now)
    assert zero_rtt_packets(out) == 0 and client.flow.data_sent == remembered
