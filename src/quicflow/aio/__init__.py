"""The asyncio face of quicflow: ``connect()``, ``serve()``, stream readers/writers."""

from .api import QuicServer, connect, serve
from .connection import QuicConnection
from .errors import ConnectionClosedError, QuicflowError, StreamResetError
from .streams import QuicStreamReader, QuicStreamWriter
from .workers import CidPlan, WorkerGroupServer

__all__ = [
    "CidPlan",
    "ConnectionClosedError",
    "QuicConnection",
    "QuicServer",
    "QuicStreamReader",
    "QuicStreamWriter",
    "QuicflowError",
    "StreamResetError",
    "WorkerGroupServer",
    "connect",
    "serve",
]
