"""asyncio-style stream reader and writer over one QUIC stream."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..transport.connection import StreamLimitReached
from .errors import ConnectionClosedError, StreamResetError

if TYPE_CHECKING:
    from .connection import QuicConnection

#: drain() waits while more than this many bytes are buffered on the stream
WRITE_HIGH_WATER = 4 << 20


class QuicStreamReader:
    """Reads one stream, like :class:`asyncio.StreamReader`."""

    def __init__(self, connection: QuicConnection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._connection.raise_if_closed()
        self._waiter = self._connection.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_reset(self) -> None:
        conn = self._connection.conn
        stream = conn.streams.get(self.stream_id)
        if stream is not None and stream.recv is not None and stream.recv.reset_code is not None:
            raise StreamResetError(self.stream_id, stream.recv.reset_code)

    def at_eof(self) -> bool:
        return self._connection.conn.stream_at_eof(self.stream_id)

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all until the end with -1); b"" at the end of the stream."""
        if n == 0:
            return b""
        if n < 0:
            chunks: list[bytes] = []
            while True:
                chunk = await self.read(1 << 20)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        face = self._connection
        while True:
            # (a reader that drained the stream comes back at once and finds nothing:
            # it waits without a read; at 256 downloads, half the reads)
            if not face.conn.stream_waits(self.stream_id):
                self._check_reset()
                data = face.conn.read_stream(self.stream_id, n, face.loop.time())
                if data:
                    face.after_read()
                    return data
                if face.conn.stream_at_eof(self.stream_id):
                    self._check_reset()
                    face.after_read()  # (reading the end may free a stream slot)
                    return b""
            await self._wait()

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or :class:`asyncio.IncompleteReadError` at the end."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = await self.read(n - got)
            if not chunk:
                raise asyncio.IncompleteReadError(b"".join(parts), n)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def stop(self, error_code: int = 0) -> None:
        """Ask the peer to stop sending (STOP_SENDING)."""
        self._connection.conn.stop_sending(self.stream_id, error_code)
        self._connection.flush()


class QuicStreamWriter:
    """Writes one stream, like :class:`asyncio.StreamWriter`."""

    def __init__(self, connection: QuicConnection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self._waiter: asyncio.Future[None] | None = None
        #: drain() waits at a send gate (the connection's or the endpoint's buffer is
        #: full): the gate wakes it, not every acknowledgement of the stream
        self._gated = False
        self._closed = False

    @property
    def connection(self) -> QuicConnection:
        return self._connection

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check(self) -> None:
        self._connection.raise_if_closed()
        stream = self._connection.conn.streams.get(self.stream_id)
        if stream is not None and stream.send is not None and stream.send.reset_code is not None:
            raise StreamResetError(self.stream_id, stream.send.reset_code)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; call :meth:`drain` to wait for buffer space."""
        self._check()
        if data:
            face = self._connection
            face.conn.send_stream_data(self.stream_id, bytes(data))
            face.sync_send_buffer()
            face.flush()

    def writelines(self, lines: list[bytes]) -> None:
        self.write(b"".join(lines))

    def write_eof(self) -> None:
        """Send FIN: no more data on this stream."""
        self._check()
        self._connection.conn.send_stream_data(self.stream_id, b"", end_stream=True)
        self._connection.flush()

    def can_write_eof(self) -> bool:
        return True

    async def drain(self) -> None:
        """Wait until the stream's send buffer is below the high-water mark and the
        connection's and the endpoint's unacknowledged written bytes are within
        ``Configuration.send_buffer_per_connection`` / ``send_buffer_per_endpoint``."""
        face = self._connection
        while True:
            self._check()
            gate = None
            if face.conn.stream_buffered(self.stream_id) <= WRITE_HIGH_WATER:
                gate = face.send_buffer_full()
                if gate is None:
                    face.send_gate.pass_on()
                    face.runner.send_budget.gate.pass_on()
                    return
            self._waiter = waiter = face.loop.create_future()
            if gate is not None:
                gate.add(waiter)
                self._gated = True
            try:
                await waiter
            finally:
                self._waiter = None
                self._gated = False

    def take_back(self) -> int:
        """Withdraw the bytes written but not yet sent (a capture hook's tool: the
        snapshot then carries only what is in flight); returns the stream offset where
        writing must continue after the restore."""
        return self._connection.conn.take_back_unsent(self.stream_id)

    def reset(self, error_code: int = 0) -> None:
        """Abandon the stream (RESET_STREAM)."""
        self._connection.conn.reset_stream(self.stream_id, error_code)
        self._connection.sync_send_buffer()
        self._connection.flush()

    def close(self) -> None:
        """Finish the stream (FIN) if it was not finished yet."""
        if self._closed:
            return
        self._closed = True
        stream = self._connection.conn.streams.get(self.stream_id)
        if (
            stream is not None
            and stream.send is not None
            and not stream.send.fin_written
            and stream.send.reset_code is None
            and not self._connection.closed
        ):
            self.write_eof()

    def is_closing(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        """Wait until everything written was acknowledged by the peer."""
        face = self._connection
        while True:
            stream = face.conn.streams.get(self.stream_id)
            if stream is None or stream.send is None or stream.send.is_complete():
                return
            face.raise_if_closed()
            self._waiter = face.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


__all__ = ["QuicStreamReader", "QuicStreamWriter", "StreamLimitReached", "WRITE_HIGH_WATER",
           "ConnectionClosedError"]
