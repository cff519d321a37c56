"""qlog files: one JSON-SEQ file (RFC 7464; ``.sqlog``) per connection.

``Configuration.qlog_dir`` (or the ``QLOGDIR`` environment variable, read by
``connect()``, ``client_endpoint()`` and ``serve()`` like ``SSLKEYLOGFILE``) names the
directory; each connection writes ``<ODCID hex>_<client|server>.sqlog`` there. The
sans-I/O core builds the records (``transport/qlog.py``); this module only serialises
and writes them: each record is RS (0x1E), one JSON text, LF. Records are buffered and
written in blocks of about 64 KiB; the file is created at the first write, so a
connection forgotten at once (a forged Initial) leaves no file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import IO, Any

from ..transport import qlog
from ..transport.connection import Connection

#: environment variable naming a directory for qlog files, as other QUIC stacks use it
QLOG_ENV = "QLOGDIR"
FLUSH_BYTES = 64 * 1024


class QlogFileWriter:
    """A :class:`quicflow.transport.qlog.QlogSink` writing one ``.sqlog`` file."""

    __slots__ = ("path", "_parts", "_size", "_file", "_dumps")

    def __init__(self, path: str) -> None:
        self.path = path
        self._parts: list[str] = []
        self._size = 0
        self._file: IO[str] | None = None
        self._dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

    def header(self, record: dict[str, Any]) -> None:
        self._add(record)

    def event(self, time: float, name: str, data: dict[str, Any]) -> None:
        self._add({"time": time, "name": name, "data": data})

    def _add(self, record: dict[str, Any]) -> None:
        text = "\x1e" + self._dumps(record) + "\n"
        self._parts.append(text)
        self._size += len(text)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._parts:
            return
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - kept open
        self._file.write("".join(self._parts))
        self._parts.clear()
        self._size = 0

    def close(self, keep: bool = True) -> None:
        if keep:
            self.flush()
        self._parts.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
            if not keep:
                os.unlink(self.path)


def qlog_from_environment(config: Any) -> None:
    """Without an explicit ``qlog_dir``, write qlog files to ``$QLOGDIR`` when it is set."""
    if config.qlog_dir is None:
        config.qlog_dir = os.environ.get(QLOG_ENV) or None


def file_factory(
    directory: str, local_address: tuple[Any, ...] | None
) -> Callable[[Connection, float], None]:
    """What an endpoint calls for each new connection: give it a trace writing to a file
    in ``directory`` (created if missing)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the qlog directory ({e.strerror})",
                      directory) from None
    offset = time.time() - time.monotonic()

    def attach(conn: Connection, now: float) -> None:
        role = "client" if conn.is_client else "server"
        path = os.path.join(directory, f"{conn.original_dcid.hex()}_{role}.sqlog")
        qlog.start(conn, QlogFileWriter(path), now, wall_time_ms=(now + offset) * 1000.0,
                   local_address=local_address)

    return attach
