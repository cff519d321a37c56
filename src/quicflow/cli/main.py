"""The ``quicflow`` command: ``quicflow perf server|client``, ``quicflow hq server|client``,
``quicflow demo``.

Run ``quicflow --help`` (or ``python -m quicflow --help``) for the subcommands.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, TextIO

from ..aio import ConnectionClosedError, QuicServer
from ..apps.perf import (
    PerfError,
    PerfResult,
    run_client,
    server_configuration,
    server_report,
    start_server,
)
from ..datapath.connected import DEFAULT_CONNECTION_SOCKETS
from ..migration.handoff import HandoffError
from ..tls.certs import certificate_pem, generate_self_signed, private_key_pem
from ..transport.codec import SnapshotError
from ..transport.config import Configuration
from .common import (
    PROG,
    SIZE_HELP,
    _add_transport_options,
    _describe_error,
    _fail,
    _format_address,
    _int_arg,
    _nonnegative_int,
    _port_arg,
    _positive_int,
    _seconds_arg,
    _size_arg,
    add_cid_options,
    add_client_tls_options,
    add_listen_options,
    add_quiet_option,
    add_timeout_option,
    cid_plan,
    client_configuration,
    format_bytes,
    format_rate,
    parse_size,
    print_result,
    raise_open_file_limit,
    report_handoff,
    run_with_progress,
    server_certificate,
    stop_event,
)
from .h3cmd import register as register_h3_commands
from .hq import add_hq_parser
from .migrate import add_migrate_parser, add_server_options, start_receiver

__all__ = ["build_parser", "format_bytes", "main", "parse_size"]


# ---------------------------------------------------------------------------- perf server


def summary_line(result: PerfResult) -> str:
    conns = result.connections
    per_conn = result.streams // max(conns, 1)
    return (
        f"received {format_bytes(result.bytes_received)}, sent {format_bytes(result.bytes_sent)}"
        f" in {result.seconds:.3f} s: goodput {format_rate(result.goodput_bytes_per_s)}"
        f" ({result.goodput_bytes_per_s * 8 / 1e9:.2f} Gbit/s);"
        f" {conns} connection(s) x {per_conn} stream(s),"
        f" handshake {result.handshake_seconds * 1000:.1f} ms"
        + ("" if result.resumed is None else
           f"; resumed {'yes' if result.resumed else 'no'},"
           f" 0-RTT {'accepted' if result.early_data_accepted else 'not accepted'}")
        + (f"; moved to a new path {moved} time(s)"
           if (moved := result.counters.get("migrations", 0)) else "")
    )


async def _serve_perf(args: argparse.Namespace, config: Configuration) -> int:
    started = time.monotonic()
    server, handler = await start_server(
        args.host, args.port, configuration=config, backend=args.backend,
        workers=args.workers, steering=not args.no_steering, cid_plan=cid_plan(args),
        connection_sockets=args.connection_sockets, takeover=args.takeover,
    )  # fmt: skip
    stop = stop_event()
    handed: asyncio.Future[int] | None = None
    receiver = None
    if args.takeover:
        taken = (len(server.connections) if isinstance(server, QuicServer)
                 else server.restored_connections)
        print(f"took over {taken} connection(s) from {args.takeover}"
              f" in {time.monotonic() - started:.3f} s", file=sys.stderr, flush=True)
    handoff_path = args.handoff or args.takeover
    handed = server.handoff(handoff_path) if handoff_path else None
    if isinstance(server, QuicServer):  # (workers: no moves, refused before)
        receiver = await start_receiver(args, server)
    workers = f", {args.workers} worker(s)" if args.workers is not None else ""
    preferred = "".join(f", preferred address {_format_address(a)}"
                        for a in args.preferred_address)
    print(f"listening on {_format_address(server.address)} (ALPN perf{workers}{preferred})",
          file=sys.stderr, flush=True)
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
    report = server_report(server, handler)
    dp = report["datapath"]
    print(
        f"stopped: {report['streams']} stream(s), received"
        f" {format_bytes(report['bytes_received'])}, sent {format_bytes(report['bytes_sent'])};"
        f" {dp.get('datagrams_sent', 0)} datagrams out, {dp.get('datagrams_received', 0)} in,"
        f" {dp.get('syscalls_per_datagram', 0.0):.3f} syscalls per datagram"
        f" ({dp.get('backend', args.backend)})",
        file=sys.stderr,
        flush=True,
    )
    if args.json:
        print(json.dumps(report), flush=True)
    return 0


def _preferred_arg(text: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT, HOST an IP address."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not IP:PORT (IPv6 as [ADDR]:PORT)") from None
    if not sep or not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be 1..65535")
    return host, number


def _read_key_file(path: str) -> bytes | None:
    """The secret in ``path`` (--token-key-file, --ticket-key-file); None when it holds
    fewer than 16 bytes."""
    with open(path, "rb") as f:
        secret = f.read()
    return secret if len(secret) >= 16 else None


def cmd_perf_server(args: argparse.Namespace) -> int:
    try:
        cid_plan(args)
    except ValueError as e:
        return _fail(f"bad QUIC-LB options: {e}", 2)
    if args.quic_lb_key is not None and args.workers is not None and not args.no_steering:
        return _fail("--quic-lb-key encrypts the worker byte: add --no-steering", 2)
    if args.workers is not None and args.migrate_listen:
        return _fail("--migrate-listen does not work with --workers yet", 2)
    if args.key and not args.cert:
        return _fail("--key needs --cert", 2)
    if args.no_steering and args.workers is None:
        return _fail("--no-steering needs --workers", 2)
    # checked before anything starts: a successor (--takeover) that failed on them
    # later would have taken the connections over already
    migrate_files = (args.migrate_cert, args.migrate_key, args.migrate_ca)
    if args.migrate_listen and not all(migrate_files):
        return _fail("--migrate-listen needs --migrate-cert, --migrate-key and --migrate-ca",
                     2)
    if any(migrate_files) and not args.migrate_listen:
        return _fail("--migrate-cert, --migrate-key and --migrate-ca need --migrate-listen",
                     2)
    for option, path in (("--token-key-file", args.token_key_file),
                         ("--ticket-key-file", args.ticket_key_file),
                         ("--migrate-cert", args.migrate_cert),
                         ("--migrate-key", args.migrate_key),
                         ("--migrate-ca", args.migrate_ca)):
        if path and not os.path.isfile(path):
            return _fail(f"{option} {path}: no such file", 2)
    try:
        with server_certificate(args, "quicflow-perf-") as (chain, key):
            config = server_configuration(
                chain,
                key,
                congestion_control=args.congestion,
                max_datagram_size=args.max_datagram,
                pmtud=args.pmtud,
                pacing=args.pacing,
                key_update_after=args.key_update_after,
                keylog_file=args.keylog,
                retry=args.retry,
            )
            if args.require_client_cert and not args.client_ca:
                return _fail("--require-client-cert needs --client-ca", 2)
            if args.client_ca:
                if not os.path.isfile(args.client_ca):
                    return _fail(f"--client-ca {args.client_ca}: no such file", 2)
                config.cafile = args.client_ca
                config.client_certificates = "require" if args.require_client_cert else "request"
            for host, port in args.preferred_address:
                family = "preferred_address_v6" if ":" in host else "preferred_address"
                if getattr(config, family) is not None:
                    return _fail("--preferred-address: at most one address per family", 2)
                setattr(config, family, (host, port))
            if args.preferred_address and args.workers is not None:
                return _fail("--preferred-address does not work with --workers yet", 2)
            config.disable_active_migration = args.disable_active_migration
            if args.token_key_file:
                secret = _read_key_file(args.token_key_file)
                if secret is None:
                    return _fail("--token-key-file must hold at least 16 bytes", 2)
                config.token_key = secret
                config.reset_key = secret
            if args.ticket_key_file:
                secret = _read_key_file(args.ticket_key_file)
                if secret is None:
                    return _fail("--ticket-key-file must hold at least 16 bytes", 2)
                config.ticket_key = secret
            config.early_data = args.early_data == "accept"
            return asyncio.run(_serve_perf(args, config))
    except (HandoffError, SnapshotError) as e:
        return _fail(f"takeover failed: {e}")
    except (OSError, ValueError) as e:
        return _fail(_describe_error(e) if isinstance(e, OSError) else str(e))


# ---------------------------------------------------------------------------- perf client


def _client_configuration(args: argparse.Namespace) -> Configuration:
    config = client_configuration(args, "perf")
    config.use_preferred_address = not args.no_preferred_address
    if args.cert:
        config.load_cert_chain(args.cert, args.key)
    return config


def _run_perf_client(
    host: str,
    port: int,
    args: argparse.Namespace,
    config: Configuration,
    *,
    verify: bool,
) -> PerfResult | int:
    """Run the client, printing progress; returns the result or an exit status."""
    return run_with_progress(
        args,
        lambda progress: run_client(
            host, port, download=args.download, upload=args.upload, streams=args.streams,
            connections=args.connections, configuration=config, backend=args.backend,
            verify=verify, timeout=args.timeout, progress=progress,
            shared_socket=getattr(args, "shared_socket", False),  # (not in demo)
        ),
        (ConnectionClosedError, PerfError, TimeoutError, OSError, ValueError),
    )  # fmt: skip


def _run_resumed(args: argparse.Namespace, config: Configuration) -> PerfResult | int:
    from ..apps.perf_resume import run_resumed_client

    return run_with_progress(
        args,
        lambda progress: run_resumed_client(
            args.host, args.port, download=args.download, upload=args.upload,
            streams=args.streams, configuration=config, backend=args.backend,
            verify=args.verify, timeout=args.timeout, early_data=args.zero_rtt,
            progress=progress,
        ),
        (ConnectionClosedError, PerfError, TimeoutError, OSError, ValueError),
    )  # fmt: skip


def _print_result(result: PerfResult, as_json: bool) -> None:
    print_result(result, as_json, summary_line)


def cmd_perf_client(args: argparse.Namespace) -> int:
    if args.cafile and not os.path.isfile(args.cafile):
        return _fail(f"--cafile {args.cafile}: no such file", 2)
    if args.key and not args.cert:
        return _fail("--key needs --cert", 2)
    try:
        config = _client_configuration(args)
    except (OSError, ValueError) as e:
        return _fail(f"--cert/--key: {e}", 2)
    if args.resume or args.zero_rtt:
        if args.connections != 1:
            return _fail("--resume/--0rtt measure one connection: drop --connections", 2)
        if args.shared_socket:
            return _fail("--resume/--0rtt measure one connection: drop --shared-socket", 2)
        outcome = _run_resumed(args, config)
    else:
        outcome = _run_perf_client(args.host, args.port, args, config, verify=args.verify)
    if isinstance(outcome, int):
        return outcome
    _print_result(outcome, args.json)
    return 0


# ---------------------------------------------------------------------------- demo


def _stderr_reader(stream: TextIO, lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _wait_listening(
    proc: subprocess.Popen[str], lines: queue.Queue[str | None], timeout: float
) -> tuple[int | None, list[str]]:
    """Read the server's stderr until "listening on"; returns (port, lines seen)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, seen
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return None, seen
        if line is None:
            return None, seen
        seen.append(line.rstrip("\n"))
        if line.startswith("listening on "):
            address = line[len("listening on ") :].split()[0]
            return int(address.rsplit(":", 1)[1]), seen


def _stop_server(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_demo(args: argparse.Namespace) -> int:
    cert, key = generate_self_signed(["localhost", "127.0.0.1"])
    with tempfile.TemporaryDirectory(prefix="quicflow-demo-") as tmp:
        cert_file = os.path.join(tmp, "cert.pem")
        key_file = os.path.join(tmp, "key.pem")
        with open(cert_file, "wb") as f:
            f.write(certificate_pem(cert))
        with open(key_file, "wb") as f:
            f.write(private_key_pem(key))
        command = [
            sys.executable, "-m", "quicflow.cli.main", "perf", "server",
            "--host", "127.0.0.1", "--port", "0", "--cert", cert_file, "--key", key_file,
            "--backend", args.backend,
        ]  # fmt: skip
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_stderr_reader, args=(proc.stderr, lines), daemon=True).start()
        try:
            port, seen = _wait_listening(proc, lines, timeout=30.0)
            if port is None:
                why = seen[-1] if seen else f"exit status {proc.poll()}"
                return _fail(f"the demo server did not start: {why}")
            config = Configuration(
                alpn_protocols=["perf"],
                cadata=certificate_pem(cert),
                server_name="localhost",
                idle_timeout=args.timeout,
            )
            demo_args = argparse.Namespace(
                download=args.size, upload=0, streams=1, connections=1,
                backend=args.backend, timeout=args.timeout, quiet=args.quiet,
            )  # fmt: skip
            outcome = _run_perf_client("127.0.0.1", port, demo_args, config, verify=True)
        finally:
            _stop_server(proc)
    if isinstance(outcome, int):
        return outcome
    _print_result(outcome, args.json)
    return 0


# ---------------------------------------------------------------------------- parser



def _add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", type=lambda t: _int_arg(t, 1, 256), default=None, metavar="N",
        help="serve from N worker processes sharing the port, steered by the worker byte "
        "of the connection ID; a supervisor restarts a worker that dies (default: one "
        "process, no supervisor)",
    )  # fmt: skip
    p.add_argument(
        "--no-steering", action="store_true",
        help="with --workers: no steering program; the kernel hashes the 4-tuple and a "
        "worker hands datagrams of other workers' connections over (misrouted_datagrams)",
    )  # fmt: skip
    add_cid_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="quicflow: a QUIC transport for Python. Tools for measuring it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    perf = sub.add_parser(
        "perf",
        help="the QUIC performance protocol (ALPN perf): server and client",
        description="The QUIC performance protocol (draft-banks-quic-performance, ALPN "
        "perf): the client asks for a number of bytes on each stream and may upload bytes; "
        "the server answers with that many bytes.",
    )
    perf_sub = perf.add_subparsers(dest="role", required=True, metavar="ROLE")

    server = perf_sub.add_parser(
        "server",
        help="run a perf server until SIGINT/SIGTERM",
        description="Run a perf server until SIGINT or SIGTERM (then exit 0). Prints "
        "'listening on ADDRESS:PORT' on stderr once ready. Without --cert it makes a "
        "self-signed certificate (for localhost, 127.0.0.1, ::1 and this host's name) "
        "and says on stderr in which file, for the client's --cafile.",
    )
    add_listen_options(server)
    server.add_argument(
        "--json", action="store_true",
        help="on exit, print one JSON object with the server's endpoint and socket "
        "counters (datagrams, syscalls, batches, lookups, drops by reason, "
        "packets_per_engine_call, segments_per_gso_call) on stdout, and "
        "'workers': per worker its pid, connections (accepted), datagrams_received, "
        "misrouted_datagrams and connected_sockets (the most held at once)",
    )  # fmt: skip
    _add_worker_options(server)
    server.add_argument(
        "--retry", choices=("never", "always", "load"), default="load",
        help="address validation with Retry: never, always, or load = once "
        "connections that have not validated their address pass a threshold "
        "(default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--token-key-file", metavar="FILE",
        help="secret (at least 16 bytes) that seals Retry/NEW_TOKEN tokens and derives "
        "stateless reset tokens; give every worker and host behind one address the same "
        "file (default: a random key per process)",
    )  # fmt: skip
    server.add_argument(
        "--ticket-key-file", metavar="FILE",
        help="secret (at least 16 bytes) that seals session tickets (resumption and "
        "0-RTT); give every worker and host behind one address the same file (default: "
        "a random key per process)",
    )  # fmt: skip
    server.add_argument(
        "--early-data", choices=("accept", "reject"), default="accept",
        help="0-RTT: accept (tickets allow it; each ticket's early data is accepted once "
        "per process) or reject (resumption only) (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--connection-sockets", type=_nonnegative_int, default=DEFAULT_CONNECTION_SOCKETS,
        metavar="N",
        help="the most connections given a UDP socket of their own, connected to the "
        "client (heavy or long-lived ones first, the rest stay on the listener); 0 = off "
        "(default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--handoff", metavar="PATH",
        help="offer this server's connections to a successor on a unix socket at PATH "
        "(mode 0600, same user only); when one takes over, print how many connections "
        "went (with --json: {\"handed_off_connections\": N}) and exit 0; with --workers "
        "the group offers at PATH and worker i at PATH.i, each worker handing over to its "
        "successor",
    )  # fmt: skip
    server.add_argument(
        "--takeover", metavar="PATH",
        help="start by taking over the socket and connections of the server offering a "
        "handoff at PATH (no new handshakes; --host/--port are then unused), then offer "
        "the same at PATH for the next successor; a worker group (--workers N) takes "
        "over a group of N workers (worker i from PATH.i). Give it the predecessor's "
        "--cert/--key and CID options (--host-id, --quic-lb-*): without --cert, new "
        "clients get a new self-signed certificate",
    )  # fmt: skip
    add_server_options(server)
    server.add_argument(
        "--client-ca", metavar="FILE",
        help="ask clients for a certificate and verify it against the CA certificates "
        "in this PEM file (clients without one are still accepted, see "
        "--require-client-cert)",
    )  # fmt: skip
    server.add_argument(
        "--require-client-cert", action="store_true",
        help="with --client-ca: refuse clients without a certificate (TLS alert "
        "certificate_required, CRYPTO_ERROR 0x174)",
    )  # fmt: skip
    server.add_argument(
        "--preferred-address", action="append", default=[], metavar="HOST:PORT",
        type=_preferred_arg,
        help="offer clients this address to move to after the handshake (RFC 9000 "
        "§9.6 preferred_address) and listen there too; IPv6 as [ADDR]:PORT; give it "
        "twice for one address of each family",
    )  # fmt: skip
    server.add_argument(
        "--disable-active-migration", action="store_true",
        help="tell clients not to move to a new address of their own "
        "(disable_active_migration; a preferred address stays allowed)",
    )  # fmt: skip
    _add_transport_options(server)
    server.set_defaults(func=cmd_perf_server)
    add_migrate_parser(perf_sub)

    client = perf_sub.add_parser(
        "client",
        help="run perf transfers against a server and report goodput",
        description="Open CONNECTIONS connections with STREAMS bidirectional streams each, "
        "all at once; the --download and --upload totals are split evenly between the "
        "streams. Goodput = (bytes received + bytes sent) / seconds, timed from the end of "
        "the handshakes to the end of the last stream; bytes count stream payload only. "
        f"SIZE is {SIZE_HELP}. Exit status 0 on success, 1 with one line on stderr saying "
        "why on failure (certificate refused, timed out, peer closed the connection...).",
    )
    client.add_argument("--host", required=True, help="server name or address")
    client.add_argument(
        "--port", type=_port_arg, default=4433, help="server UDP port (default: %(default)s)"
    )
    client.add_argument(
        "--download", type=_size_arg, default=parse_size("10M"), metavar="SIZE",
        help="total bytes to download over all streams (default: 10M = 10 MiB)",
    )  # fmt: skip
    client.add_argument(
        "--upload", type=_size_arg, default=0, metavar="SIZE",
        help="total bytes to upload over all streams (default: 0)",
    )  # fmt: skip
    client.add_argument(
        "--streams", type=_positive_int, default=1, metavar="N",
        help="streams per connection, run concurrently (default: %(default)s)",
    )  # fmt: skip
    client.add_argument(
        "--connections", type=_positive_int, default=1, metavar="N",
        help="concurrent connections (default: %(default)s)",
    )  # fmt: skip
    client.add_argument(
        "--shared-socket", action="store_true",
        help="open all connections on one shared client socket and endpoint "
        "(quicflow.client_endpoint) instead of a socket each (default: a socket each)",
    )  # fmt: skip
    add_client_tls_options(client)
    client.add_argument(
        "--cert", metavar="FILE",
        help="PEM client certificate chain, leaf first, presented when the server asks "
        "(--client-ca on the server) (default: none)",
    )  # fmt: skip
    client.add_argument(
        "--key", metavar="FILE", help="PEM private key of --cert (default: read it from --cert)"
    )
    resumption = client.add_mutually_exclusive_group()
    resumption.add_argument(
        "--resume", action="store_true",
        help="connect twice: the first connection only fetches a session ticket, the "
        "second resumes the session and is measured (--json adds resumed, "
        "early_data_accepted and zero_rtt_packets_sent); not with --connections",
    )  # fmt: skip
    resumption.add_argument(
        "--0rtt", dest="zero_rtt", action="store_true",
        help="like --resume, and the second connection sends its requests and upload as "
        "0-RTT data in its first flight (resent in 1-RTT if the server rejects it)",
    )  # fmt: skip
    client.add_argument(
        "--server-name", metavar="NAME",
        help="name to check the certificate against and send as SNI (default: --host)",
    )  # fmt: skip
    add_timeout_option(client)
    client.add_argument(
        "--verify", action="store_true",
        help="check that the response bytes are the server's pattern (exit 1 if not)",
    )  # fmt: skip
    client.add_argument(
        "--json", action="store_true",
        help="print one JSON object on stdout (bytes_received, bytes_sent, seconds, "
        "goodput_bytes_per_s, connections, streams, handshake_seconds, datagram and "
        "syscall counters, packets_lost, syscalls_per_datagram, packets_per_engine_call, "
        "segments_per_gso_call, receive_drops (datagrams the kernel dropped for a full "
        "client socket buffer), migrations (e.g. to the server's preferred address), "
        "connection_goodputs, fairness) instead of a summary line",
    )  # fmt: skip
    add_quiet_option(client)
    client.add_argument(
        "--no-preferred-address", action="store_true",
        help="stay on the server's address even when it offers a preferred address "
        "(default: validate it after the handshake and move there)",
    )  # fmt: skip
    _add_transport_options(client)
    client.set_defaults(func=cmd_perf_client)

    demo = sub.add_parser(
        "demo",
        help="run a perf server and client on this host and print the goodput",
        description="Start a perf server in a child process on 127.0.0.1 (a free port, a "
        "fresh self-signed certificate), download SIZE bytes from it over one stream with "
        f"certificate and content verification, print the goodput, stop the server. SIZE is "
        f"{SIZE_HELP}.",
    )
    demo.add_argument(
        "--size", type=_size_arg, default=parse_size("50M"), metavar="SIZE",
        help="bytes to download (default: 50M = 50 MiB)",
    )  # fmt: skip
    demo.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    demo.add_argument(
        "--backend", choices=["auto", "gso", "basic"], default="auto",
        help="UDP datapath of both ends (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--timeout", type=_seconds_arg, default=10.0, metavar="SECONDS",
        help="handshake and idle timeout (default: %(default)s)",
    )  # fmt: skip
    add_quiet_option(demo)
    demo.set_defaults(func=cmd_demo)

    add_hq_parser(sub)
    register_h3_commands(sub)  # serve, get (HTTP/3)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quicflow`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    raise_open_file_limit()
    try:
        status: int = args.func(args)
    except BrokenPipeError:  # stdout's reader went away (``| head``): no traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
