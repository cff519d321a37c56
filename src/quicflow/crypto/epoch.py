"""Encryption levels (packet number spaces) of QUIC, RFC 9001 §4."""

from __future__ import annotations

from enum import IntEnum


class Epoch(IntEnum):
    """The four encryption levels; 0-RTT and 1-RTT share the application pn space."""

    INITIAL = 0
    ZERO_RTT = 1
    HANDSHAKE = 2
    ONE_RTT = 3
