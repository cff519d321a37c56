"""HTTP/3 (RFC 9114) with QPACK (RFC 9204, through the optional ``pylsqpack``:
``pip install 'quicflow[h3]'``), extended CONNECT (RFC 9220) and HTTP/3 datagrams
(RFC 9297).

- :class:`quicflow.h3.connection.H3Connection`: the sans-I/O layer over a transport
  ``Connection`` (below ``quicflow.aio`` in the import order).
- ``quicflow.h3.connect`` / ``quicflow.h3.serve`` and the classes of
  :mod:`quicflow.h3.aio`: the asyncio face, loaded lazily on first use.
"""

from __future__ import annotations

from typing import Any

from .errors import H3Error, H3StreamError
from .events import (
    DatagramReceived,
    DataReceived,
    GoawayReceived,
    H3Event,
    HeadersReceived,
    SettingsReceived,
    StopSendingReceived,
    StreamReset,
)

_AIO_NAMES = frozenset(
    {"connect", "serve", "H3Client", "H3Server", "H3Stream", "H3QuicConnection",
     "RequestRefused"}
)


def __getattr__(name: str) -> Any:
    if name in _AIO_NAMES:
        from . import aio

        return getattr(aio, name)
    if name == "H3Connection":
        from .connection import H3Connection

        return H3Connection
    raise AttributeError(f"module 'quicflow.h3' has no attribute {name!r}")


__all__ = [
    "DataReceived",
    "DatagramReceived",
    "GoawayReceived",
    "H3Error",
    "H3Event",
    "H3StreamError",
    "HeadersReceived",
    "SettingsReceived",
    "StopSendingReceived",
    "StreamReset",
]
