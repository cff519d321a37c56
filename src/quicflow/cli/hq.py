"""``quicflow hq server`` and ``quicflow hq client``: hq-interop (HTTP/0.9 over QUIC)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

from ..aio import ConnectionClosedError
from ..apps.hq import HqError, HqResult, parse_url, run_client, server_configuration, start_server
from ..migration.handoff import HandoffError
from ..transport.codec import SnapshotError
from ..transport.config import Configuration
from .common import (
    _add_transport_options,
    _describe_error,
    _fail,
    _format_address,
    add_cid_options,
    add_client_tls_options,
    add_listen_options,
    add_quiet_option,
    add_timeout_option,
    cid_plan,
    client_configuration,
    format_bytes,
    format_rate,
    print_result,
    report_handoff,
    run_with_progress,
    server_certificate,
    stop_event,
)
from .migrate import add_migrate_parser, add_server_options, start_receiver

# ---------------------------------------------------------------------------- server


async def _serve(args: argparse.Namespace, config: Configuration) -> int:
    started = time.monotonic()
    server, handler = await start_server(
        args.host, args.port, root=args.root, configuration=config, backend=args.backend,
        takeover=args.takeover, cid_plan=cid_plan(args),
    )  # fmt: skip
    stop = stop_event()
    if args.takeover:
        print(f"took over {len(server.connections)} connection(s) from {args.takeover}"
              f" in {time.monotonic() - started:.3f} s", file=sys.stderr, flush=True)
    handoff_path = args.handoff or args.takeover
    handed = server.handoff(handoff_path) if handoff_path else None
    receiver = await start_receiver(args, server)
    print(f"listening on {_format_address(server.address)} (ALPN hq-interop),"
          f" serving {handler.root}", file=sys.stderr, flush=True)  # fmt: skip
    try:
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
        if handed is not None:
            waiters.append(handed)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        waiters[0].cancel()
    finally:
        if receiver is not None:
            receiver.close()
        server.close()
        await server.wait_closed()
    if handed is not None and handed.done():
        return report_handoff(args.json, server, handed)
    s = handler.stats
    print(f"stopped: {s.requests} request(s) answered, {s.refused} refused,"
          f" sent {format_bytes(s.bytes_sent)}", file=sys.stderr, flush=True)  # fmt: skip
    if args.json:
        report = {**asdict(s), "endpoint": server.stats()["endpoint"]}
        print(json.dumps(report), flush=True)
    return 0


def cmd_hq_server(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.root):
        return _fail(f"--root {args.root}: not a directory", 2)
    if args.key and not args.cert:
        return _fail("--key needs --cert", 2)
    try:
        cid_plan(args)
    except ValueError as e:
        return _fail(f"bad QUIC-LB options: {e}", 2)
    # checked before anything starts (a successor that failed on them later would have
    # taken the connections over already)
    migrate_files = (args.migrate_cert, args.migrate_key, args.migrate_ca)
    if bool(args.migrate_listen) != all(migrate_files) or (
            not args.migrate_listen and any(migrate_files)):
        return _fail("--migrate-listen, --migrate-cert, --migrate-key and --migrate-ca "
                     "go together", 2)
    for option, path in (("--migrate-cert", args.migrate_cert),
                         ("--migrate-key", args.migrate_key),
                         ("--migrate-ca", args.migrate_ca)):
        if path and not os.path.isfile(path):
            return _fail(f"{option} {path}: no such file", 2)
    try:
        with server_certificate(args, "quicflow-hq-") as (chain, key):
            config = server_configuration(
                chain, key, congestion_control=args.congestion,
                max_datagram_size=args.max_datagram, keylog_file=args.keylog,
                pmtud=args.pmtud, pacing=args.pacing, key_update_after=args.key_update_after,
            )  # fmt: skip
            return asyncio.run(_serve(args, config))
    except (HandoffError, SnapshotError) as e:
        return _fail(f"takeover failed: {e}")
    except (OSError, ValueError) as e:
        return _fail(_describe_error(e) if isinstance(e, OSError) else str(e))


# ---------------------------------------------------------------------------- client


def _summary(result: HqResult) -> list[str]:
    lines = [f"{d.url} -> {d.file}: {d.bytes} bytes, sha256 {d.sha256}" for d in result.downloads]
    rate = result.bytes_received / result.seconds
    lines.append(f"received {format_bytes(result.bytes_received)} in {len(result.downloads)}"
                 f" file(s) in {result.seconds:.3f} s: {format_rate(rate)}")  # fmt: skip
    return lines


def cmd_hq_client(args: argparse.Namespace) -> int:
    for url in args.urls:
        try:
            parse_url(url)
        except ValueError as e:
            return _fail(str(e), 2)
    if not os.path.isdir(args.output):
        return _fail(f"--output {args.output}: not a directory", 2)
    if args.cafile and not os.path.isfile(args.cafile):
        return _fail(f"--cafile {args.cafile}: no such file", 2)
    config = client_configuration(args, "hq-interop")
    outcome = run_with_progress(
        args,
        lambda progress: run_client(
            args.urls, args.output, configuration=config, backend=args.backend,
            timeout=args.timeout, progress=progress,
        ),
        (ConnectionClosedError, HqError, TimeoutError, OSError, ValueError),
    )  # fmt: skip
    if isinstance(outcome, int):
        return outcome
    print_result(outcome, args.json, lambda r: "\n".join(_summary(r)))
    return 0


# ---------------------------------------------------------------------------- parser


def add_hq_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hq server``, ``hq client`` and ``hq migrate`` to the ``quicflow`` command's
    subparsers."""
    hq = sub.add_parser(
        "hq",
        help="hq-interop (HTTP/0.9 over QUIC, ALPN hq-interop): server, client, migrate",
        description="hq-interop, the HTTP/0.9-over-QUIC protocol interop tools use (ALPN "
        "hq-interop): the client sends 'GET /path' on a stream of its own per file, the "
        "server answers with the file's bytes.",
    )
    hq_sub = hq.add_subparsers(dest="role", required=True, metavar="ROLE")

    server = hq_sub.add_parser(
        "server",
        help="serve the files of a directory until SIGINT/SIGTERM",
        description="Serve the regular files under --root until SIGINT or SIGTERM (then "
        "exit 0). Prints 'listening on ADDRESS:PORT' on stderr once ready. Requests for "
        "paths outside --root (.., symbolic links leading out), missing files and malformed "
        "requests are refused: their stream is reset with application error code 1. Without "
        "--cert it makes a self-signed certificate and says on stderr in which file. With "
        "--handoff, a successor started with --takeover replaces this process without "
        "ending a connection: responses in progress go on from where they stopped.",
    )
    server.add_argument("--root", required=True, metavar="DIR", help="directory to serve")
    add_listen_options(server)
    server.add_argument(
        "--handoff", metavar="PATH",
        help="offer this server's connections to a successor on a unix socket at PATH "
        "(mode 0600, same user only); when one takes over, print how many connections "
        "went (with --json: {\"handed_off_connections\": N}) and exit 0",
    )  # fmt: skip
    server.add_argument(
        "--takeover", metavar="PATH",
        help="start by taking over the socket and connections of the hq server offering "
        "a handoff at PATH (no new handshakes; --host/--port are then unused), then offer "
        "the same at PATH for the next successor. Give it the predecessor's --root, "
        "--cert/--key and CID options (--host-id, --quic-lb-*): without --cert, new "
        "clients get a new self-signed certificate",
    )  # fmt: skip
    add_cid_options(server)
    add_server_options(server)
    server.add_argument(
        "--json", action="store_true",
        help="on exit print one JSON object on stdout: after a handoff "
        "{\"handed_off_connections\": N}, else the counters (requests, refused, "
        "bytes_sent, endpoint)",
    )  # fmt: skip
    _add_transport_options(server)
    server.set_defaults(func=cmd_hq_server)
    add_migrate_parser(hq_sub)

    client = hq_sub.add_parser(
        "client",
        help="download URLs into a directory",
        description="Download every URL (https://HOST[:PORT]/PATH) into --output, under "
        "the last segment of its path. URLs of one HOST:PORT share a connection and are "
        "fetched at the same time, one stream each. Prints one line per file (URL, file, "
        "size, SHA-256) and a summary on stdout, a progress line on stderr about once a "
        "second. Exit status 0 when every file arrived, 1 with one line on stderr saying "
        "why otherwise (request refused, certificate refused, timed out...), 2 for bad "
        "arguments.",
    )
    client.add_argument("urls", nargs="+", metavar="URL", help="https://HOST[:PORT]/PATH")
    client.add_argument(
        "--output", "-o", required=True, metavar="DIR",
        help="directory to write the files into (must exist)",
    )  # fmt: skip
    add_client_tls_options(client)
    client.add_argument(
        "--server-name", metavar="NAME",
        help="name to check the certificate against and send as SNI (default: the URL's host)",
    )  # fmt: skip
    add_timeout_option(client)
    client.add_argument(
        "--json", action="store_true",
        help="print one JSON object on stdout (files: url, path, file, bytes, sha256; "
        "bytes_received, seconds, connections, handshake_seconds) instead of lines",
    )  # fmt: skip
    add_quiet_option(client)
    _add_transport_options(client)
    client.set_defaults(func=cmd_hq_client)
