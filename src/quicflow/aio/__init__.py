"""The asyncio face of quicflow: ``connect()``, ``serve()``, stream readers/writers."""

from ..transport.pathprobe import MigrationError
from .api import ClientEndpoint, QuicServer, client_endpoint, connect, serve
from .connection import QuicConnection
from .errors import ConnectionClosedError, QuicflowError, StreamResetError
from .streams import QuicStreamReader, QuicStreamWriter
from .workers import CidPlan, WorkerGroupServer

__all__ = [
    "CidPlan",
    "ClientEndpoint",
    "ConnectionClosedError",
    "MigrationError",
    "QuicConnection",
    "QuicServer",
    "QuicStreamReader",
    "QuicStreamWriter",
    "QuicflowError",
    "StreamResetError",
    "WorkerGroupServer",
    "client_endpoint",
    "connect",
    "serve",
]
