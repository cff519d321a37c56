"""What the ``quicflow`` subcommands share: argument types, byte/rate formatting, the
progress line, the one-line failure message, transport options."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TextIO, TypeVar

from cryptography import x509

from ..aio import ConnectionClosedError, QuicServer
from ..aio.workers import CidPlan, WorkerGroupServer
from ..apps.hq import HqError
from ..apps.perf import PerfError
from ..endpoint.quiclb import QuicLbConfig
from ..tls.certs import certificate_pem, generate_self_signed, load_pem_chain, load_pem_key
from ..tls.config import PrivateKey
from ..transport.config import Configuration

T = TypeVar("T")


class _Reportable(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=_Reportable)
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


def _nonnegative_int(text: str) -> int:
    return _int_arg(text, 0, None)


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


def _keylog_arg(text: str) -> str:
    """A file we can append to: the TLS layer ignores write errors (key logging must
    never break a handshake), so the command line checks it once, up front."""
    try:
        with open(text, "a", encoding="ascii"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot append to {text!r}: {e.strerror}") from None
    return text


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


def stop_event() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM (in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def say(line: str) -> None:
    """One line on stderr, written whole in one call. Worker processes share the stream:
    ``print`` writes a text and its newline apart, and with unbuffered stderr
    (PYTHONUNBUFFERED) another worker's line can land between the two, so that two
    lines read as one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


#: the soft open-file limit the command raises itself to when the hard limit is unlimited
FILE_LIMIT_CAP = 1 << 20


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (as Go's runtime does
    for every program) and return the soft limit in force. Each ``quicflow.connect()``
    has a socket of its own and a server gives busy connections one each, so the common
    soft default of 1024 stopped ``perf client --connections 2000`` at "Too many open
    files" while the hard limit allowed far more."""
    import resource

    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return -1
    want = FILE_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError):
            pass
    return int(soft)


def _fail(message: str, code: int = 1) -> int:
    """Print one line on stderr; return the exit status."""
    line = " ".join(message.split())  # exactly one line
    say(f"{PROG}: {line}")
    return code


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosedError | PerfError | HqError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return str(exc) or "timed out"
    if isinstance(exc, socket.gaierror):
        return str(exc.strerror or exc)
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"  # a file, not the network
    if isinstance(exc, OSError):
        return f"network error: {exc.strerror or exc}"
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


def add_listen_options(p: argparse.ArgumentParser) -> None:
    """--host, --port, --cert, --key of a server that makes a self-signed certificate
    without --cert (see ``server_certificate``)."""
    p.add_argument(
        "--host", default="::",
        help="address to listen on; :: accepts IPv4 and IPv6 (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--port", type=_port_arg, default=4433,
        help="UDP port, 0 for any free one (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--cert", metavar="FILE",
        help="PEM certificate chain, leaf first (default: a fresh self-signed "
        "certificate; stderr names its file, for the clients' --cafile)",
    )  # fmt: skip
    p.add_argument(
        "--key", metavar="FILE", help="PEM private key (default: read it from --cert)"
    )


@contextlib.contextmanager
def server_certificate(
    args: argparse.Namespace, prefix: str
) -> Iterator[tuple[list[x509.Certificate], PrivateKey]]:
    """The (chain, key) of --cert/--key; without --cert a fresh self-signed certificate
    for ``_certificate_hostnames(args.host)``, written to a temporary PEM file (named on
    stderr, for the clients' --cafile) that is removed on exit."""
    if args.cert:
        yield load_pem_chain(args.cert), load_pem_key(args.key or args.cert)
        return
    cert, key = generate_self_signed(_certificate_hostnames(args.host))
    fd, temp_cert = tempfile.mkstemp(prefix=prefix, suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(certificate_pem(cert))
        print(f"self-signed certificate written to {temp_cert}"
              f" (clients: --cafile {temp_cert})", file=sys.stderr, flush=True)  # fmt: skip
        yield [cert], key
    finally:
        try:
            os.unlink(temp_cert)
        except OSError:
            pass


def add_client_tls_options(p: argparse.ArgumentParser) -> None:
    """--insecure or --cafile (one of them) of a client."""
    trust = p.add_mutually_exclusive_group()
    trust.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate"
    )
    trust.add_argument(
        "--cafile", metavar="FILE",
        help="PEM file of the CA certificates to trust (default: the system store)",
    )  # fmt: skip


def add_timeout_option(p: argparse.ArgumentParser) -> None:
    """--timeout of a client (handshake and idle timeout)."""
    p.add_argument(
        "--timeout", type=_seconds_arg, default=10.0, metavar="SECONDS",
        help="give up when the handshake takes longer, or the server stays silent for "
        "longer (the idle timeout) (default: %(default)s)",
    )  # fmt: skip


def add_quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def client_configuration(args: argparse.Namespace, alpn: str) -> Configuration:
    """The client Configuration of --insecure/--cafile, --server-name, --timeout and the
    transport options."""
    return Configuration(
        alpn_protocols=[alpn], verify_peer=not args.insecure, cafile=args.cafile,
        server_name=args.server_name, congestion_control=args.congestion,
        max_datagram_size=args.max_datagram, idle_timeout=args.timeout,
        keylog_file=args.keylog, pmtud=args.pmtud, pacing=args.pacing,
        key_update_after=args.key_update_after,
    )  # fmt: skip


def run_with_progress(
    args: argparse.Namespace,
    run: Callable[[Progress | None], Coroutine[Any, Any, T]],
    errors: tuple[type[BaseException], ...],
) -> T | int:
    """``asyncio.run(run(progress))`` with a progress line on stderr unless --quiet; the
    result, or the exit status after one line on stderr (130 when interrupted, 1 for
    ``errors``)."""
    progress = None if args.quiet else Progress(sys.stderr)
    try:
        result = asyncio.run(run(progress))
    except KeyboardInterrupt:
        if progress is not None:
            progress.finish()
        return _fail("interrupted", 130)
    except errors as e:
        if progress is not None:
            progress.finish()
        return _fail(_describe_error(e))
    if progress is not None:
        progress.finish()
    return result


def print_result(result: R, as_json: bool, text: Callable[[R], str]) -> None:
    """``result.to_dict()`` as one JSON object (--json) or ``text(result)`` on stdout."""
    if as_json:
        print(json.dumps(result.to_dict(), sort_keys=True), flush=True)
    else:
        print(text(result), flush=True)


def report_handoff(
    as_json: bool, server: QuicServer | WorkerGroupServer,
    handed: asyncio.Future[int],
) -> int:
    """The old process after a takeover (``--handoff``): say on stderr how many
    connections went (with ``as_json``, ``{"handed_off_connections": N}`` on stdout);
    the exit status: 0, or 1 when the handoff failed."""
    if handed.exception() is not None:
        return _fail(f"handoff failed: {handed.exception()}")
    count = handed.result()
    if isinstance(server, QuicServer):
        t = server.handover.timings
        print(f"handed off {count} connection(s) to the successor (stop "
              f"{t.get('stop', 0):.3f} s, capture {t.get('capture', 0):.3f} s, send "
              f"{t.get('send', 0):.3f} s, until restored {t.get('ack', 0):.3f} s,"
              f" {int(t.get('bytes', 0))} bytes of snapshots)", file=sys.stderr, flush=True)
    else:
        print(f"handed off {count} connection(s) to the successor group "
              f"({len(server.group)} workers)", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({"handed_off_connections": count}), flush=True)
    return 0


def _hex_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hexadecimal: {text!r}") from None
    if len(key) != 16:
        raise argparse.ArgumentTypeError(f"must be 16 bytes (32 hex digits), got {len(key)}")
    return key


def add_cid_options(p: argparse.ArgumentParser) -> None:
    """The connection ID options (QUIC-LB server ID: host ID and worker byte) of a server
    behind a balancer that routes by them; :func:`cid_plan` reads them."""
    p.add_argument(
        "--host-id", type=lambda t: _int_arg(t, 0, None), default=0, metavar="N",
        help="this host's ID in the server ID of every connection ID (QUIC-LB), for a "
        "load balancer that routes by it (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--host-id-len", type=lambda t: _int_arg(t, 0, 14), default=1, metavar="BYTES",
        help="bytes of the host ID; the server ID is these plus one worker byte "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--quic-lb-config-id", type=lambda t: _int_arg(t, 0, 6), default=0, metavar="N",
        help="QUIC-LB config rotation bits of the connection IDs, 0..6 (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--quic-lb-nonce-len", type=lambda t: _int_arg(t, 4, 18), default=5, metavar="BYTES",
        help="QUIC-LB nonce bytes; CID length = 1 + server ID + nonce <= 20 "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--quic-lb-key", type=_hex_key, metavar="HEX",
        help="16-byte AES key (32 hex digits) to encrypt the server ID (QUIC-LB single- or "
        "four-pass); needs --no-steering with --workers (default: plaintext)",
    )  # fmt: skip


def cid_plan(args: argparse.Namespace) -> CidPlan:
    """The CID plan of the command line (ValueError when the options do not fit)."""
    key = args.quic_lb_key
    quic_lb = QuicLbConfig(
        config_id=args.quic_lb_config_id, server_id_len=args.host_id_len + 1,
        nonce_len=args.quic_lb_nonce_len, key=key,
    )  # fmt: skip
    return CidPlan(quic_lb, args.host_id)


def _add_transport_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--congestion", choices=["cubic", "newreno"], default="cubic",
        help="congestion controller (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--pacing", choices=["auto", "on", "off"], default="auto",
        help="pace sends (RFC 9002 7.7): auto = on every path but one to a loopback "
        "address, where the congestion window alone bounds a burst (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-datagram", type=_datagram_arg, default=1452, metavar="N",
        help="largest UDP payload to send, 1200..65527 bytes; with path MTU discovery "
        "the ceiling it probes up to from 1200 (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--no-pmtud", dest="pmtud", action="store_false",
        help="no path MTU discovery: send --max-datagram sized datagrams from the start "
        "(the path must carry them)",
    )  # fmt: skip
    p.add_argument(
        "--key-update-after", type=lambda t: _int_arg(t, 1, None), default=None,
        metavar="PACKETS",
        help="start a 1-RTT key update once this many packets went out under one key "
        "(default: three quarters of the cipher's confidentiality limit, RFC 9001 6.6: "
        "2^23 packets for AES-GCM)",
    )  # fmt: skip
    p.add_argument(
        "--backend", choices=["auto", "gso", "basic"], default="auto",
        help="UDP datapath: gso = batched sends with UDP_SEGMENT and GRO receives, "
        "basic = one syscall per datagram, auto = gso when the kernel supports it "
        "(default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--keylog", metavar="FILE", type=_keylog_arg,
        help="append TLS secrets to FILE in SSLKEYLOGFILE format, for Wireshark/tshark "
        "(default: $SSLKEYLOGFILE when set, else none)",
    )  # fmt: skip

