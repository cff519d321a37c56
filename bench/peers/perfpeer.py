"""A perf (ALPN ``perf``) server and client for aioquic-shaped libraries: aioquic and qh3.

Shared by ``aioquic_perf.py`` and ``qh3_perf.py``, which only say which library to load.
Both libraries expose the same asyncio API (``<lib>.asyncio.serve``/``connect``,
``QuicConnectionProtocol``, ``<lib>.quic.configuration.QuicConfiguration``,
``<lib>.quic.events``), so one implementation drives both.

The perf protocol (draft-banks-quic-performance): the client opens a bidirectional stream,
sends the response size it wants as an 8-byte big-endian integer and FIN; the server reads
to FIN and answers with that many bytes and FIN.

Both ends work at the event level (no asyncio StreamReader/StreamWriter in the data path),
the fastest way to drive these libraries. The server queues the response in chunks and
keeps at most ``HIGH_WATER`` bytes buffered (unacknowledged) per stream, so memory stays
bounded and each library's own pacing, congestion and flow control decide the rate.

Command lines and output match ``quicflow perf``::

    python bench/peers/aioquic_perf.py server --host H --port P --cert C --key K
        [--max-datagram N]
        stderr: "listening on H:P (ALPN perf)", at exit "stopped: ... datagrams ..."

    python bench/peers/aioquic_perf.py client --host H --port P --download SIZE
        [--connections N] [--max-datagram N] --insecure --json
        stdout: one JSON object: bytes_received, bytes_sent, seconds, goodput_bytes_per_s,
        connections, streams, handshake_seconds, datagrams_sent, datagrams_received

Goodput is counted as quicflow counts it: stream payload bytes received / seconds, timed
from the end of the last handshake to the end of the last response.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import ssl
import struct
import sys
import time
from contextlib import AsyncExitStack
from types import ModuleType
from typing import Any

CHUNK_SIZE = 256 * 1024
HIGH_WATER = int(os.environ.get("PERFPEER_HIGH_WATER", 1024 * 1024))
WINDOW = 16 * 1024 * 1024  # connection and stream receive windows of both ends
_PATTERN = bytes(range(256)) * (CHUNK_SIZE // 256)

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """``100``, ``64K``, ``200M``, ``1G`` (1024-based, as in quicflow)."""
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
    return int(float(s[: len(s) - len(unit)]) * _UNITS[unit])


class Library:
    """The pieces of one library (aioquic or qh3) that the peer uses."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.aio: ModuleType = importlib.import_module(f"{name}.asyncio")
        self.events: ModuleType = importlib.import_module(f"{name}.quic.events")
        cfg_mod = importlib.import_module(f"{name}.quic.configuration")
        self.QuicConfiguration: Any = cfg_mod.QuicConfiguration

    def configuration(self, *, is_client: bool, max_datagram: int, idle: float) -> Any:
        cfg = self.QuicConfiguration(
            is_client=is_client,
            alpn_protocols=["perf"],
            max_data=WINDOW,
            max_stream_data=WINDOW,
            max_datagram_size=max_datagram,
            idle_timeout=idle,
        )
        if hasattr(cfg, "probe_datagram_size"):
            cfg.probe_datagram_size = False  # qh3: no PMTU probing above the cap
        return cfg

    def buffered(self, quic: Any, stream_id: int) -> int:
        """Bytes queued on a stream and not yet acknowledged."""
        core = getattr(quic, "_core", None)
        if core is not None and hasattr(core, "get_send_buffer_size"):  # qh3 (native core)
            return int(core.get_send_buffer_size(stream_id))
        stream = quic._streams.get(stream_id)  # aioquic
        if stream is None:
            return 0
        sender = stream.sender
        return int(sender._buffer_stop - sender._buffer_start)


def _counting_protocol(lib: Library) -> Any:
    """A QuicConnectionProtocol subclass that counts datagrams in and out."""
    base = lib.aio.QuicConnectionProtocol

    class Counting(base):  # type: ignore[misc, valid-type]
        datagrams_in = 0
        datagrams_out = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            inner = self._quic.datagrams_to_send

            def counted(now: float) -> Any:
                out = inner(now=now)
                type(self).datagrams_out += len(out)
                return out

            self._quic.datagrams_to_send = counted

        def datagram_received(self, data: Any, addr: Any) -> None:
            type(self).datagrams_in += 1
            super().datagram_received(data, addr)

        def datagrams_received(self, data: list[bytes], addr: Any) -> None:  # qh3 batches
            type(self).datagrams_in += len(data)
            super().datagrams_received(data, addr)

    return Counting


# ---------------------------------------------------------------------------- server


def server_protocol(lib: Library) -> Any:
    events = lib.events
    counting = _counting_protocol(lib)

    class PerfServer(counting):  # type: ignore[misc, valid-type]
        streams = 0
        bytes_sent = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._requests: dict[int, bytearray] = {}
            self._left: dict[int, int] = {}

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.StreamDataReceived):
                sid = event.stream_id
                head = self._requests.setdefault(sid, bytearray())
                if len(head) < 8:
                    head += event.data[: 8 - len(head)]
                if event.end_stream:
                    del self._requests[sid]
                    size = struct.unpack("!Q", head)[0] if len(head) == 8 else 0
                    type(self).streams += 1
                    self._left[sid] = size
                    if size == 0:
                        self._quic.send_stream_data(sid, b"", end_stream=True)
                        del self._left[sid]
                    self._pump()
            elif isinstance(event, events.StreamReset):
                self._left.pop(event.stream_id, None)
            elif isinstance(event, events.ConnectionTerminated):
                self._left.clear()

        def _pump(self) -> None:
            quic = self._quic
            for sid in list(self._left):
                left = self._left[sid]
                while left > 0 and lib.buffered(quic, sid) < HIGH_WATER:
                    n = CHUNK_SIZE if left >= CHUNK_SIZE else left
                    left -= n
                    quic.send_stream_data(
                        sid, _PATTERN if n == CHUNK_SIZE else _PATTERN[:n], end_stream=left == 0
                    )
                    type(self).bytes_sent += n
                if left == 0:
                    del self._left[sid]
                else:
                    self._left[sid] = left

        def transmit(self) -> None:
            if self._left:
                self._pump()
            super().transmit()

    return PerfServer


async def run_server(lib: Library, args: argparse.Namespace) -> int:
    cfg = lib.configuration(is_client=False, max_datagram=args.max_datagram, idle=args.timeout)
    cfg.load_cert_chain(args.cert, args.key)
    proto = server_protocol(lib)
    server = await lib.aio.serve(args.host, args.port, configuration=cfg, create_protocol=proto)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {args.host}:{args.port} (ALPN perf)", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
    print(
        f"stopped: {proto.streams} stream(s), sent {proto.bytes_sent} B,"
        f" datagrams_sent {proto.datagrams_out}, datagrams_received {proto.datagrams_in}",
        file=sys.stderr,
        flush=True,
    )
    return 0


# ---------------------------------------------------------------------------- client


def client_protocol(lib: Library) -> Any:
    events = lib.events
    counting = _counting_protocol(lib)

    class PerfClient(counting):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.received = 0
            self.expected = 0
            self.stream_id = -1
            self.finished_at = 0.0
            self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def request(self, size: int) -> None:
            self.expected = size
            self.stream_id = self._quic.get_next_available_stream_id()
            self._quic.send_stream_data(self.stream_id, struct.pack("!Q", size), end_stream=True)
            self.transmit()

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.StreamDataReceived):
                if event.stream_id == self.stream_id:
                    self.received += len(event.data)
                    if event.end_stream and not self.done.done():
                        self.finished_at = time.perf_counter()
                        if self.received == self.expected:
                            self.done.set_result(None)
                        else:
                            self.done.set_exception(
                                RuntimeError(f"got {self.received} of {self.expected} bytes")
                            )
            elif isinstance(event, events.StreamReset):
                if event.stream_id == self.stream_id and not self.done.done():
                    self.done.set_exception(RuntimeError("stream reset by the server"))
            elif isinstance(event, events.ConnectionTerminated):
                if not self.done.done():
                    self.done.set_exception(
                        RuntimeError(f"connection closed: {event.reason_phrase!r}")
                    )

    return PerfClient


async def run_client(lib: Library, args: argparse.Namespace) -> dict[str, Any]:
    cfg = lib.configuration(is_client=True, max_datagram=args.max_datagram, idle=args.timeout)
    if args.insecure:
        cfg.verify_mode = ssl.CERT_NONE
    if args.cafile:
        cfg.load_verify_locations(cafile=args.cafile)
    proto = client_protocol(lib)
    n = args.connections
    base, extra = divmod(args.download, n)
    sizes = [base + (1 if i < extra else 0) for i in range(n)]
    async with AsyncExitStack() as stack:
        started = time.perf_counter()

        async def one() -> Any:
            cm = lib.aio.connect(args.host, args.port, configuration=cfg, create_protocol=proto)
            return await stack.enter_async_context(cm)

        clients = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), args.timeout)
        connected = time.perf_counter()
        for client, size in zip(clients, sizes, strict=True):
            client.request(size)
        await asyncio.gather(*(c.done for c in clients))
        finished = max(c.finished_at for c in clients)
        received = sum(c.received for c in clients)
    seconds = max(finished - connected, 1e-9)
    return {
        "implementation": lib.name,
        "bytes_received": received,
        "bytes_sent": 0,
        "seconds": seconds,
        "goodput_bytes_per_s": received / seconds,
        "connections": n,
        "streams": n,
        "handshake_seconds": connected - started,
        "datagrams_sent": proto.datagrams_out,
        "datagrams_received": proto.datagrams_in,
    }


# ---------------------------------------------------------------------------- command line


def main(library: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{library}_perf.py",
        description=f"perf (ALPN perf) server and client on {library}, for bench/run.py.",
    )
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server", help="serve until SIGINT/SIGTERM")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=4433)
    server.add_argument("--cert", required=True, help="PEM certificate")
    server.add_argument("--key", required=True, help="PEM private key")
    client = sub.add_parser("client", help="download and print the goodput")
    client.add_argument("--host", required=True)
    client.add_argument("--port", type=int, default=4433)
    client.add_argument("--download", type=parse_size, default=parse_size("10M"))
    client.add_argument("--connections", type=int, default=1)
    client.add_argument("--insecure", action="store_true", help="do not verify the server")
    client.add_argument("--cafile")
    client.add_argument("--json", action="store_true", help="print one JSON object")
    for p in (server, client):
        p.add_argument("--max-datagram", type=int, default=1200, metavar="N")
        p.add_argument("--timeout", type=float, default=30.0, help="idle timeout (s)")
    args = parser.parse_args(argv)
    lib = Library(library)
    if args.role == "server":
        return asyncio.run(run_server(lib, args))
    try:
        result = asyncio.run(run_client(lib, args))
    except (OSError, RuntimeError, TimeoutError, ConnectionError) as e:
        print(f"{library}_perf: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    if args.json:
        print(json.dumps(result, sort_keys=True), flush=True)
    else:
        rate = result["goodput_bytes_per_s"]
        print(
            f"received {result['bytes_received']} B in {result['seconds']:.3f} s:"
            f" {rate / 1e6:.1f} MB/s"
        )
    return 0
