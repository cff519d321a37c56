"""A network path as one plain value (RFC 9000 §9): what a snapshot carries of it.

The connection keeps the fields of its current path flat (they are read on every packet);
:func:`current_path` gathers them into one :class:`Path` for a snapshot and
:func:`apply_path` puts a captured one back. While a new peer address is being validated
the connection also keeps the path it came from (``Connection.previous_path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .congestion import PACING_MULTIPLIER

if TYPE_CHECKING:
    from .connection import Connection

Address = tuple[Any, ...]


@dataclass(slots=True, eq=False)
class Path:
    """One path between us and the peer."""

    peer_address: Address
    local_address: Address | None = None  # None: not known to the transport
    validated: bool = False
    challenge: bytes = b""  # PATH_CHALLENGE data sent on this path, not yet answered
    challenge_pending: bool = False  # the challenge is to be sent (again)
    bytes_received_unvalidated: int = 0  # anti-amplification counters (3x limit)
    bytes_sent_unvalidated: int = 0
    max_datagram_size: int = 1200
    mtu_cap: int = 65527  # largest UDP payload the path was seen to carry
    ecn_state: int = 0  # ECN_TESTING / ECN_CAPABLE / ECN_FAILED


#: What a :class:`PathProbe` is for.
PROBE_MIGRATE = 1  # the client moves to a new local address or port (RFC 9000 §9.2)
PROBE_PREFERRED = 2  # the client moves to the server's preferred address (RFC 9000 §9.6)


@dataclass(slots=True, eq=False)
class PathProbe:
    """(client) A new path being validated before the connection moves to it.

    Packets on it carry a peer connection ID never used on another path (``cid``, of
    sequence ``cid_seq``), PATH_CHALLENGE and padding to 1200 bytes; the connection keeps
    sending everything else on its current path until the PATH_RESPONSE arrives, then
    switches (``pathprobe.complete_probe``); without one by ``deadline`` it stays where it
    is (RFC 9000 §8.2.4, §9.6.1).
    """

    kind: int
    peer_address: Address
    cid: bytes
    cid_seq: int
    challenge: bytes
    started: float
    next_send: float
    deadline: float
    sends: int = 0


def current_path(conn: Connection, local_address: Address | None = None) -> Path:
    """The connection's current path as one value."""
    return Path(
        peer_address=tuple(conn.peer_address),
        local_address=None if local_address is None else tuple(local_address),
        validated=conn.address_validated,
        challenge=conn.path_challenge,
        challenge_pending=conn.path_challenge_pending,
        bytes_received_unvalidated=conn.bytes_received_unvalidated,
        bytes_sent_unvalidated=conn.bytes_sent_unvalidated,
        max_datagram_size=conn.max_datagram_size,
        mtu_cap=conn.path_mtu_cap,
        ecn_state=conn.ecn_state,
    )


def apply_path(conn: Connection, path: Path) -> None:
    """Make ``path`` the connection's current path (the inverse of :func:`current_path`)."""
    conn.peer_address = tuple(path.peer_address)
    conn.address_validated = path.validated
    conn.path_challenge = path.challenge
    conn.path_challenge_pending = path.challenge_pending
    conn.bytes_received_unvalidated = path.bytes_received_unvalidated
    conn.bytes_sent_unvalidated = path.bytes_sent_unvalidated
    conn.max_datagram_size = path.max_datagram_size
    conn.path_mtu_cap = path.mtu_cap
    conn.ecn_state = path.ecn_state
    conn.cc.max_datagram_size = path.max_datagram_size
    conn.pacer.max_datagram_size = path.max_datagram_size
    set_pacing(conn)


def is_loopback(address: Address) -> bool:
    """Whether ``address`` (numeric, as the datapath reports it) is a loopback address:
    127.0.0.0/8, ::1, or 127.0.0.0/8 mapped into IPv6. Anything else (a form not
    recognised included) is not."""
    host = address[0] if address else None
    if not isinstance(host, str):
        return False
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")


def set_pacing(conn: Connection) -> None:
    """Pace the connection's sends on its current path, or not (``Configuration.pacing``).

    Pacing (RFC 9002 §7.7) keeps bursts from overflowing a bottleneck's queue; a sender
    "with knowledge that the network path to the receiver can absorb larger bursts MAY
    use a higher limit". A loopback path has no network queue: the receiver's socket
    buffer is the only one, and the congestion window still bounds what is in flight
    (Linux TCP does not pace there either without the fq qdisc). With ``"auto"`` (the
    default) a connection whose peer is at a loopback address sends its window's worth
    as it opens; every other path is paced. Paced on loopback, 256 downloads on one
    host spread each window over an srtt that their own processing had stretched: many
    small bursts, and a receive round and an ACK for each (issue 11)."""
    mode = conn.configuration.pacing
    unpaced = mode == "off" or (mode == "auto" and is_loopback(conn.peer_address))
    conn.pacer.multiplier = 0.0 if unpaced else PACING_MULTIPLIER


#: The Connection fields a Path holds (kept out of the connection's own record in a
#: snapshot, so the Path is their one source there).
PATH_FIELDS = frozenset({
    "peer_address", "address_validated", "path_challenge", "path_challenge_pending",
    "bytes_received_unvalidated", "bytes_sent_unvalidated", "max_datagram_size",
    "path_mtu_cap", "ecn_state",
})
