"""CPU per handshake: a server in its own process, a quicflow client in this one.

Run: ``.venv/bin/python bench/handshake.py [--server quicflow|aioquic|qh3]
[--handshakes 300] [--concurrency 8] [--idle 0] [--client endpoint|connect]``
(``--server ngtcp2 --alpn h3`` for Debian's ngtcp2-server, which speaks HTTP/3 only: the
client offers ALPN h3 and closes right after the handshake, so only the handshake runs)

``--request BYTES`` (quicflow's server and client endpoint): each connection, once its
handshake is complete, opens a bidirectional stream and makes one perf request for BYTES
(the server runs ``quicflow.apps.perf``'s handler), reads the response to its FIN, then
closes: the figures are then per short connection, to compare with handshake-only runs.

The client's side: ``--client aioquic`` runs aioquic's client instead of quicflow's (for
its client CPU figure, against the same server); ``--client-profile FILE`` cProfiles this
(client) process over the measured loop only; ``--verify [BUNDLE]`` makes the client
(quicflow's or aioquic's) verify the server's certificate (name "localhost") against a CA
file holding BUNDLE (default: the system bundle) and the test certificate. The JSON also
has ``client_user_ms_per_handshake`` and ``client_system_ms_per_handshake``
(``os.times``) and ``verify``.

The server (quicflow: ``bench/handshake.py serve``, a quicflow server with a 600 s idle
timeout; aioquic/qh3: ``bench/peers/*_perf.py server``; all ALPN ``perf``) is started on
127.0.0.1. With ``--idle K`` the client first opens K connections on one client endpoint
and leaves them open (idle) for the whole run. Then it runs HANDSHAKES connections,
CONCURRENCY at a time: connect, wait for the handshake to complete, close (code 0), wait
until closed. Printed (one JSON object on stdout, progress on stderr):

- ``server_cpu_ms_per_handshake``: user + system CPU of the server process (from
  /proc/PID/stat) over the measured loop, divided by HANDSHAKES;
- ``client_cpu_ms_per_handshake``: this process's CPU (``time.process_time``) over the
  loop, divided by HANDSHAKES;
- ``server_datagrams_sent_per_handshake`` and ``..._received_...`` (quicflow server):
  the server socket's datagrams over the measured loop, per handshake;
- ``server_gc_in_loop`` (quicflow server): the garbage collector's collections and CPU
  ms per generation over the measured loop (``gc.callbacks`` in the server);
- ``server_rss_kb`` before and after the idle connections (VmRSS from /proc), and the
  difference per idle connection;
- ``server_idle_cpu_ms_per_s`` (with ``--idle``): the server's CPU over 3 s in which only
  the idle connections are open, per second (timers of idle connections cost this);
- ``server_context_switches_per_handshake``: the server's voluntary and involuntary
  context switches (/proc/PID/status) over the measured loop, per handshake;
- ``server_syscalls_per_handshake`` (with ``--syscalls``): the server's system calls over
  the measured loop by name, per handshake, counted by ``perf stat`` on the kernel's
  syscall tracepoints (needs Linux perf and tracepoint access, e.g. root); any server,
  ngtcp2's too: counts, not times, so they compare across a loaded machine.
- ``server_perf_per_handshake`` (with ``--perf-events EVENTS``): the server's counts of
  those perf events (``perf stat -e EVENTS``, e.g. ``task-clock,page-faults``) over the
  measured loop, per handshake (task-clock in ms, to the nanosecond rather than /proc's
  10 ms ticks).

``--client endpoint`` opens the measured connections on one shared client endpoint
(``quicflow.client_endpoint``); ``connect`` gives each its own socket (``quicflow.connect``).
``--profile FILE`` runs the quicflow server under cProfile and writes the stats to FILE
(read it with ``python -m pstats FILE``); with ``--profile-loop`` the profile covers only
the measured loop (the client signals the server, SIGUSR2, at its start and end), so that
runs with and without ``--idle`` compare per handshake. ``--tracemalloc PREFIX`` (with ``--idle K``)
traces the quicflow server's allocations: snapshots PREFIX.1 and PREFIX.2 before and
after the idle connections, and the bytes per idle connection by allocating line (and
its caller) on stderr and in the JSON (``top_lines_per_idle_connection``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "src"))
sys.path.insert(0, BENCH)

import quicflow  # noqa: E402
from quicflow.aio.stats import datapath_stats  # noqa: E402
from quicflow.tls.certs import (  # noqa: E402
    certificate_pem,
    generate_self_signed,
    load_pem_chain,
    load_pem_key,
    private_key_pem,
)

TICKS = os.sysconf("SC_CLK_TCK")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def log(message: str) -> None:
    print(f"[handshake] {message}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of ``pid`` so far."""
    total = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


#: the system calls --syscalls counts by name (tracepoints syscalls:sys_enter_NAME), and
#: all of them together (raw_syscalls:sys_enter)
SYSCALLS = ("epoll_wait", "epoll_pwait", "recvmmsg", "recvmsg", "recvfrom", "sendmmsg",
            "sendmsg", "sendto", "read", "write", "getrandom")


def start_syscall_count(pid: int, out_file: str, events: str | None = None
                        ) -> subprocess.Popen[bytes] | None:
    """``perf stat`` counting ``pid``'s system calls (or the perf ``events`` given) into
    ``out_file`` (CSV) until SIGINT; None when perf cannot (no perf, no tracepoint
    access)."""
    if events is None:
        events = ",".join([f"syscalls:sys_enter_{name}" for name in SYSCALLS]
                          + ["raw_syscalls:sys_enter"])
    try:
        proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid),
                                 "-o", out_file], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        log(f"--syscalls: no perf ({e})")
        return None
    time.sleep(0.5)  # perf attaches; the server is idle meanwhile
    if proc.poll() is not None:
        log("--syscalls: perf stat failed (tracepoint access?)")
        return None
    return proc


def stop_syscall_count(proc: subprocess.Popen[bytes], out_file: str, handshakes: int
                       ) -> dict[str, float]:
    """Stop ``perf stat`` and read its counts: per handshake, by system call name
    (``total``: every system call)."""
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    counts: dict[str, float] = {}
    with open(out_file) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) < 3 or not fields[0].replace(".", "", 1).isdigit():
                continue
            event = fields[2]
            name = ("total" if event == "raw_syscalls:sys_enter"
                    else event.split("sys_enter_")[-1])
            if float(fields[0]):  # (task-clock: msec with decimals)
                counts[name] = round(float(fields[0]) / handshakes, 4)
    return counts


# ---------------------------------------------------------------------------- server


async def _serve(args: argparse.Namespace) -> None:
    config = quicflow.Configuration(
        alpn_protocols=["perf", "h3"],
        certificate_chain=load_pem_chain(args.cert),
        private_key=load_pem_key(args.key),
        idle_timeout=600.0,
        retry=args.retry,
    )

    async def handler(reader: Any, writer: Any) -> None:
        writer.write_eof()

    # a stream opened by --request: the perf protocol's server (the handshake-only runs
    # open no stream, so this handler is never called in them)
    from quicflow.apps.perf import PerfServerHandler

    server = await quicflow.serve(PerfServerHandler() if args.perf else handler,
                                  "127.0.0.1", args.port, configuration=config)
    loop = asyncio.get_running_loop()

    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(2)  # a line and its caller
        dumped = [0]

        def dump() -> None:  # SIGUSR1 from the client: write a snapshot, then say so
            dumped[0] += 1
            tracemalloc.take_snapshot().dump(f"{args.tracemalloc}.tmp")
            os.rename(f"{args.tracemalloc}.tmp", f"{args.tracemalloc}.{dumped[0]}")
            print(f"snapshot {dumped[0]}", file=sys.stderr, flush=True)

        loop.add_signal_handler(signal.SIGUSR1, dump)
    if args.gc == "off":
        import gc

        gc.disable()
    elif args.gc == "default":
        import gc

        gc.set_threshold(700, 10, 10)
    import gc

    # the collector's work in the measured loop: [collections, seconds] per generation
    gc_window = [[0, 0.0], [0, 0.0], [0, 0.0]]
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.thread_time()
        else:
            row = gc_window[info["generation"]]
            row[0] += 1
            row[1] += time.thread_time() - gc_started[0]

    in_window = [False]
    datagrams = [0, 0]  # the socket's datagrams sent and received when the loop started

    def socket_datagrams() -> list[int]:
        # the socket's counters only: server.stats() also makes every held connection's
        # counters, and the loop's start (inside the measured CPU window) then paid for
        # them: ~0.02 ms per handshake with 10,000 idle connections held
        counts = datapath_stats(server.runner)
        return [counts["datagrams_sent"], counts["datagrams_received"]]

    def toggle() -> None:  # SIGUSR2 from the client: the measured loop starts or ends
        in_window[0] = not in_window[0]
        if in_window[0]:
            gc.callbacks.append(on_gc)
            datagrams[:] = socket_datagrams()
        else:
            gc.callbacks.remove(on_gc)
            sent, received = socket_datagrams()
            if args.window_file:
                with open(args.window_file + ".tmp", "w") as f:
                    json.dump({**{f"gen{g}": {"collections": n, "ms": round(t * 1000, 3)}
                                  for g, (n, t) in enumerate(gc_window)},
                               "datagrams_sent": sent - datagrams[0],
                               "datagrams_received": received - datagrams[1]}, f)
                os.rename(args.window_file + ".tmp", args.window_file)
        if PROFILER is not None and args.profile_loop:
            if in_window[0]:
                PROFILER.enable()
            else:
                PROFILER.disable()

    loop.add_signal_handler(signal.SIGUSR2, toggle)
    print(f"listening on 127.0.0.1:{server.address[1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


PROFILER: Any = None  # the server's cProfile.Profile under --profile


def serve_main(args: argparse.Namespace) -> int:
    global PROFILER
    if args.profile:
        import cProfile

        prof = PROFILER = cProfile.Profile(time.thread_time)  # CPU time, not wall time
        if not args.profile_loop:
            prof.enable()
        try:
            asyncio.run(_serve(args))
        finally:
            prof.disable()
            prof.dump_stats(args.profile)
    else:
        asyncio.run(_serve(args))
    return 0


# ---------------------------------------------------------------------------- client


def server_argv(
    name: str, port: int, cert: str, key: str, profile: str | None, gc: str = "library",
    tracemalloc: str | None = None, profile_loop: bool = False, retry: str = "load",
) -> list[str]:
    if name == "quicflow":
        argv = [sys.executable, os.path.abspath(__file__), "serve", "--port", str(port),
                "--cert", cert, "--key", key, "--gc", gc, "--retry", retry,
                "--window-file", os.path.join(os.path.dirname(cert), "window.json")]
        argv += ["--tracemalloc", tracemalloc] if tracemalloc else []
        argv += ["--perf"]
        argv += ["--profile-loop"] if profile and profile_loop else []
        return argv + (["--profile", profile] if profile else [])
    if name == "ngtcp2":  # Debian's ngtcp2-server (GnuTLS example server, HTTP/3 only)
        return ["gtlsserver", "-q", "--timeout=600s", "127.0.0.1", str(port), key, cert]
    script = os.path.join(BENCH, "peers", f"{name}_perf.py")
    return [sys.executable, script, "server", "--host", "127.0.0.1", "--port", str(port),
            "--cert", cert, "--key", key, "--timeout", "600"]


@contextmanager
def started(argv: list[str], workdir: str, name: str) -> Iterator[Any]:
    """The server process; ngtcp2's prints no 'listening on' line: give it a second."""
    if name != "ngtcp2":
        from run import running_server

        with running_server(argv, workdir) as server:
            yield server.proc
        return
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited ({proc.returncode})")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _snapshot(pid: int) -> None:
    os.kill(pid, signal.SIGUSR1)
    await asyncio.sleep(2.0)  # the server writes it (seconds with many held)


async def _window_stats(path: str) -> Any:
    """The quicflow server's GC collections (count, ms) per generation in the loop."""
    for _ in range(50):
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        await asyncio.sleep(0.1)
    return None


def _top_lines(args: argparse.Namespace) -> list[str]:
    """Bytes per idle connection by allocating source line, largest first."""
    import tracemalloc

    for _ in range(60):
        if os.path.exists(f"{args.tracemalloc}.2"):
            break
        time.sleep(1.0)
    time.sleep(2.0)
    a = tracemalloc.Snapshot.load(f"{args.tracemalloc}.1")
    b = tracemalloc.Snapshot.load(f"{args.tracemalloc}.2")
    rows = []
    for st in b.compare_to(a, "traceback")[:50]:
        where = " <- ".join(f"{os.path.relpath(f.filename)}:{f.lineno}"
                            for f in reversed(st.traceback))
        rows.append(f"{st.size_diff / args.idle:8.1f} B {st.count_diff / args.idle:6.2f} obj "
                    f"{where}")
    total = sum(s.size_diff for s in b.compare_to(a, "filename"))
    rows.insert(0, f"{total / args.idle:8.1f} B total traced per idle connection")
    for r in rows:
        log(r)
    return rows


def _client_profiler(path: str | None) -> Any:
    """A running cProfile of this process's CPU time (None without ``path``)."""
    if not path:
        return None
    import cProfile

    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    return prof


async def _client(args: argparse.Namespace, port: int, pid: int) -> dict[str, Any]:
    if args.cafile:  # verify the server (name "localhost") against this CA file
        config = quicflow.Configuration(
            alpn_protocols=[args.alpn], idle_timeout=600.0, cafile=args.cafile,
            server_name="localhost",
        )
    else:
        config = quicflow.Configuration(
            alpn_protocols=[args.alpn], verify_peer=False, idle_timeout=600.0
        )
    out: dict[str, Any] = {"server": args.server, "handshakes": args.handshakes,
                           "concurrency": args.concurrency, "idle": args.idle,
                           "client": args.client, "verify": bool(args.cafile),
                           "request": args.request,
                           "server_retry": args.retry if args.server == "quicflow" else None}
    async with quicflow.client_endpoint("127.0.0.1", configuration=config) as idle_ep, \
            quicflow.client_endpoint("127.0.0.1", configuration=config) as ep:
        if args.tracemalloc:
            await _snapshot(pid)
        rss_before = rss_kb(pid)
        holders: list[asyncio.Task[None]] = []
        release = asyncio.Event()
        if args.idle:
            opened = 0
            ready = asyncio.Semaphore(64)

            async def hold() -> None:
                nonlocal opened
                async with ready:
                    cm = idle_ep.connect("127.0.0.1", port)
                    await cm.__aenter__()
                opened += 1
                if opened % 1000 == 0:
                    log(f"{opened} idle connections open")
                await release.wait()

            holders = [asyncio.create_task(hold()) for _ in range(args.idle)]
            while opened < args.idle:
                await asyncio.sleep(0.2)
                for t in holders:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
            await asyncio.sleep(1.0)
            if args.tracemalloc:
                await _snapshot(pid)
                out["top_lines_per_idle_connection"] = _top_lines(args)
            out["server_rss_kb_before_idle"] = rss_before
            out["server_rss_kb_with_idle"] = rss_kb(pid)
            out["server_kb_per_idle_connection"] = (rss_kb(pid) - rss_before) / args.idle
            # what the idle connections cost while nothing else happens (should be ~0)
            (u0, k0), t0 = cpu_split(pid), time.perf_counter()
            await asyncio.sleep(3.0)
            (u1, k1), t1 = cpu_split(pid), time.perf_counter()
            out["server_idle_cpu_ms_per_s"] = (u1 + k1 - u0 - k0) * 1000 / (t1 - t0)
        sem = asyncio.Semaphore(args.concurrency)
        if args.client == "aioquic":  # aioquic's own client, for its client CPU figure
            import ssl

            from aioquic.asyncio.client import connect as aioquic_connect
            from aioquic.quic.configuration import QuicConfiguration

            aio_cfg = QuicConfiguration(alpn_protocols=[args.alpn], is_client=True,
                                        verify_mode=ssl.CERT_NONE)
            if args.cafile:
                aio_cfg.verify_mode = ssl.CERT_REQUIRED
                aio_cfg.server_name = "localhost"
                aio_cfg.load_verify_locations(cafile=args.cafile)

        request = struct.pack("!Q", args.request)

        async def one() -> None:
            async with sem:
                if args.client == "endpoint" and args.request:
                    async with ep.connect("127.0.0.1", port) as conn:
                        reader, writer = await conn.create_stream()
                        writer.write(request)
                        writer.write_eof()
                        got = 0
                        while True:
                            data = await reader.read(65536)
                            if not data:
                                break
                            got += len(data)
                        if got != args.request:
                            raise RuntimeError(f"response of {got} bytes")
                elif args.client == "endpoint":
                    async with ep.connect("127.0.0.1", port):
                        pass
                elif args.client == "aioquic":
                    async with aioquic_connect("127.0.0.1", port, configuration=aio_cfg):
                        pass
                else:
                    async with quicflow.connect("127.0.0.1", port, configuration=config):
                        pass

        for _ in range(min(20, args.handshakes)):  # warm-up, not counted
            await one()
        await asyncio.sleep(0.3)
        window = args.server == "quicflow"
        if window:  # the server's measured window (GC counts; --profile-loop) starts
            os.kill(pid, signal.SIGUSR2)
        counter = (start_syscall_count(pid, os.path.join(os.path.dirname(args.window_file),
                                                         "syscalls.csv"))
                   if args.syscalls else None)
        perf_counter = (start_syscall_count(pid, os.path.join(os.path.dirname(
            args.window_file), "perf.csv"), args.perf_events) if args.perf_events else None)
        switches = context_switches(pid)
        (u0, k0), c0, t0 = cpu_split(pid), time.process_time(), time.perf_counter()

        own0, prof = os.times(), _client_profiler(args.client_profile)
        await asyncio.gather(*(one() for _ in range(args.handshakes)))
        await asyncio.sleep(0.3)  # the server's closing periods end
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.client_profile)
        own1 = os.times()

        (u1, k1), c1, t1 = cpu_split(pid), time.process_time(), time.perf_counter()
        out["server_context_switches_per_handshake"] = round(
            (context_switches(pid) - switches) / args.handshakes, 3)
        if counter is not None:
            out["server_syscalls_per_handshake"] = stop_syscall_count(
                counter, os.path.join(os.path.dirname(args.window_file), "syscalls.csv"),
                args.handshakes)
        if perf_counter is not None:
            out["server_perf_per_handshake"] = stop_syscall_count(
                perf_counter, os.path.join(os.path.dirname(args.window_file), "perf.csv"),
                args.handshakes)
        if window:
            os.kill(pid, signal.SIGUSR2)  # and ends
            window_stats = await _window_stats(args.window_file)
            if window_stats is not None:
                for key in ("datagrams_sent", "datagrams_received"):
                    out[f"server_{key}_per_handshake"] = round(
                        window_stats.pop(key) / args.handshakes, 3)
            out["server_gc_in_loop"] = window_stats
        out["server_cpu_ms_per_handshake"] = (u1 + k1 - u0 - k0) * 1000 / args.handshakes
        out["server_user_ms_per_handshake"] = (u1 - u0) * 1000 / args.handshakes
        out["server_system_ms_per_handshake"] = (k1 - k0) * 1000 / args.handshakes
        out["client_cpu_ms_per_handshake"] = (c1 - c0) * 1000 / args.handshakes
        out["client_user_ms_per_handshake"] = (own1.user - own0.user) * 1000 / args.handshakes
        out["client_system_ms_per_handshake"] = (
            (own1.system - own0.system) * 1000 / args.handshakes)
        out["handshakes_per_s"] = args.handshakes / (t1 - t0 - 0.3)
        # printed now: closing thousands of idle connections can take long
        log(f"{args.server}: server {out['server_cpu_ms_per_handshake']:.2f} ms, client "
            f"{out['client_cpu_ms_per_handshake']:.2f} ms per handshake")
        print(json.dumps(out), flush=True)
        release.set()
        for t in holders:
            t.cancel()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    srv = sub.add_parser("serve", help="run the quicflow server (used by the benchmark)")
    srv.add_argument("--port", type=int, default=0)
    srv.add_argument("--cert", required=True)
    srv.add_argument("--key", required=True)
    srv.add_argument("--profile", help="cProfile the server into FILE")
    srv.add_argument("--profile-loop", action="store_true",
                     help="profile only between two SIGUSR2 signals")
    srv.add_argument("--window-file", help="GC counts between two SIGUSR2 go here (JSON)")
    srv.add_argument("--gc", choices=["library", "default", "off"], default="library")
    srv.add_argument("--retry", choices=["load", "never", "always"], default="load")
    srv.add_argument("--tracemalloc", help="snapshot file prefix (SIGUSR1 writes one)")
    srv.add_argument("--perf", action="store_true", help="streams run the perf protocol")
    ap.add_argument("--server", default="quicflow",
                    choices=["quicflow", "aioquic", "qh3", "ngtcp2"],
                    help="ngtcp2: Debian's gtlsserver (ngtcp2-server), needs --alpn h3")
    ap.add_argument("--handshakes", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--idle", type=int, default=0, help="idle connections held meanwhile")
    ap.add_argument("--client", choices=["endpoint", "connect", "aioquic"], default="endpoint",
                    help="quicflow client on one shared endpoint, quicflow.connect() per "
                    "connection, or aioquic's client (for comparison)")
    ap.add_argument("--alpn", default="perf")
    ap.add_argument("--request", type=int, default=0, metavar="BYTES",
                    help="each connection (--client endpoint, quicflow server) makes one "
                         "perf request for BYTES after its handshake, reads the whole "
                         "response, then closes: a short connection's cost, not only its "
                         "handshake's")
    ap.add_argument("--verify", metavar="BUNDLE", nargs="?", const=SYSTEM_BUNDLE,
                    help="clients verify the server's certificate against a CA file: "
                    f"BUNDLE (default {SYSTEM_BUNDLE}) plus the test certificate")
    ap.add_argument("--client-profile", metavar="FILE",
                    help="cProfile this (client) process over the measured loop into FILE")
    ap.add_argument("--profile", help="cProfile the quicflow server into FILE")
    ap.add_argument("--profile-loop", action="store_true",
                    help="with --profile: profile only the measured loop (not the start-up, "
                    "the idle connections' opening or the warm-up)")
    ap.add_argument("--gc", choices=["library", "default", "off"], default="library",
                    help="quicflow server's garbage collector: as the library leaves it, "
                    "Python's default thresholds, or disabled (for measuring)")
    ap.add_argument("--retry", choices=["load", "never", "always"], default="load",
                    help="quicflow server's Retry policy (Configuration.retry; default "
                    "'load': Retry once retry_threshold=64 handshakes are half-open, which "
                    "--concurrency 128 exceeds; ngtcp2's server sends no Retry: 'never' "
                    "compares like with like)")
    ap.add_argument("--tracemalloc", metavar="PREFIX",
                    help="quicflow server: tracemalloc snapshots PREFIX.1/.2 before and after "
                    "the idle connections; bytes per idle connection by source line on stderr")
    ap.add_argument("--syscalls", action="store_true",
                    help="count the server's system calls over the measured loop with "
                    "'perf stat' (needs Linux perf and tracepoint access): "
                    "server_syscalls_per_handshake in the JSON")
    ap.add_argument("--perf-events", metavar="EVENTS",
                    help="count these perf events of the server over the measured loop "
                    "with 'perf stat -e EVENTS' (e.g. task-clock,page-faults: software "
                    "events work in a VM without hardware counters): "
                    "server_perf_per_handshake in the JSON")
    args = ap.parse_args()
    args.cafile = None
    if args.cmd == "serve":
        return serve_main(args)
    from run import free_udp_port

    with tempfile.TemporaryDirectory(prefix="quicflow-hs-") as workdir:
        cert, key = generate_self_signed(["localhost", "127.0.0.1"])
        cert_file = os.path.join(workdir, "cert.pem")
        key_file = os.path.join(workdir, "key.pem")
        with open(cert_file, "wb") as f:
            f.write(certificate_pem(cert))
        with open(key_file, "wb") as f:
            f.write(private_key_pem(key))
        if args.verify:  # a CA file of realistic size: the system bundle + our certificate
            args.cafile = os.path.join(workdir, "ca.pem")
            with open(args.cafile, "wb") as f, open(args.verify, "rb") as bundle:
                f.write(bundle.read() + b"\n" + certificate_pem(cert))
        port = free_udp_port()
        args.window_file = os.path.join(workdir, "window.json")
        argv = server_argv(args.server, port, cert_file, key_file, args.profile, args.gc,
                           args.tracemalloc, args.profile_loop, args.retry)
        try:
            with started(argv, workdir, args.server) as proc:
                result = asyncio.run(_client(args, port, proc.pid))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log(f"FAILED: {e}")
            return 1
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
