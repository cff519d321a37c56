"""Compare quicflow with aioquic and qh3 on this machine: perf (ALPN perf) downloads.

Run: ``.venv/bin/python bench/run.py [--size 200M] [--repeat 3] [--write]`` (as root for
scenario b, which creates two network namespaces). ``make bench`` runs it with defaults.

Every implementation runs as a perf server and a perf client in two separate processes
(quicflow: ``quicflow perf server|client``; aioquic and qh3: ``bench/peers/*_perf.py``,
which speak the same protocol and print the same JSON), with the same UDP payload cap on
both ends. A fresh server is started for every run. Scenarios:

  a  one connection downloads SIZE on loopback (127.0.0.1), 1200-byte datagrams
  b  the same over a veth pair (MTU 1500) between two network namespaces made for the run
     (server in one, client in the other), 1452-byte datagrams
  c  8 connections in parallel download SIZE in total on loopback, 1200-byte datagrams
  d  syscalls per datagram on the sending (server) and receiving (client) side of
     scenario a, counted with ``strace -f -c`` in separate, shorter runs (strace slows
     the processes down, so goodput is never measured under strace)

For a to c each implementation runs REPEAT times (implementations interleaved); the table
gives the median goodput (stream payload bytes / seconds from the end of the handshakes to
the last byte, as the client measures it) with the range, and the ratios of the medians.
For d, each implementation runs once with --strace-size and once with a 1-byte download,
and the second is subtracted from the first (so process start-up, imports, the handshake
and the close are not counted); datagram counts are the client's (the server's sent =
the client's received, and vice versa; on loopback losses are rare and ignored).

The markdown table goes to stdout, progress lines to stderr; --write also appends the
table to bench/RESULTS.md under "## bench/run.py — <date>".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)  # tests.support.netns
sys.path.insert(0, os.path.join(ROOT, "src"))

from quicflow.tls.certs import (  # noqa: E402
    certificate_pem,
    generate_self_signed,
    private_key_pem,
)

IMPLEMENTATIONS = ("quicflow", "aioquic", "qh3")
SCENARIOS = ("a", "b", "c", "d")
SCENARIO_TITLES = {
    "a": "a: 1 connection, loopback, 1200 B datagrams",
    "b": "b: 1 connection, veth MTU 1500 (netns), 1452 B datagrams",
    "c": "c: 8 connections, loopback, 1200 B datagrams",
}
SEND_CALLS = ("sendmsg", "sendto", "sendmmsg")
RECV_CALLS = ("recvmsg", "recvfrom", "recvmmsg")
OTHER_CALLS = ("read", "write")
WAIT_CALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
TRACED = SEND_CALLS + RECV_CALLS + OTHER_CALLS + WAIT_CALLS
NETNS_SERVER_IP = "10.77.0.1"
NETNS_CLIENT_IP = "10.77.0.2"
NETNS_PORT = 4433

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    """``100``, ``64K``, ``200M``, ``1G``: 1024-based, as quicflow's CLI reads them."""
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in ("K", "M", "G") else ""
    try:
        value = int(float(s[: len(s) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 200M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return value


def _choices(allowed: Sequence[str]) -> Any:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(allowed)}, got {text!r}"
            )
        return [x for x in allowed if x in items]

    return parse


# ---------------------------------------------------------------------------- commands


@dataclass
class Impl:
    name: str
    cert: str
    key: str

    def server(self, host: str, port: int, max_datagram: int) -> list[str]:
        common = ["--host", host, "--port", str(port), "--cert", self.cert, "--key", self.key]
        dg = ["--max-datagram", str(max_datagram)]
        if self.name == "quicflow":
            return [sys.executable, "-m", "quicflow", "perf", "server", *common, *dg]
        script = os.path.join(BENCH, "peers", f"{self.name}_perf.py")
        return [sys.executable, script, "server", *common, *dg]

    def client(
        self, host: str, port: int, size: int, max_datagram: int, connections: int
    ) -> list[str]:
        common = [
            "--host", host, "--port", str(port), "--download", str(size), "--insecure",
            "--json", "--max-datagram", str(max_datagram), "--connections", str(connections),
            "--timeout", "30",
        ]  # fmt: skip
        if self.name == "quicflow":
            return [sys.executable, "-m", "quicflow", "perf", "client", "-q", *common]
        script = os.path.join(BENCH, "peers", f"{self.name}_perf.py")
        return [sys.executable, script, "client", *common]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def strace_argv(output: str) -> list[str]:
    return ["strace", "-f", "--seccomp-bpf", "-c", "-o", output, "-e",
            "trace=" + ",".join(TRACED)]  # fmt: skip


def parse_strace(path: str) -> dict[str, int]:
    """Calls per syscall name from an ``strace -c`` summary."""
    calls: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[-1] in TRACED and parts[3].isdigit():
                calls[parts[-1]] = int(parts[3])
    return calls


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log_path: str

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        """SIGTERM (a clean exit, so strace writes its summary), then SIGKILL after 20 s."""
        if self.proc.poll() is None:
            target = self.proc.pid
            # Under strace the server is strace's child: signal the traced process itself.
            try:
                with open(f"/proc/{target}/task/{target}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                kids = []
            if os.path.basename(self.proc.args[0]) == "strace" and kids:  # type: ignore[index]
                target = kids[0]
            try:
                os.kill(target, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def running_server(argv: list[str], workdir: str, timeout: float = 30.0) -> Iterator[Server]:
    fd, log_path = tempfile.mkstemp(prefix="server-", suffix=".log", dir=workdir)
    with os.fdopen(fd, "wb") as logf:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    server = Server(proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while "listening on" not in server.output():
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}): {server.output()[-400:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not listening after {timeout:.0f} s")
            time.sleep(0.05)
        time.sleep(0.1)
        yield server
    finally:
        server.stop()


def run_client(argv: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise RuntimeError(f"client failed: {why}")
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"client printed no JSON: {done.stdout[-200:]!r}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------------------------------------------------------------------------- goodput


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # bytes/s
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def text(self) -> str:
        m = self.median
        if m is None:
            return "failed"
        out = f"{m / 1e6:.1f}"
        if len(self.values) > 1:
            out += f" ({min(self.values) / 1e6:.1f}–{max(self.values) / 1e6:.1f})"
        if self.failures:
            out += f" [{len(self.failures)} failed]"
        return out


def client_timeout(size: int) -> float:
    return 60.0 + size / 2e6  # even at 2 MB/s


def goodput_runs(
    scenario: str, impls: list[Impl], args: argparse.Namespace, workdir: str
) -> dict[str, Cell]:
    cells = {impl.name: Cell() for impl in impls}
    connections = 8 if scenario == "c" else 1
    max_dg = 1452 if scenario == "b" else 1200
    pair = None
    if scenario == "b":
        from tests.support.netns import NetnsPair, exec_argv

        pair = NetnsPair(
            a_cidr=f"{NETNS_SERVER_IP}/24", b_cidr=f"{NETNS_CLIENT_IP}/24", mtu=1500
        ).create()
        log(f"created namespaces {pair.a} (server) and {pair.b} (client), veth MTU 1500")
    try:
        for rep in range(args.repeat):
            for impl in impls:
                if pair is not None:
                    host, port = NETNS_SERVER_IP, NETNS_PORT
                    srv = exec_argv(pair.a, impl.server(host, port, max_dg))
                    cli = exec_argv(pair.b, impl.client(host, port, args.size, max_dg, connections))
                else:
                    host, port = "127.0.0.1", free_udp_port()
                    srv = impl.server(host, port, max_dg)
                    cli = impl.client(host, port, args.size, max_dg, connections)
                label = f"[{scenario}] {impl.name} run {rep + 1}/{args.repeat}"
                try:
                    with running_server(srv, workdir):
                        result = run_client(cli, client_timeout(args.size))
                    got = int(result["bytes_received"])
                    if got != args.size:
                        raise RuntimeError(f"received {got} of {args.size} bytes")
                    rate = float(result["goodput_bytes_per_s"])
                    cells[impl.name].values.append(rate)
                    log(f"{label}: {rate / 1e6:.1f} MB/s ({result['seconds']:.2f} s)")
                except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                    cells[impl.name].failures.append(str(e))
                    log(f"{label}: FAILED: {e}")
    finally:
        if pair is not None:
            pair.remove()
            log(f"removed namespaces {pair.a} and {pair.b}")
    return cells


def goodput_table(results: dict[str, dict[str, Cell]], impls: list[Impl]) -> list[str]:
    names = [i.name for i in impls]
    ratios = [f"quicflow/{n}" for n in names if n != "quicflow"] if "quicflow" in names else []
    head = ["scenario", *(f"{n} MB/s" for n in names), *ratios]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario, cells in results.items():
        row = [SCENARIO_TITLES[scenario], *(cells[n].text() for n in names)]
        q = cells["quicflow"].median if "quicflow" in cells else None
        for n in names:
            if n == "quicflow" or not ratios:
                continue
            other = cells[n].median
            row.append(f"{q / other:.2f}" if q is not None and other else "–")
        lines.append("| " + " | ".join(row) + " |")
    return lines


# ---------------------------------------------------------------------------- syscalls


@dataclass
class SideCount:
    dgrams_out: int
    dgrams_in: int
    calls: dict[str, int]

    def sum(self, names: Sequence[str]) -> int:
        return sum(self.calls.get(n, 0) for n in names)


def strace_once(impl: Impl, size: int, workdir: str) -> tuple[SideCount, SideCount]:
    """One traced transfer: (server side, client side) counts."""
    port = free_udp_port()
    s_out = os.path.join(workdir, f"strace-{impl.name}-{size}-server.txt")
    c_out = os.path.join(workdir, f"strace-{impl.name}-{size}-client.txt")
    srv = [*strace_argv(s_out), *impl.server("127.0.0.1", port, 1200)]
    cli = [*strace_argv(c_out), *impl.client("127.0.0.1", port, size, 1200, 1)]
    with running_server(srv, workdir, timeout=60.0):
        result = run_client(cli, 2 * client_timeout(size))
    got = int(result["bytes_received"])
    if got != size:
        raise RuntimeError(f"received {got} of {size} bytes")
    d_in = int(result.get("datagrams_received", 0))
    d_out = int(result.get("datagrams_sent", 0))
    client = SideCount(d_out, d_in, parse_strace(c_out))
    server = SideCount(d_in, d_out, parse_strace(s_out))  # mirrored: see module docstring
    return server, client


def _minus(a: SideCount, b: SideCount) -> SideCount:
    names = set(a.calls) | set(b.calls)
    return SideCount(
        a.dgrams_out - b.dgrams_out,
        a.dgrams_in - b.dgrams_in,
        {n: a.calls.get(n, 0) - b.calls.get(n, 0) for n in names},
    )


def syscall_runs(
    impls: list[Impl], size: int, workdir: str
) -> dict[str, tuple[SideCount, SideCount] | str]:
    out: dict[str, tuple[SideCount, SideCount] | str] = {}
    for impl in impls:
        try:
            log(f"[d] {impl.name}: strace run, {size} bytes")
            big = strace_once(impl, size, workdir)
            log(f"[d] {impl.name}: strace baseline run, 1 byte")
            small = strace_once(impl, 1, workdir)
            out[impl.name] = (_minus(big[0], small[0]), _minus(big[1], small[1]))
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            out[impl.name] = str(e)
            log(f"[d] {impl.name}: FAILED: {e}")
    return out


def _per(n: int, d: int) -> str:
    return f"{n / d:.3f}" if d > 0 else "–"


def syscall_table(counts: dict[str, tuple[SideCount, SideCount] | str]) -> list[str]:
    head = [
        "implementation", "side", "datagrams out", "datagrams in", "send calls",
        "recv calls", "read+write", "epoll_wait", "send calls / dgram out",
        "recv calls / dgram in", "I/O calls / dgram",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, value in counts.items():
        if isinstance(value, str):
            lines.append(f"| {name} | failed: {value} |" + " |" * (len(head) - 2))
            continue
        for side, c in zip(("sender (server)", "receiver (client)"), value, strict=True):
            send, recv = c.sum(SEND_CALLS), c.sum(RECV_CALLS)
            other, wait = c.sum(OTHER_CALLS), c.sum(WAIT_CALLS)
            row = [
                name, side, str(c.dgrams_out), str(c.dgrams_in), str(send), str(recv),
                str(other), str(wait), _per(send, c.dgrams_out), _per(recv, c.dgrams_in),
                _per(send + recv + other, c.dgrams_out + c.dgrams_in),
            ]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    return lines


# ---------------------------------------------------------------------------- report


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in IMPLEMENTATIONS:
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} (not installed)")
    return ", ".join(parts)


def report(
    args: argparse.Namespace,
    command: str,
    goodput: dict[str, dict[str, Cell]],
    syscalls: dict[str, tuple[SideCount, SideCount] | str] | None,
    impls: list[Impl],
) -> str:
    today = datetime.date.today().isoformat()
    out = [
        f"## bench/run.py — {today}",
        "",
        f"- Command: `{command}`",
        f"- Machine: {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
        f"{platform.python_version()}; {versions()}.",
        f"- Download of {args.size} bytes ({args.size / (1 << 20):g} MiB) per run "
        f"(scenario c: in total over 8 connections), {args.repeat} runs per cell; server "
        "and client in separate processes, a fresh server per run; both ends capped to the "
        "same UDP payload size. aioquic and qh3 run `bench/peers/*_perf.py` (event-level "
        "perf server and client, 16 MiB connection and stream receive windows, each "
        "library's default congestion control, qh3 without PMTU probing); quicflow runs "
        "its `quicflow perf` CLI with defaults.",
        "- Goodput: stream payload bytes / seconds from the end of the handshake(s) to the "
        "last byte, as each client measures it; MB/s = 10⁶ bytes/s; median (min–max).",
        "",
    ]
    if goodput:
        out += goodput_table(goodput, impls)
        out.append("")
    if syscalls is not None:
        out += [
            f"Syscalls per datagram (scenario a at {args.strace_size} bytes under "
            "`strace -f -c`, minus a 1-byte run of the same; datagram counts from the "
            "client, the server's mirrored; send = sendmsg+sendto+sendmmsg, recv = "
            "recvmsg+recvfrom+recvmmsg; I/O calls = send+recv+read+write):",
            "",
        ]
        out += syscall_table(syscalls)
        out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--size", type=parse_size, default=parse_size("200M"), metavar="SIZE",
        help="bytes to download per run, with K/M/G suffixes (1024-based) (default: 200M)",
    )  # fmt: skip
    p.add_argument(
        "--repeat", type=int, default=3, metavar="N",
        help="runs per implementation and scenario; the median is reported (default: 3)",
    )  # fmt: skip
    p.add_argument(
        "--only", type=_choices(IMPLEMENTATIONS), default=list(IMPLEMENTATIONS),
        metavar="LIST", help="implementations to run, e.g. quicflow,qh3 (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--scenarios", type=_choices(SCENARIOS), default=list(SCENARIOS), metavar="LIST",
        help="scenarios to run, e.g. a,c (default: a,b,c,d)",
    )  # fmt: skip
    p.add_argument(
        "--strace-size", type=parse_size, default=None, metavar="SIZE",
        help="download size of the strace runs of scenario d (default: SIZE/4, at most 50M)",
    )  # fmt: skip
    p.add_argument(
        "--write", action="store_true",
        help="append the results to bench/RESULTS.md under '## bench/run.py — <date>'",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.strace_size is None:
        args.strace_size = min(max(args.size // 4, 1 << 20), 50 << 20)
    if "b" in args.scenarios and os.geteuid() != 0:
        parser.error("scenario b creates network namespaces: run as root or drop b")
    if "d" in args.scenarios and not any(
        os.access(os.path.join(d, "strace"), os.X_OK)
        for d in os.environ.get("PATH", "").split(os.pathsep)
    ):
        parser.error("scenario d needs strace (apt-get install -y strace)")
    command = shlex.join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="quicflow-bench-") as workdir:
        cert, key = generate_self_signed(["localhost", "127.0.0.1", NETNS_SERVER_IP])
        cert_file, key_file = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        with open(cert_file, "wb") as f:
            f.write(certificate_pem(cert))
        with open(key_file, "wb") as f:
            f.write(private_key_pem(key))
        impls = [Impl(name, cert_file, key_file) for name in args.only]
        goodput: dict[str, dict[str, Cell]] = {}
        for scenario in args.scenarios:
            if scenario != "d":
                log(f"scenario {SCENARIO_TITLES[scenario]}")
                goodput[scenario] = goodput_runs(scenario, impls, args, workdir)
        syscalls = None
        if "d" in args.scenarios:
            log("scenario d: syscalls per datagram (strace)")
            syscalls = syscall_runs(impls, args.strace_size, workdir)
    text = report(args, command, goodput, syscalls, impls)
    print(text, flush=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    if args.write:
        path = os.path.join(BENCH, "RESULTS.md")
        with open(path, "a") as f:
            f.write("\n" + text)
        log(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
