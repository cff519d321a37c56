"""Recognising a stateless reset on the client side (RFC 9000 §10.3.1).

A reset's first bytes are random, so it does not carry a connection ID we know: a packet
whose DCID matches no connection is compared (last 16 bytes) with the reset tokens of the
connections to the address it came from: the tokens of the CIDs each uses
(``receive.reset_token_matches``, RFC 9000 §10.3.1). Clients have few connections per
endpoint; the check costs a comparison or two per connection to that address.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..transport.connection import Connection
from ..transport.receive import _check_stateless_reset, reset_token_matches
from .stateless import MIN_RESET_SIZE

Address = tuple[Any, ...]


def match_reset(
    connections: Iterable[Connection], data: bytes, address: Address
) -> Connection | None:
    """The connection ``data`` is a stateless reset for (now terminated), or None."""
    if len(data) < MIN_RESET_SIZE:
        return None
    token = bytes(data[-16:])
    for conn in connections:
        if conn.terminated or conn.peer_address != address:
            continue
        if reset_token_matches(conn, token):
            _check_stateless_reset(conn, data)
            return conn
    return None
