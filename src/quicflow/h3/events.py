"""Events the HTTP/3 layer reports to the application (all plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class HeadersReceived:
    """A field section: the request/response head, or trailers (``trailers=True``)."""

    stream_id: int
    headers: Headers
    stream_ended: bool
    trailers: bool = False


@dataclass(slots=True)
class DataReceived:
    """Body bytes; ``stream_ended`` with the last piece (``data`` may be empty then)."""

    stream_id: int
    data: bytes
    stream_ended: bool


@dataclass(slots=True)
class StreamReset:
    """The peer reset its side of a request stream (e.g. H3_REQUEST_CANCELLED), or we
    did (``by_peer=False``) because the message was malformed."""

    stream_id: int
    error_code: int
    by_peer: bool = True


@dataclass(slots=True)
class StopSendingReceived:
    """The peer asked us to stop sending on a request stream (our side is reset)."""

    stream_id: int
    error_code: int


@dataclass(slots=True)
class GoawayReceived:
    """The peer is shutting down: requests on streams >= ``last_stream_id`` are not
    (and will not be) processed."""

    last_stream_id: int


@dataclass(slots=True)
class SettingsReceived:
    settings: dict[int, int] = field(default_factory=dict)


@dataclass(slots=True)
class DatagramReceived:
    """An HTTP/3 datagram (RFC 9297) for the request stream ``stream_id``."""

    stream_id: int
    data: bytes


H3Event = (
    HeadersReceived
    | DataReceived
    | StreamReset
    | StopSendingReceived
    | GoawayReceived
    | SettingsReceived
    | DatagramReceived
)
