"""Cross-host transfer: sealed snapshots over TCP inside mutually authenticated TLS.

Both ends present a certificate from a CA they both trust (stdlib ``ssl``, TLS 1.3,
``CERT_REQUIRED`` on both sides): a peer without one, or with one from another CA, fails
the TLS handshake and is counted as refused. The exchange, after the handshake:

1. receiver -> sender: ``HELLO`` and a fresh 32-byte snapshot key (the snapshots are
   sealed as well, with a key only the receiver knows);
2. sender -> receiver: a header (JSON), each sealed snapshot as soon as it is captured
   (length-prefixed), an end mark and a trailer (JSON: e.g. the replay record);
3. receiver -> sender: an acknowledgment (JSON, e.g. how many were restored).

A move per connection behind a CID-routing balancer (``quicflow.aio.moving``) adds:
after the header the sender asks a question (JSON) and the receiver answers it (JSON:
the CIDs it issues for the moved connections) before any snapshot; the datagrams that
still reach the sender for connections already sent (each: address family, client
address and port, the datagram) travel between the snapshots (a frame after the
``_FWD`` mark), and after the acknowledgment the channel stays open for a while for
more of them (plain frames), until an end mark.

This module moves bytes only; ``quicflow.aio.moving`` captures and restores.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

HELLO = b"QFMOVE1\n"
KEY_LEN = 32
MAX_JSON = 64 << 20
MAX_SNAPSHOT = 1 << 30
_LEN = struct.Struct("!I")
_END = 0xFFFFFFFF


class TransferError(Exception):
    """The transfer failed or was refused."""


def _context(purpose: ssl.Purpose, cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert, key)
    return ctx


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """The receiving side: requires a client certificate issued by ``ca``."""
    return _context(ssl.Purpose.CLIENT_AUTH, cert, key, ca)


def client_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """The sending side: presents ``cert`` and checks the receiver's against ``ca``."""
    return _context(ssl.Purpose.SERVER_AUTH, cert, key, ca)


async def _read_frame(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """One length-prefixed frame; None for the end mark."""
    (length,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if length == _END:
        return None
    if length > limit:
        raise TransferError(f"frame of {length} bytes is over the limit")
    return await reader.readexactly(length)


def _frame(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


#: Bytes the sender may have unsent in the channel when a datagram is to be forwarded
#: (beyond, it is not forwarded: QUIC's loss recovery sends what it carried again).
MAX_FORWARD_BUFFER = 4 << 20
_FWD = 0xFFFFFFFE  # length value: a forwarded datagram's frame follows (between snapshots)
MAX_DATAGRAM = 65535


def encode_forwarded(data: bytes, address: tuple[Any, ...]) -> bytes:
    """One forwarded datagram: family (4 or 6), the client's address and port, data."""
    host, port = str(address[0]), int(address[1])
    if ":" in host:
        head = b"\x06" + socket.inet_pton(socket.AF_INET6, host)
    else:
        head = b"\x04" + socket.inet_pton(socket.AF_INET, host)
    return _frame(head + port.to_bytes(2, "big") + bytes(data))


def decode_forwarded(frame: bytes) -> tuple[bytes, tuple[Any, ...]]:
    """The datagram and client address of an ``encode_forwarded`` frame (ValueError)."""
    if frame[:1] == b"\x04":
        size, family = 4, socket.AF_INET
    elif frame[:1] == b"\x06":
        size, family = 16, socket.AF_INET6
    else:
        raise ValueError("bad forwarded datagram")
    if len(frame) < 3 + size:
        raise ValueError("forwarded datagram truncated")
    host = socket.inet_ntop(family, frame[1 : 1 + size])
    port = int.from_bytes(frame[1 + size : 3 + size], "big")
    address: tuple[Any, ...] = (host, port) if size == 4 else (host, port, 0, 0)
    return frame[3 + size :], address


class Sender:
    """The sending side of one transfer (``open_sender``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 key: bytes) -> None:
        self.reader, self.writer, self.key = reader, writer, key
        self.sent = 0
        self.forwarding = False  # after the trailer of a keep_open finish: plain frames
        self.closed = False
        self.forwarded = 0
        self.forward_dropped = 0

    async def ask(self, question: dict[str, Any]) -> dict[str, Any]:
        """Send ``question`` (JSON) and return the receiver's answer (before snapshots)."""
        try:
            self.writer.write(_frame(json.dumps(question).encode()))
            await self.writer.drain()
            raw = await _read_frame(self.reader, MAX_JSON)
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise TransferError(f"transfer failed: {exc}") from exc
        answer = json.loads(raw or b"null")
        if type(answer) is not dict:
            raise TransferError("the receiver's answer is not a JSON object")
        return answer

    def forward(self, data: bytes, address: tuple[Any, ...]) -> bool:
        """Pass a datagram that reached us for a connection already sent on to the
        receiver, at once (between the snapshots, or after the acknowledgment); False
        when the channel is closed or too far behind (bounded: QUIC resends)."""
        if self.closed or self.writer.is_closing():
            self.forward_dropped += 1
            return False
        if self.writer.transport.get_write_buffer_size() > MAX_FORWARD_BUFFER:
            self.forward_dropped += 1
            return False
        frame = encode_forwarded(data, address)
        self.writer.write(frame if self.forwarding else _LEN.pack(_FWD) + frame)
        self.forwarded += 1
        return True

    def close(self) -> None:
        """End forwarding (end mark) and close the channel."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.forwarding:
                self.writer.write(_LEN.pack(_END))
        except OSError:
            pass
        self.writer.close()

    async def header(self, header: dict[str, Any]) -> None:
        self.writer.write(_frame(json.dumps(header).encode()))
        await self.writer.drain()

    async def snapshot(self, blob: bytes) -> None:
        self.queue_snapshot(blob)
        await self.writer.drain()

    def queue_snapshot(self, blob: bytes) -> None:
        """Write a snapshot into the channel now (``drain`` to wait for it to leave)."""
        self.writer.write(_frame(blob))
        self.sent += 1

    async def drain(self) -> None:
        await self.writer.drain()

    async def finish(self, trailer: dict[str, Any], *,
                     keep_open: bool = False) -> dict[str, Any]:
        """End mark and trailer; returns the receiver's acknowledgment. With
        ``keep_open`` the channel then forwards datagrams (``forward``) until ``close``."""
        try:
            self.writer.write(_LEN.pack(_END) + _frame(json.dumps(trailer).encode()))
            # what is forwarded from now on follows the trailer: plain frames, read after
            # the acknowledgment (Session.forwarded)
            self.forwarding = keep_open
            await self.writer.drain()
            answer = await _read_frame(self.reader, MAX_JSON)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.close()
            raise TransferError(f"transfer failed: {exc}") from exc
        if answer is None:
            self.close()
            raise TransferError("receiver sent no acknowledgment")
        result: dict[str, Any] = json.loads(answer)
        if not keep_open:
            self.close()
        return result


async def open_sender(host: str, port: int, context: ssl.SSLContext,
                      server_name: str | None = None, timeout: float = 30.0) -> Sender:
    """Connect to a receiver and complete the mutual TLS handshake and the hello."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_name or host), timeout)
        hello = await asyncio.wait_for(reader.readexactly(len(HELLO) + KEY_LEN), timeout)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as exc:
        raise TransferError(f"cannot open a transfer to {host}:{port}: {exc}") from exc
    if not hello.startswith(HELLO):
        writer.close()
        raise TransferError("the peer is not a quicflow migration receiver")
    return Sender(reader, writer, hello[len(HELLO):])


class Session:
    """The receiving side of one transfer, given to the ``serve_receiver`` handler."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 key: bytes, header: dict[str, Any]) -> None:
        self.reader, self.writer, self.key, self.header = reader, writer, key, header
        self.trailer: dict[str, Any] | None = None
        self.peer = writer.get_extra_info("peercert")
        #: called with each datagram forwarded between the snapshots (``Sender.forward``
        #: before the acknowledgment); None: such datagrams are refused
        self.on_forwarded: Callable[[bytes, tuple[Any, ...]], None] | None = None

    async def snapshots(self) -> AsyncIterator[bytes]:
        reader = self.reader
        while True:
            (length,) = _LEN.unpack(await reader.readexactly(_LEN.size))
            if length == _END:
                raw = await _read_frame(reader, MAX_JSON)
                self.trailer = json.loads(raw or b"{}")
                return
            if length == _FWD:
                frame = await _read_frame(reader, MAX_DATAGRAM + 32)
                if frame is None or self.on_forwarded is None:
                    raise TransferError("unexpected forwarded datagram")
                try:
                    data, address = decode_forwarded(frame)
                except ValueError as exc:
                    raise TransferError(str(exc)) from exc
                self.on_forwarded(data, address)
                continue
            if length > MAX_SNAPSHOT:
                raise TransferError(f"frame of {length} bytes is over the limit")
            yield await reader.readexactly(length)

    async def question(self) -> Any:
        """The sender's question (``Sender.ask``), decoded JSON."""
        raw = await _read_frame(self.reader, MAX_JSON)
        return json.loads(raw or b"null")

    async def answer(self, doc: dict[str, Any]) -> None:
        self.writer.write(_frame(json.dumps(doc).encode()))
        await self.writer.drain()

    async def acknowledge(self, result: dict[str, Any], *, keep_open: bool = False) -> None:
        self.writer.write(_frame(json.dumps(result).encode()))
        await self.writer.drain()
        if not keep_open:
            self.writer.close()

    async def forwarded(self) -> AsyncIterator[tuple[bytes, tuple[Any, ...]]]:
        """The datagrams the sender forwards after a ``keep_open`` acknowledgment, until
        its end mark or the channel closes."""
        while True:
            try:
                frame = await _read_frame(self.reader, MAX_DATAGRAM + 32)
            except (OSError, asyncio.IncompleteReadError, TransferError):
                return
            if frame is None:
                return
            try:
                yield decode_forwarded(frame)
            except ValueError:
                return


class Receiver:
    """A TLS server accepting transfers; ``refused`` counts peers that failed the
    handshake (no certificate, another CA) or the exchange."""

    def __init__(self, handler: Callable[[Session], Awaitable[None]]) -> None:
        self.handler = handler
        self.refused = 0
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> tuple[Any, ...]:
        assert self.server is not None
        return tuple(self.server.sockets[0].getsockname())

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            key = os.urandom(KEY_LEN)
            writer.write(HELLO + key)
            await writer.drain()
            raw = await asyncio.wait_for(_read_frame(reader, MAX_JSON), 30)
            header = json.loads(raw or b"{}")
        except (OSError, ValueError, ssl.SSLError, asyncio.IncompleteReadError,
                TimeoutError, TransferError):
            self.refused += 1
            writer.close()
            return
        self.accepted += 1
        self._open.add(writer)
        try:
            await self.handler(Session(reader, writer, key, header))
        except asyncio.CancelledError:
            # the server is shutting down with a session still open (a forwarding
            # window): end quietly, asyncio would log a cancelled connection task
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    def close(self) -> None:
        """Stop accepting, and end the sessions still open (e.g. forwarding)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self._open):
            writer.close()


def _count_refused(receiver: Receiver) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]],
                                                    None]:
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), ssl.SSLError):
            receiver.refused += 1  # a TLS handshake that failed (unauthenticated peer)
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    return handler


async def serve_receiver(host: str, port: int, context: ssl.SSLContext,
                         handler: Callable[[Session], Awaitable[None]]) -> Receiver:
    """Listen for transfers on ``host:port`` (TLS with client certificates)."""
    receiver = Receiver(handler)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_count_refused(receiver))
    receiver.server = await asyncio.start_server(
        receiver._on_connect, host, port, ssl=context, ssl_handshake_timeout=10)
    return receiver


__all__ = ["Receiver", "Sender", "Session", "TransferError", "client_context",
           "open_sender", "serve_receiver", "server_context"]
