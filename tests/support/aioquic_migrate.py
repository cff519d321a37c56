"""aioquic (or, with ``--library qh3``, qh3) as the other end of the migration tests, in a
process of its own.

The protocol (ALPN ``perf``): the client sends the download size as 8 bytes, then its
upload, then FIN; the server answers with the SHA-256 of the upload and then the download
(:func:`data` bytes). Events are JSON lines on stdout::

    python -m tests.support.aioquic_migrate server --cert C --key K
        {"event": "ready", "port": P}
        {"event": "served", "upload_sha256": "...", "peer": ["127.0.0.1", 50123]}

    python -m tests.support.aioquic_migrate client --port P --cafile F --download D
        [--upload U] [--rebind [--rebind-how both|port|cid] [--rebind-at F]] [--again A]
        {"event": "rebound", "old_port": A, "new_port": B}       (with --rebind)
        {"event": "result", "ok": true, "sha256": "...", "again_sha256": "...",
         "server": ["127.0.0.1", P2], "local_port": B}

``--rebind``: half-way through the download the client moves to a new UDP socket (a new
local port) and switches to a fresh connection ID (``QuicConnection.change_connection_id``),
as a NAT rebinding or a deliberate migration would; aioquic 1.7's client has no API for
it, so the protocol's datagram transport is replaced by a new one (``--rebind-how port``:
only the new socket, the same connection ID, as a NAT rebinding looks; ``cid``: only the
fresh connection ID, on the same socket); ``--rebind-at F``: after that fraction of the
download was read (0.5; 1: after its last byte, when the server has sent all of it).
``--again A``: once the download is read, a second exchange on a new stream (no upload,
``A`` bytes down, ``again_sha256`` in the result), wholly after the rebinding. A server
that follows the client sends it on the new path, and past three times what the client
sent there only once that path is validated (RFC 9000 §8.1, §9.3), so its end shows the
server's side of the move. Without it, a server that had sent the whole download before
the rebinding may get nothing from the new port but the client's CONNECTION_CLOSE.
``server`` reports the peer address aioquic's server sends to when a stream is served;
``result.server`` is the address the client sends to at the end (a server's preferred
address once aioquic's client moved there by itself, RFC 9000 §9.6).

qh3 (``--library qh3``; its asyncio API mirrors aioquic's): its native core keeps no
Python-side ``_network_paths``, so the address a connection sends to is the one its
last datagram went to (``datagrams_to_send`` is wrapped); its StreamWriter gets the
protocol ``drain()`` needs; its ``close()`` takes no error code.  ``--rebind`` works the
same way with qh3 (its ``change_connection_id`` switches to a fresh connection ID).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``tests.support`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))

from tests.support.aioquic_peer import _lib, emit, qh3_drainable  # noqa: E402

CHUNK = 64 * 1024


def data(n: int, seed: int) -> bytes:
    block = hashlib.sha256(seed.to_bytes(4, "big")).digest() * (CHUNK // 32)
    return (block * (n // CHUNK + 1))[:n]


def _configuration(args: argparse.Namespace, is_client: bool) -> Any:
    QuicConfiguration = _lib(args, "quic.configuration").QuicConfiguration  # noqa: N806

    cfg = QuicConfiguration(is_client=is_client, alpn_protocols=["perf"],
                            max_data=16 << 20, max_stream_data=16 << 20, idle_timeout=30.0)
    if is_client:
        cfg.load_verify_locations(cafile=args.cafile)
        cfg.server_name = "localhost"
    else:
        cfg.load_cert_chain(args.cert, args.key)
    return cfg


def _protocol_class(args: argparse.Namespace, created: list[Any]) -> Any:
    """The library's QuicConnectionProtocol, keeping every instance in ``created`` and
    remembering where it last sent (``sent_to``: qh3's native core keeps no Python-side
    ``_network_paths``)."""
    base = _lib(args, "asyncio").QuicConnectionProtocol
    qh3 = args.library == "qh3"

    class Protocol(base):  # type: ignore[misc,valid-type]
        sent_to: Any = None

        def __init__(self, quic: Any, *a: Any, **kw: Any) -> None:
            super().__init__(quic, *a, **kw)
            created.append(self)
            if qh3:
                produce = quic.datagrams_to_send

                def datagrams_to_send(now: float) -> list[tuple[bytes, Any]]:
                    out = produce(now)
                    if out:
                        self.sent_to = out[-1][1]
                    return out  # type: ignore[no-any-return]

                quic.datagrams_to_send = datagrams_to_send

        if qh3:

            def _create_stream(self, stream_id: int) -> Any:
                return qh3_drainable(*super()._create_stream(stream_id))

    return Protocol


def _peer_of(protocol: Any) -> list[Any] | None:
    """The address ``protocol``'s connection sends to now."""
    paths = getattr(protocol._quic, "_network_paths", None)
    if paths is not None:  # aioquic: the active path comes first
        return list(paths[0].addr) if paths else None
    return None if protocol.sent_to is None else list(protocol.sent_to)


async def run_server(args: argparse.Namespace) -> None:
    serve = _lib(args, "asyncio").serve
    protocols: list[Any] = []
    Protocol = _protocol_class(args, protocols)  # noqa: N806

    def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def run() -> None:
            want = int.from_bytes(await reader.readexactly(8), "big")
            digest = hashlib.sha256()
            while chunk := await reader.read(CHUNK):
                digest.update(chunk)
            writer.write(digest.digest())
            body = data(want, 2)
            for i in range(0, len(body), CHUNK):
                writer.write(body[i : i + CHUNK])
                await writer.drain()
            writer.write_eof()
            peer = None
            for p in protocols:
                peer = _peer_of(p) or peer
            emit({"event": "served", "upload_sha256": digest.hexdigest(), "peer": peer})

        asyncio.ensure_future(run())

    server = await serve(args.host, args.port, configuration=_configuration(args, False),
                         stream_handler=handler, create_protocol=Protocol)
    emit({"event": "ready", "port": server._transport.get_extra_info("sockname")[1]})
    await asyncio.Event().wait()


async def run_client(args: argparse.Namespace) -> int:
    connect = _lib(args, "asyncio").connect

    loop = asyncio.get_running_loop()
    async with connect(args.host, args.port, configuration=_configuration(args, True),
                       create_protocol=_protocol_class(args, [])) as client:
        reader, writer = await client.create_stream()
        writer.write(args.download.to_bytes(8, "big"))
        writer.write(data(args.upload, 1))
        writer.write_eof()
        upload_digest = await reader.readexactly(32)
        digest = hashlib.sha256()
        got = 0
        rebound = False
        while chunk := await reader.read(CHUNK):
            digest.update(chunk)
            got += len(chunk)
            if args.rebind and not rebound and got >= args.download * args.rebind_at:
                rebound = True
                old = client._transport
                old_port = old.get_extra_info("sockname")[1]
                if args.rebind_how in ("both", "port"):
                    family = old.get_extra_info("socket").family
                    family_host = "::" if family == 10 else "0.0.0.0"
                    await loop.create_datagram_endpoint(lambda: client,
                                                        local_addr=(family_host, 0))
                    loop.call_later(1.0, old.close)
                if args.rebind_how in ("both", "cid"):
                    client.change_connection_id()  # a fresh CID (on the new path); transmits
                else:
                    client.transmit()  # same CID from the new port: a NAT rebinding
                new_port = client._transport.get_extra_info("sockname")[1]
                emit({"event": "rebound", "old_port": old_port, "new_port": new_port})
        ok = (got == args.download
              and upload_digest == hashlib.sha256(data(args.upload, 1)).digest())
        again = None
        if args.again:
            reader, writer = await client.create_stream()
            writer.write(args.again.to_bytes(8, "big"))
            writer.write_eof()
            ok = ok and await reader.readexactly(32) == hashlib.sha256().digest()
            again = hashlib.sha256()
            got_again = 0
            while chunk := await reader.read(CHUNK):
                again.update(chunk)
                got_again += len(chunk)
            ok = ok and got_again == args.again
        server = _peer_of(client)
        emit({"event": "result", "ok": ok, "sha256": digest.hexdigest(), "bytes": got,
              "again_sha256": None if again is None else again.hexdigest(),
              "server": server,
              "local_port": client._transport.get_extra_info("sockname")[1]})
        if args.library == "qh3":
            client.close()  # qh3's close() takes no code: it closes with NO_ERROR
        else:
            client.close(error_code=0)
        await client.wait_closed()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--cafile")
    p.add_argument("--download", type=int, default=0)
    p.add_argument("--upload", type=int, default=0)
    p.add_argument("--rebind", action="store_true")
    p.add_argument("--rebind-how", choices=["both", "port", "cid"], default="both",
                   help="with --rebind: a new port and a fresh CID (both), only a new "
                        "port (port: a NAT rebinding), only a fresh CID (cid)")
    p.add_argument("--rebind-at", type=float, default=0.5,
                   help="with --rebind: the fraction of the download read before it")
    p.add_argument("--again", type=int, default=0,
                   help="then a second download of this many bytes on a new stream")
    p.add_argument("--library", choices=["aioquic", "qh3"], default="aioquic")
    args = p.parse_args()
    if args.role == "server":
        asyncio.run(run_server(args))
        return 0
    return asyncio.run(run_client(args))


if __name__ == "__main__":
    sys.exit(main())
