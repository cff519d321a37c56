"""Events a connection reports to the layer above."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class HandshakeCompleted:
    """The handshake is complete; ``session_resumed``: a session ticket's PSK was used;
    ``early_data_accepted``: the server took the client's 0-RTT data."""

    alpn_protocol: str | None
    session_resumed: bool = False
    early_data_accepted: bool = False


@dataclass(slots=True)
class StreamOpened:
    """The peer opened a stream."""

    stream_id: int


@dataclass(slots=True)
class StreamReadable:
    """New bytes (or the end of the stream) can be read."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The peer reset its sending side (RESET_STREAM)."""

    stream_id: int
    error_code: int


@dataclass(slots=True)
class StopSendingReceived:
    """The peer asked us to stop sending (STOP_SENDING); our side was reset."""

    stream_id: int
    error_code: int


@dataclass(slots=True)
class StreamWritable:
    """Send buffer space or flow-control credit freed up on a stream."""

    stream_id: int


@dataclass(slots=True)
class StreamsAvailable:
    """The peer raised its stream limit: new local streams can be opened."""


@dataclass(slots=True)
class ConnectionTerminated:
    error_code: int
    frame_type: int | None
    reason: str
    by_peer: bool


@dataclass(slots=True)
class SessionTicketReceived:
    """(client) The server gave a session ticket (``quicflow.tls.tickets.SessionTicket``)
    to resume a later connection with (and send 0-RTT data in it)."""

    ticket: Any


@dataclass(slots=True)
class NewTokenReceived:
    """(client) The server gave a token (NEW_TOKEN) for a later connection to it."""

    token: bytes


@dataclass(slots=True)
class DatagramReceived:
    """A DATAGRAM frame arrived (RFC 9221)."""

    data: bytes




@dataclass(slots=True)
class PathMigrated:
    """(client) The connection moved to a new path after validating it: ``kind`` 1 a
    migration to a new local address or port, 2 the server's preferred address."""

    kind: int
    peer_address: tuple[Any, ...]


@dataclass(slots=True)
class PathProbeFailed:
    """(client) A new path was not validated in time; the connection stays where it was."""

    kind: int
    peer_address: tuple[Any, ...]
    reason: str


@dataclass(slots=True)
class PreferredAddressAvailable:
    """(client) The handshake is confirmed and the server offered a preferred address
    (RFC 9000 §9.6) in the family of its current one: probe it with
    ``pathprobe.start_probe(conn, now, PROBE_PREFERRED, address)`` from a socket that can
    reach it (the asyncio face does this by itself)."""

    address: tuple[Any, ...]


Event = (
    HandshakeCompleted
    | StreamOpened
    | StreamReadable
    | StreamReset
    | StopSendingReceived
    | StreamWritable
    | StreamsAvailable
    | ConnectionTerminated
    | NewTokenReceived
    | DatagramReceived
    | PathMigrated
    | PathProbeFailed
    | PreferredAddressAvailable
    | SessionTicketReceived
)
