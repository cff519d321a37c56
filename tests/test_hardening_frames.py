"""Every frame type where it is forbidden, and frames with extreme or invalid values, in
valid protected packets from a hostile client: the server closes with the RFC 9000 error
code, and names the offending frame type (issue 10, the campaign's first bullet)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.errors import (
    CRYPTO_BUFFER_EXCEEDED,
    FINAL_SIZE_ERROR,
    FRAME_ENCODING_ERROR,
    PROTOCOL_VIOLATION,
    STREAM_STATE_ERROR,
)

from .support.forge import forge, raw
from .support.memory_pair import SERVER_ADDR, MemoryPair

TOKEN = bytes(16)
CID = b"\x08" + bytes(range(8))

# every frame type that RFC 9000 §12.4 (Table 3) forbids in Initial and Handshake packets,
# each well-formed
FORBIDDEN_IN_HANDSHAKE: dict[str, bytes] = {
    "RESET_STREAM": raw(0x04, 0, 1, 10),
    "STOP_SENDING": raw(0x05, 0, 1),
    "NEW_TOKEN": raw(0x07, 4, b"abcd"),
    "STREAM": raw(0x0A, 0, 3, b"abc"),
    "MAX_DATA": raw(0x10, 1 << 20),
    "MAX_STREAM_DATA": raw(0x11, 0, 1 << 20),
    "MAX_STREAMS": raw(0x12, 10),
    "DATA_BLOCKED": raw(0x14, 10),
    "STREAM_DATA_BLOCKED": raw(0x15, 0, 10),
    "STREAMS_BLOCKED": raw(0x16, 10),
    "NEW_CONNECTION_ID": raw(0x18, 1, 0, CID, TOKEN),
    "RETIRE_CONNECTION_ID": raw(0x19, 0),
    "PATH_CHALLENGE": raw(0x1A, bytes(8)),
    "PATH_RESPONSE": raw(0x1B, bytes(8)),
    "CONNECTION_CLOSE (application)": raw(0x1D, 0, 0),
    "HANDSHAKE_DONE": raw(0x1E),
}


def _closed_with(server: Connection) -> tuple[int, int | None]:
    assert server.close_error is not None, "the server did not close"
    code, frame_type, _, application = server.close_error
    assert not application
    return code, frame_type


@pytest.mark.parametrize("name", sorted(FORBIDDEN_IN_HANDSHAKE))
def test_frame_forbidden_in_initial(name: str) -> None:
    pair = MemoryPair()
    client = pair.client
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    server = pair.server_conns[0]
    pair.server.receive(forge(client, Epoch.INITIAL, FORBIDDEN_IN_HANDSHAKE[name] + raw(0x01),
                              pad_to=1200), pair.client_addr, pair.now)
    code, frame_type = _closed_with(server)
    assert code == PROTOCOL_VIOLATION
    assert frame_type == FORBIDDEN_IN_HANDSHAKE[name][0]


@pytest.mark.parametrize("name", sorted(FORBIDDEN_IN_HANDSHAKE))
def test_frame_forbidden_in_handshake(name: str) -> None:
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_complete)
    server = pair.server_conns[0]
    assert not server.handshake_complete  # its Finished is not sent yet
    pair.server.receive(forge(pair.client, Epoch.HANDSHAKE, FORBIDDEN_IN_HANDSHAKE[name]),
                        pair.client_addr, pair.now)
    code, frame_type = _closed_with(server)
    assert code == PROTOCOL_VIOLATION
    assert frame_type == FORBIDDEN_IN_HANDSHAKE[name][0]


def _server_sid(n: int, uni: bool) -> int:
    return (n << 2) | (3 if uni else 1)


def _client_sid(n: int, uni: bool) -> int:
    return (n << 2) | (2 if uni else 0)


# (name, payload, expected error, expected frame type or None to skip that check)
ONE_RTT_CASES: list[tuple[str, Callable[[Connection], bytes], int, int | None]] = [
    ("MAX_STREAMS above 2^60", lambda s: raw(0x12, (1 << 60) + 1), FRAME_ENCODING_ERROR, 0x12),
    ("STREAMS_BLOCKED above 2^60", lambda s: raw(0x17, (1 << 60) + 1), FRAME_ENCODING_ERROR,
     0x17),
    ("STREAM offset+length above 2^62-1",
     lambda s: raw(0x0E, 0, (1 << 62) - 2, 3, b"abc"), FRAME_ENCODING_ERROR, 0x0E),
    ("STREAM length past the packet", lambda s: raw(0x0A, 0, 500, b"abc"),
     FRAME_ENCODING_ERROR, 0x0A),
    ("STREAM on the server's send-only stream", lambda s: raw(0x0A, _server_sid(0, True), 1,
                                                              b"x"), STREAM_STATE_ERROR, 0x0A),
    ("STREAM on a server stream never opened", lambda s: raw(0x0A, _server_sid(5, False), 1,
                                                             b"x"), STREAM_STATE_ERROR, 0x0A),
    ("RESET_STREAM on the server's send-only stream",
     lambda s: raw(0x04, _server_sid(0, True), 1, 0), STREAM_STATE_ERROR, 0x04),
    ("STOP_SENDING on a stream the server only receives",
     lambda s: raw(0x05, _client_sid(0, True), 1), STREAM_STATE_ERROR, 0x05),
    ("MAX_STREAM_DATA on a stream the server only receives",
     lambda s: raw(0x11, _client_sid(0, True), 1 << 20), STREAM_STATE_ERROR, 0x11),
    ("STREAM_DATA_BLOCKED on the server's send-only stream",
     lambda s: raw(0x15, _server_sid(0, True), 10), STREAM_STATE_ERROR, 0x15),
    ("STREAM past its final size", lambda s: raw(0x0B, 0, 3, b"abc") + raw(0x0E, 0, 10, 1, b"x"),
     FINAL_SIZE_ERROR, 0x0E),
    ("RESET_STREAM below the data received",
     lambda s: raw(0x0A, 0, 5, b"hello") + raw(0x04, 0, 1, 2), FINAL_SIZE_ERROR, 0x04),
    ("NEW_CONNECTION_ID with an empty CID", lambda s: raw(0x18, 9, 0, b"\x00", TOKEN),
     FRAME_ENCODING_ERROR, 0x18),
    ("NEW_CONNECTION_ID with a 21-byte CID", lambda s: raw(0x18, 9, 0, b"\x15" + bytes(21),
                                                            TOKEN), FRAME_ENCODING_ERROR, 0x18),
    ("NEW_CONNECTION_ID retiring beyond itself", lambda s: raw(0x18, 9, 10, CID, TOKEN),
     FRAME_ENCODING_ERROR, 0x18),
    ("RETIRE_CONNECTION_ID never issued", lambda s: raw(0x19, 1 << 40), PROTOCOL_VIOLATION,
     0x19),
    ("HANDSHAKE_DONE from a client", lambda s: raw(0x1E), PROTOCOL_VIOLATION, 0x1E),
    ("NEW_TOKEN from a client", lambda s: raw(0x07, 4, b"abcd"), PROTOCOL_VIOLATION, 0x07),
    ("NEW_TOKEN empty", lambda s: raw(0x07, 0), FRAME_ENCODING_ERROR, 0x07),
    ("ACK of a packet never sent", lambda s: raw(0x02, 1 << 40, 0, 0, 0), PROTOCOL_VIOLATION,
     0x02),
    ("ACK range below zero", lambda s: raw(0x02, 5, 0, 0, 10), FRAME_ENCODING_ERROR, 0x02),
    ("CRYPTO far beyond the buffer", lambda s: raw(0x06, 1 << 40, 3, b"abc"),
     CRYPTO_BUFFER_EXCEEDED, 0x06),
    ("unknown frame type", lambda s: raw(0x40), FRAME_ENCODING_ERROR, None),
    ("PATH_CHALLENGE truncated", lambda s: raw(0x1A, bytes(3)), FRAME_ENCODING_ERROR, 0x1A),
]


@pytest.mark.parametrize("name", [case[0] for case in ONE_RTT_CASES])
def test_one_rtt_frame_with_invalid_values(name: str) -> None:
    _, make, code, frame_type = next(c for c in ONE_RTT_CASES if c[0] == name)
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    server = pair.server_conns[0]
    pair.server.receive(forge(pair.client, Epoch.ONE_RTT, make(server)), pair.client_addr,
                        pair.now)
    got_code, got_type = _closed_with(server)
    assert got_code == code
    if frame_type is not None:
        assert got_type == frame_type
    # and the client hears it (in a 1-RTT CONNECTION_CLOSE with the same code)
    events: list[object] = []
    from quicflow.transport.events import ConnectionTerminated

    def heard() -> bool:
        events.extend(pair.client.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    pair.run(heard, max_time=pair.now + 10)
    term = next(e for e in events if isinstance(e, ConnectionTerminated))
    assert term.error_code == code and term.by_peer


def test_retire_connection_id_to_a_zero_length_cid_is_a_protocol_violation() -> None:
    """RFC 9000 §19.16: an endpoint that provides a zero-length connection ID closes with
    PROTOCOL_VIOLATION on RETIRE_CONNECTION_ID (before, a client with zero-length CIDs
    replaced its one empty CID with another, sequence 1)."""
    from quicflow.transport.config import Configuration
    from quicflow.transport.events import ConnectionTerminated

    config = Configuration(alpn_protocols=["perf"], verify_peer=False, connection_id_length=0)
    pair = MemoryPair(client_config=config)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns)
             and pair.server_conns[0].handshake_confirmed)
    client, server = pair.client, pair.server_conns[0]
    assert client.initial_scid == b"" and server.peer_cid == b""
    pair.client_ep.receive(forge(server, Epoch.ONE_RTT, raw(0x19, 0)), SERVER_ADDR,
                           pair.now)
    assert client.close_error is not None
    assert client.close_error[:2] == (PROTOCOL_VIOLATION, 0x19)
    events: list[object] = []

    def heard() -> bool:
        events.extend(server.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    pair.run(heard, max_time=pair.now + 10)
    term = next(e for e in events if isinstance(e, ConnectionTerminated))
    assert term.error_code == PROTOCOL_VIOLATION and term.by_peer
