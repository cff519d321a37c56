"""Packet headers of received datagrams, parsed once per packet on the receive path.

``parse_header`` is ``wire.packet.parse_header``, with its common cases in C: a short
header, or a QUIC v1/v2 Initial, 0-RTT or Handshake header
(``quicflow.crypto._native.parse_header`` builds the same ``PacketHeader``). Anything
else — Version Negotiation, Retry, other versions, every malformed header — goes to the
reference, which returns it or raises ``WireError``: the result never depends on the
parser (tests/test_headers_native.py). ``QUICFLOW_ENGINE=python`` (or no extension) uses
the reference alone.
"""

from __future__ import annotations

from typing import Any

from ..crypto.extension import EXT, python_forced
from ..wire.packet import PacketHeader
from ..wire.packet import parse_header as reference_parse_header

#: the C parser, or None (not built, or the pure-Python code forced)
NATIVE_PARSE: Any = (
    getattr(EXT, "parse_header", None) if EXT is not None and not python_forced() else None
)


def _parse_header(data: bytes | bytearray | memoryview, pos: int,
                  short_dcid_len: int) -> PacketHeader:
    """``wire.packet.parse_header``: the header of the packet at ``data[pos]``."""
    hdr: PacketHeader | None = NATIVE_PARSE(data, pos, short_dcid_len, PacketHeader)
    if hdr is not None:
        return hdr
    return reference_parse_header(data, pos, short_dcid_len)


parse_header = reference_parse_header if NATIVE_PARSE is None else _parse_header

__all__ = ["NATIVE_PARSE", "parse_header"]
