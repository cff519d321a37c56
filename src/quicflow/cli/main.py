"""The ``quicflow`` command: ``quicflow perf server``, ``quicflow perf client``, ``quicflow demo``.

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
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, TextIO

from ..aio import ConnectionClosedError
from ..apps.perf import PerfError, PerfResult, run_client, server_configuration, start_server
from ..tls.certs import (
    certificate_pem,
    generate_self_signed,
    load_pem_chain,
    load_pem_key,
    private_key_pem,
)
from ..transport.config import Configuration

PROG = "quicflow"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SIZE_HELP = "bytes, or with a K, M or G suffix for KiB (1024), MiB (1024²) or GiB (1024³)"


# ---------------------------------------------------------------------------- argument types


def parse_size(text: str) -> int:
    """A byte count: "100", "1K" (1024), "3M" (3·1024²), "2G" (2·1024³), "1.5M".

    The suffix is case-insensitive and may be followed by "B" or "iB" ("4MiB", "4MB" —
    both 1024-based). Raises ValueError for anything else (and for negative sizes).
    """
    s = text.strip().upper()
    if s.endswith("IB"):
        s = s[:-2]
        if not s or s[-1] not in "KMG":
            raise ValueError(f"invalid size {text!r}: expected e.g. 100, 64K, 5M or 2G")
    elif s.endswith("B"):
        s = s[:-1]
    unit = s[-1:] if s[-1:] in ("K", "M", "G") else ""
    number = s[: len(s) - len(unit)].strip()
    if not number or not all(c.isdigit() or c == "." for c in number) or number.count(".") > 1:
        raise ValueError(f"invalid size {text!r}: expected e.g. 100, 64K, 5M or 2G")
    if "." in number:
        value = int(float(number) * _UNITS[unit])
    else:
        value = int(number) * _UNITS[unit]
    return value


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int_arg(text: str, low: int, high: int | None, what: str = "an integer") -> int:
    """An integer argument in ``low..high`` (no upper bound when ``high`` is None)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if high is None and value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}: {value}")
    if high is not None and not low <= value <= high:
        message = "port out of range" if what == "a port number" else (
            f"must be between {low} and {high}")
        raise argparse.ArgumentTypeError(f"{message}: {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_arg(text, 1, None)


def _port_arg(text: str) -> int:
    return _int_arg(text, 0, 65535, "a port number")


def _datagram_arg(text: str) -> int:
    return _int_arg(text, 1200, 65527)


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


# ---------------------------------------------------------------------------- formatting


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: "512 B", "12.3 KiB", "45.6 MiB", "1.20 GiB"."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit, scale in (("KiB", 1 << 10), ("MiB", 1 << 20)):
        if n < 1024 * scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / (1 << 30):.2f} GiB"


def format_rate(bytes_per_s: float) -> str:
    return f"{format_bytes(bytes_per_s)}/s"


def summary_line(result: PerfResult) -> str:
    conns = result.connections
    per_conn = result.streams // max(conns, 1)
    return (
        f"received {format_bytes(result.bytes_received)}, sent {format_bytes(result.bytes_sent)}"
        f" in {result.seconds:.3f} s: goodput {format_rate(result.goodput_bytes_per_s)}"
        f" ({result.goodput_bytes_per_s * 8 / 1e9:.2f} Gbit/s);"
        f" {conns} connection(s) x {per_conn} stream(s),"
        f" handshake {result.handshake_seconds * 1000:.1f} ms"
    )


class Progress:
    """Prints "<bytes moved>  <rate>" on stderr: one updating line on a TTY, else a line
    each time."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_bytes = 0
        self.last_time = 0.0
        self.printed = False

    def __call__(self, received: int, sent: int, elapsed: float) -> None:
        moved = received + sent
        dt = elapsed - self.last_time
        rate = (moved - self.last_bytes) / dt if dt > 0 else 0.0
        self.last_bytes, self.last_time = moved, elapsed
        text = f"{format_bytes(moved)}  {format_rate(rate)}"
        if self.tty:
            self.stream.write(f"\r{text:<32}")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.printed = True

    def finish(self) -> None:
        if self.tty and self.printed:
            self.stream.write("\r" + " " * 32 + "\r")
            self.stream.flush()


def _fail(message: str, code: int = 1) -> int:
    """Print one line on stderr; return the exit status."""
    line = " ".join(message.split())  # exactly one line
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
    return code


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosedError | PerfError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, OSError):
        return f"network error: {exc}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- perf server


def _format_address(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _certificate_hostnames(host: str) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    try:
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified and str(ip) not in names:
            names.append(str(ip))
    except ValueError:
        if host and host not in names:
            names.append(host)
    hostname = socket.gethostname()
    if hostname and hostname not in names:
        names.append(hostname)
    return names


async def _serve_perf(args: argparse.Namespace, config: Configuration) -> int:
    server, handler = await start_server(
        args.host, args.port, configuration=config, backend=args.backend
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {_format_address(server.address)} (ALPN perf)", file=sys.stderr,
          flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
    s = handler.stats
    counters = server.stats()
    dp = counters["datapath"]
    print(
        f"stopped: {s.streams} stream(s), received {format_bytes(s.bytes_received)},"
        f" sent {format_bytes(s.bytes_sent)}; {dp['datagrams_sent']} datagrams out,"
        f" {dp['datagrams_received']} in, {dp['syscalls_per_datagram']:.3f} syscalls"
        f" per datagram ({dp['backend']})",
        file=sys.stderr,
        flush=True,
    )
    if args.json:
        out = {
            "streams": s.streams,
            "bytes_received": s.bytes_received,
            "bytes_sent": s.bytes_sent,
            "endpoint": counters["endpoint"],
            "datapath": dp,
            "packets_per_engine_call": counters["endpoint"]["packets_per_engine_call"],
            "segments_per_gso_call": dp["segments_per_gso_call"],
        }
        print(json.dumps(out), flush=True)
    return 0


def cmd_perf_server(args: argparse.Namespace) -> int:
    temp_cert: str | None = None
    try:
        if args.cert:
            chain = load_pem_chain(args.cert)
            key = load_pem_key(args.key or args.cert)
        else:
            if args.key:
                return _fail("--key needs --cert", 2)
            cert, key = generate_self_signed(_certificate_hostnames(args.host))
            chain = [cert]
            fd, temp_cert = tempfile.mkstemp(prefix="quicflow-perf-", suffix=".pem")
            with os.fdopen(fd, "wb") as f:
                f.write(certificate_pem(cert))
            print(
                f"self-signed certificate written to {temp_cert}"
                f" (clients: --cafile {temp_cert})",
                file=sys.stderr,
                flush=True,
            )
        config = server_configuration(
            chain,
            key,
            congestion_control=args.congestion,
            max_datagram_size=args.max_datagram,
            keylog_file=args.keylog,
        )
        return asyncio.run(_serve_perf(args, config))
    except (OSError, ValueError) as e:
        return _fail(_describe_error(e) if isinstance(e, OSError) else str(e))
    finally:
        if temp_cert is not None:
            try:
                os.unlink(temp_cert)
            except OSError:
                pass


# ---------------------------------------------------------------------------- perf client


def _client_configuration(args: argparse.Namespace) -> Configuration:
    return Configuration(
        alpn_protocols=["perf"],
        verify_peer=not args.insecure,
        cafile=args.cafile,
        server_name=args.server_name,
        congestion_control=args.congestion,
        max_datagram_size=args.max_datagram,
        idle_timeout=args.timeout,
        keylog_file=args.keylog,
    )


def _run_perf_client(
    host: str,
    port: int,
    args: argparse.Namespace,
    config: Configuration,
    *,
    verify: bool,
) -> PerfResult | int:
    """Run the client, printing progress; returns the result or an exit status."""
    progress = None if args.quiet else Progress(sys.stderr)
    try:
        result = asyncio.run(
            run_client(
                host,
                port,
                download=args.download,
                upload=args.upload,
                streams=args.streams,
                connections=args.connections,
                configuration=config,
                backend=args.backend,
                verify=verify,
                timeout=args.timeout,
                progress=progress,
            )
        )
    except KeyboardInterrupt:
        if progress is not None:
            progress.finish()
        return _fail("interrupted", 130)
    except (ConnectionClosedError, PerfError, TimeoutError, OSError, ValueError) as e:
        if progress is not None:
            progress.finish()
        return _fail(_describe_error(e))
    if progress is not None:
        progress.finish()
    return result


def _print_result(result: PerfResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), sort_keys=True), flush=True)
    else:
        print(summary_line(result), flush=True)


def cmd_perf_client(args: argparse.Namespace) -> int:
    if args.cafile and not os.path.isfile(args.cafile):
        return _fail(f"--cafile {args.cafile}: no such file", 2)
    config = _client_configuration(args)
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


def _add_transport_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--congestion", choices=["cubic", "newreno"], default="cubic",
        help="congestion controller (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-datagram", type=_datagram_arg, default=1200, metavar="N",
        help="largest UDP payload to send, 1200..65527 bytes (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--backend", choices=["auto", "gso", "basic"], default="auto",
        help="UDP datapath: gso = batched sends with UDP_SEGMENT and GRO receives, "
        "basic = one syscall per datagram, auto = gso when the kernel supports it "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--keylog", metavar="FILE",
        help="append TLS secrets to FILE in SSLKEYLOGFILE format (for Wireshark)",
    )  # fmt: skip


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
    server.add_argument(
        "--host", default="::",
        help="address to listen on; :: accepts IPv4 and IPv6 (default: %(default)s)",
    )  # fmt: skip
    server.add_argument(
        "--port", type=_port_arg, default=4433,
        help="UDP port, 0 for any free one (default: %(default)s)",
    )  # fmt: skip
    server.add_argument("--cert", metavar="FILE", help="PEM certificate chain, leaf first")
    server.add_argument(
        "--key", metavar="FILE", help="PEM private key (default: read it from --cert)"
    )
    server.add_argument(
        "--json", action="store_true",
        help="on exit, print one JSON object with the server's endpoint and socket "
        "counters (datagrams, syscalls, batches, lookups, drops by reason, "
        "packets_per_engine_call, segments_per_gso_call) on stdout",
    )  # fmt: skip
    _add_transport_options(server)
    server.set_defaults(func=cmd_perf_server)

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
    trust = client.add_mutually_exclusive_group()
    trust.add_argument(
        "--insecure", action="store_true",
        help="do not verify the server's certificate",
    )  # fmt: skip
    trust.add_argument(
        "--cafile", metavar="FILE",
        help="PEM file of the CA certificates to trust (default: the system store)",
    )  # fmt: skip
    client.add_argument(
        "--server-name", metavar="NAME",
        help="name to check the certificate against and send as SNI (default: --host)",
    )  # fmt: skip
    client.add_argument(
        "--timeout", type=_seconds_arg, default=10.0, metavar="SECONDS",
        help="give up when the handshake takes longer, or the server stays silent for "
        "longer (the idle timeout) (default: %(default)s)",
    )  # fmt: skip
    client.add_argument(
        "--verify", action="store_true",
        help="check that the response bytes are the server's pattern",
    )  # fmt: skip
    client.add_argument(
        "--json", action="store_true",
        help="print one JSON object on stdout (bytes_received, bytes_sent, seconds, "
        "goodput_bytes_per_s, connections, streams, handshake_seconds, datagram and "
        "syscall counters, packets_lost, syscalls_per_datagram, packets_per_engine_call, "
        "segments_per_gso_call, connection_goodputs, fairness) instead of a summary line",
    )  # fmt: skip
    client.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines on stderr"
    )
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
    demo.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines on stderr"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``quicflow`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
