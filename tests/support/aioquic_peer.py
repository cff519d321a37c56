"""aioquic or qh3 as the other end of interop tests, run in a process of its own.

Large transfers need both cores: quicflow runs in the pytest process, the peer here.
``--library aioquic`` (the default) or ``--library qh3`` picks the implementation; qh3's
asyncio API mirrors aioquic's (``qh3.asyncio.serve/connect``, ``QuicConfiguration``,
``qh3.quic.events``), so one runner serves both.  The process speaks the protocol of
``tests/support/echo_proto.py`` and reports what happens as JSON lines on stdout (one
object per line, flushed at once)::

    python -m tests.support.aioquic_peer server --cert C --key K [--port 0] [--chacha]
        [--retry] [--versions 2,1] [--datagrams] [--request-client-cert]
        [--library aioquic|qh3]
        {"event": "ready", "port": 4433}
        {"event": "handshake", "cipher_suite": 4867, "alpn": "perf"}
        {"event": "terminated", "error_code": 298, "frame_type": 6, "reason": "..."}

    python -m tests.support.aioquic_peer perfclient --port P --download D [--cafile F]
        {"event": "progress", "bytes": 10485760}                 (every 10 MB)
        {"event": "result", "ok": true, "bytes": D, "sha256": "..."}

    python -m tests.support.aioquic_peer client --port P [--host H] [--cafile F]
        [--server-name N] [--streams S] [--upload U] [--download D] [--chacha]
        [--client-cert C --client-key K] [--library aioquic|qh3]
        (either role: [--max-data N] [--max-stream-data N], the receive windows)
        {"event": "handshake", "cipher_suite": 4865, "alpn": "perf"}
        {"event": "result", "ok": true, "streams": [...]}       (or {"event": "error", ...})

Client certificates: ``--client-cert/--client-key`` make the client present a chain when
asked (aioquic's ``QuicConfiguration.load_cert_chain`` on a client). aioquic 1.7's server
has no option to ask for one; ``--request-client-cert`` sets its test-only
``tls.Context._request_client_certificate`` (it then checks the client's CertificateVerify
signature but not the chain), and the handshake event carries the subject of the peer's
certificate (``peer_subject``, None without one).

``AioquicProcess`` starts such a process from a test and reads its events
(``AioquicProcess(..., library="qh3")`` for qh3; ``PeerProcess`` is the same class).

qh3 differences handled here: its client trusts only CA certificates as anchors (give
it a CA-issued server certificate and the CA as ``--cafile``), it does not offer Ed25519
signatures (use EC P-256 certificates), its ``close()`` takes no error code (it closes
with NO_ERROR), and the negotiated suite comes from ``QuicConnection.get_cipher()``.

Debugging: with ``PEER_QLOGDIR`` set in the environment, the peer writes its own qlog
there (the library's ``QuicFileLogger``); ``QLOGDIR`` does the same for quicflow.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Self

if __package__ in (None, ""):  # run as a script: make ``tests.support`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from tests.support import echo_proto  # noqa: E402

BIG_WINDOW = 16 * 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARIES = ("aioquic", "qh3")


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _lib(args: argparse.Namespace, module: str) -> Any:
    """``module`` (e.g. ``"asyncio"``, ``"quic.events"``) of the library under test."""
    return importlib.import_module(f"{args.library}.{module}")


def _configuration(args: argparse.Namespace, is_client: bool) -> Any:
    import ssl

    QuicConfiguration = _lib(args, "quic.configuration").QuicConfiguration  # noqa: N806
    CipherSuite = _lib(args, "tls").CipherSuite  # noqa: N806

    cfg = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=["perf"],
        max_data=getattr(args, "max_data", 0) or BIG_WINDOW,
        max_stream_data=getattr(args, "max_stream_data", 0) or BIG_WINDOW,
        idle_timeout=args.idle_timeout,
    )
    if os.environ.get("PEER_QLOGDIR"):  # debugging: the peer's own qlog, one file each
        cfg.quic_logger = _lib(args, "quic.logger").QuicFileLogger(os.environ["PEER_QLOGDIR"])
    if args.chacha:
        cfg.cipher_suites = [CipherSuite.CHACHA20_POLY1305_SHA256]
    if args.versions:  # "2,1": QUIC versions in order of preference (client: first = sent)
        names = {"1": 0x00000001, "2": 0x6B3343CF}
        cfg.supported_versions = [names[v] for v in args.versions.split(",")]
        if is_client:
            cfg.original_version = cfg.supported_versions[0]
    if args.original_version:  # the client's first flight (compatible negotiation)
        cfg.original_version = {"1": 0x00000001, "2": 0x6B3343CF}[args.original_version]
    if args.datagrams:
        cfg.max_datagram_frame_size = 65536
    if is_client:
        if args.cafile:
            cfg.load_verify_locations(cafile=args.cafile)
        if args.insecure:
            cfg.verify_mode = ssl.CERT_NONE
        cfg.server_name = args.server_name
        if args.client_cert:
            cfg.load_cert_chain(args.client_cert, args.client_key)
    else:
        cfg.load_cert_chain(args.cert, args.key)
    return cfg


def _negotiated_suite(library: str, quic: Any) -> int | None:
    try:
        if library == "qh3":
            suite = quic.get_cipher()
            return None if suite is None else int(suite)
        return int(quic.tls.key_schedule.cipher_suite)
    except AttributeError:
        return None


def qh3_drainable(reader: Any, writer: Any) -> tuple[Any, Any]:
    """A qh3 stream's (reader, writer) with a working ``drain()``: qh3 builds its
    StreamWriter with protocol=None, so ``await writer.drain()`` raises AttributeError
    (and the dropped writer's __del__ then closes the stream: a FIN after partial data).
    Give it a StreamReaderProtocol as aioquic does.  (Not a new writer: the discarded
    one's __del__ would send FIN at once.)"""
    if writer._protocol is None:
        writer._protocol = asyncio.streams.StreamReaderProtocol(reader)
    return reader, writer


def _protocol_class(args: argparse.Namespace) -> Any:
    QuicConnectionProtocol = _lib(args, "asyncio").QuicConnectionProtocol  # noqa: N806
    events = _lib(args, "quic.events")
    library = args.library

    class ReportingProtocol(QuicConnectionProtocol):  # type: ignore[misc,valid-type]
        datagrams: list[bytes]

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.DatagramFrameReceived):
                if not hasattr(self, "datagrams"):
                    self.datagrams = []
                self.datagrams.append(event.data)
                if not self._quic.configuration.is_client:  # the server echoes them
                    self._quic.send_datagram_frame(event.data)
                    self.transmit()
            if isinstance(event, events.HandshakeCompleted):
                suite = _negotiated_suite(library, self._quic)
                peer = None
                if library == "aioquic":  # its tls.Context keeps the peer's leaf here
                    peer = getattr(self._quic.tls, "_peer_certificate", None)
                emit({"event": "handshake", "cipher_suite": suite, "alpn": event.alpn_protocol,
                      "version": getattr(self._quic, "_version", None),
                      "peer_subject": None if peer is None else peer.subject.rfc4514_string()})
            elif isinstance(event, events.ConnectionTerminated):
                emit({
                    "event": "terminated",
                    "error_code": event.error_code,
                    "frame_type": event.frame_type,
                    "reason": event.reason_phrase,
                })
            super().quic_event_received(event)

        if library == "qh3":

            def _create_stream(self, stream_id: int) -> Any:
                return qh3_drainable(*super()._create_stream(stream_id))

    return ReportingProtocol


def _request_client_certificates(args: argparse.Namespace) -> None:
    """Make every server-side TLS context of the library send a CertificateRequest."""
    context = _lib(args, "tls").Context
    original = context.__init__

    def init(self: Any, *a: Any, **kw: Any) -> None:
        original(self, *a, **kw)
        if not self._is_client:
            self._request_client_certificate = True

    context.__init__ = init


async def run_server(args: argparse.Namespace) -> None:
    serve = _lib(args, "asyncio").serve
    if args.request_client_cert:
        _request_client_certificates(args)

    def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def run() -> None:
            try:
                await echo_proto.serve_stream(reader, writer)
            except Exception as exc:  # reported, the test decides
                emit({"event": "stream_error", "error": repr(exc)})

        asyncio.ensure_future(run())

    server = await serve(
        args.host, args.port, configuration=_configuration(args, False),
        stream_handler=handler, create_protocol=_protocol_class(args),
        **({"retry": True} if args.retry else {}),
    )
    port = server._transport.get_extra_info("sockname")[1]
    emit({"event": "ready", "port": port})
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        server.close()


async def run_client(args: argparse.Namespace) -> int:
    connect = _lib(args, "asyncio").connect

    cfg = _configuration(args, True)
    try:
        async with connect(
            args.host, args.port, configuration=cfg, create_protocol=_protocol_class(args)
        ) as client:

            async def one(i: int) -> dict[str, Any]:
                reader, writer = await client.create_stream()
                upload = echo_proto.payload(10_000 + i, args.upload)
                return await echo_proto.client_exchange(
                    reader, writer, upload=upload, download=args.download, seed=i
                )

            if args.datagram_count:  # send N datagrams, report which came back
                for i in range(args.datagram_count):
                    client._quic.send_datagram_frame(f"datagram {i}".encode())
                client.transmit()
                for _ in range(300):
                    if len(getattr(client, "datagrams", [])) >= args.datagram_count:
                        break
                    await asyncio.sleep(0.01)
                emit({"event": "datagrams",
                      "echoed": [d.decode() for d in getattr(client, "datagrams", [])]})
            results = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(args.streams))), args.timeout
            )
            emit({"event": "result", "ok": all(r["ok"] for r in results), "streams": results})
            if args.library == "qh3":
                client.close()  # qh3's close() takes no code: it closes with NO_ERROR
            else:
                client.close(error_code=0)
            await client.wait_closed()
    except Exception as exc:
        emit({"event": "error", "error": repr(exc), "type": type(exc).__name__})
        return 1
    return 0


async def run_perf_client(args: argparse.Namespace) -> int:
    """A plain perf client (draft-banks-quic-performance): one stream, ``--download``
    bytes; reports progress every 10 MB and the SHA-256 of what arrived."""
    import hashlib
    import struct

    connect = _lib(args, "asyncio").connect
    try:
        async with connect(
            args.host, args.port, configuration=_configuration(args, True),
            create_protocol=_protocol_class(args),
        ) as client:
            reader, writer = await client.create_stream()
            writer.write(struct.pack("!Q", args.download))
            writer.write_eof()
            digest = hashlib.sha256()
            got, mark = 0, 10 << 20
            while True:
                data = await asyncio.wait_for(reader.read(1 << 20), args.timeout)
                if not data:
                    break
                digest.update(data)
                got += len(data)
                if got >= mark:
                    emit({"event": "progress", "bytes": got})
                    mark += 10 << 20
            emit({"event": "result", "ok": got == args.download, "bytes": got,
                  "sha256": digest.hexdigest()})
            client.close(error_code=0)
            await client.wait_closed()
    except Exception as exc:
        emit({"event": "error", "error": repr(exc), "type": type(exc).__name__})
        return 1
    return 0


def peer_parser(roles: list[str]) -> argparse.ArgumentParser:
    """The command line every aioquic/qh3 peer process here takes (this module's and
    ``aioquic_resume``'s): the role, the library, where to listen or connect, the
    certificates, the upload and download sizes."""
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=roles)
    p.add_argument("--library", choices=LIBRARIES, default="aioquic")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--cafile")
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--upload", type=int, default=0)
    p.add_argument("--download", type=int, default=0)
    return p


def serve(run: Callable[[argparse.Namespace], Awaitable[None]], args: argparse.Namespace
          ) -> int:
    """Run a peer's server until it is interrupted; exit status 0."""
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    p = peer_parser(["server", "client", "perfclient"])
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--chacha", action="store_true")
    p.add_argument("--retry", action="store_true", help="(server) Retry every Initial")
    p.add_argument("--versions", help="QUIC versions by preference, e.g. 2,1")
    p.add_argument("--original-version", help="(client) version of the first Initial")
    p.add_argument("--datagrams", action="store_true", help="accept DATAGRAM frames (echo)")
    p.add_argument("--datagram-count", type=int, default=0,
                   help="(client, with --datagrams) send this many and report the echoes")
    p.add_argument("--client-cert", help="(client) certificate chain PEM to present")
    p.add_argument("--client-key", help="(client) its private key PEM")
    p.add_argument("--request-client-cert", action="store_true",
                   help="(server) send a CertificateRequest (aioquic's test-only hook)")
    p.add_argument("--idle-timeout", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--max-data", type=int, default=0,
                   help="connection receive window (default: 16 MiB)")
    p.add_argument("--max-stream-data", type=int, default=0,
                   help="stream receive window (default: 16 MiB)")
    args = p.parse_args(argv)
    if args.role == "server":
        return serve(run_server, args)
    if args.role == "perfclient":
        return asyncio.run(run_perf_client(args))
    return asyncio.run(run_client(args))


# ---------------------------------------------------------------------- test-side helper


class AioquicProcess:
    """An aioquic (or, with ``library="qh3"``, qh3) peer process started from a test
    running an asyncio loop.

    ``async with AioquicProcess("server", "--cert", c, "--key", k) as peer:``
    ``peer.port`` (server), ``await peer.next_event("result")``, ``peer.events``.
    """

    def __init__(self, *args: str, library: str = "aioquic",
                 module: str = "tests.support.aioquic_peer") -> None:
        if library not in LIBRARIES:
            raise ValueError(f"unknown library {library!r}; use one of {LIBRARIES}")
        self.library = library
        self.module = module
        self.args = list(args) + (["--library", library] if library != "aioquic" else [])
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.port: int | None = None
        self._new = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self.stderr = b""

    async def start(self) -> Self:
        return await self._spawn(sys.executable, "-m", self.module, *self.args, cwd=ROOT)

    async def _spawn(self, *command: str, cwd: str | None = None,
                     env: dict[str, str] | None = None, wait_ready: bool = True) -> Self:
        """Start ``command`` with its JSON-lines stdout read into ``events``; a server's
        (when ``wait_ready``) ``port`` is taken from its "ready" event."""
        self.proc = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader_task = asyncio.ensure_future(self._read())
        if wait_ready and self.args[0] == "server":
            ready = await self.next_event("ready", timeout=30)
            self.port = int(ready["port"])
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "garbage", "line": line.decode(errors="replace")})
            self._new.set()
        self._new.set()

    async def next_event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event called ``name`` (waits for it; fails when the process ends)."""

        async def wait() -> dict[str, Any]:
            while True:
                for ev in self.events:
                    if ev.get("event") == name:
                        return ev
                if self._reader_task is not None and self._reader_task.done():
                    await self._collect_stderr()
                    raise AssertionError(
                        f"{self.library} peer ended without a {name!r} event; "
                        f"events: {self.events}; "
                        f"stderr: {self.stderr.decode(errors='replace')[-3000:]}"
                    )
                self._new.clear()
                await self._new.wait()

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {name!r} event from the {self.library} peer within {timeout}s; "
                f"events so far: {self.events}"
            ) from None

    async def wait_exit(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader_task is not None:
            await self._reader_task
        return rc

    async def _collect_stderr(self) -> None:
        if self.proc is not None and self.proc.stderr is not None and not self.stderr:
            try:
                self.stderr = await asyncio.wait_for(self.proc.stderr.read(), 5)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader_task is not None:
            try:
                await asyncio.wait_for(self._reader_task, 5)
            except TimeoutError:
                self._reader_task.cancel()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


PeerProcess = AioquicProcess


if __name__ == "__main__":
    sys.exit(main())
