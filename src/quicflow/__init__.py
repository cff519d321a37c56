"""quicflow: a QUIC (RFC 9000/9001/9002) transport for Python, built for scale."""

from .aio import (
    CidPlan,
    ClientEndpoint,
    ConnectionClosedError,
    MigrationError,
    QuicConnection,
    QuicflowError,
    QuicServer,
    QuicStreamReader,
    QuicStreamWriter,
    StreamResetError,
    WorkerGroupServer,
    client_endpoint,
    connect,
    serve,
)
from .transport.config import Configuration

__version__ = "0.1.0"

__all__ = [
    "CidPlan",
    "ClientEndpoint",
    "Configuration",
    "ConnectionClosedError",
    "MigrationError",
    "QuicConnection",
    "QuicServer",
    "QuicStreamReader",
    "QuicStreamWriter",
    "QuicflowError",
    "StreamResetError",
    "WorkerGroupServer",
    "__version__",
    "client_endpoint",
    "connect",
    "serve",
]
