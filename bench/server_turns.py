"""Where a perf server's CPU goes with N bulk connections: its send turns and their parts.

Run: ``.venv/bin/python bench/server_turns.py [--connections 256] [--size 4G] [--bounds]``

Starts ``quicflow perf server --max-datagram 1200`` in a child process with wrappers
around the runner's entry points, runs ``quicflow perf client --download SIZE
--connections N`` against it, stops the server and prints, per GiB of payload:

- the send turns (``EndpointRunner._send``) by what started them: a receive round
  (``recv``), the loop timer (``timer``: mostly the pacer), a flush after a write
  (``flush``) or anything else, how many datagrams each sent and how many sent none;
- the server thread's CPU time (``time.thread_time_ns``: not wall time, so a busy
  machine's waits do not count) in those turns and in some of their parts (the build,
  the C bulk build, the general-path build, the GSO send, the timer re-arm, the route),
  and in the receive rounds and timer callbacks outside the turns;
- with ``--bounds``, what bounded each bulk build (``build_bulk``) that sent something:
  the pacer's bucket (the burst, ``Pacer.capacity``, plus what the rate earns in the
  loop's granularity), the congestion window's room, flow control (the stream's or the
  connection's limit), the data queued, or the build's datagram limit; and the builds
  and datagrams by the congestion window they were sent at (below 2,048 datagrams the
  bucket is cwnd/8: the ramp; from 2,048 on, the 256-datagram cap), and srtt, min_rtt
  and their ratio at the builds (10th, 50th, 90th percentile: the bucket's timed part is
  2 ms at 1.25·cwnd/srtt, and a busy server's srtt grows with its queues). Its
  bookkeeping (a few microseconds per build) counts in the turns' and the build's
  figures, not in the C build's.

Each wrapped call costs about a microsecond more, so the figures are a little high;
counts of turns are exact for the run (they move between runs with the load, as the
timer turns do). The issue 11 notes in bench/RESULTS.md use it to compare one
connection with 64 and 256 (fifteenth pass, srv64).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(BENCH), "src")
sys.path.insert(0, BENCH)

from run import free_udp_port, parse_size  # noqa: E402

MARK = "server_turns: "


def install_kinds(kinds: dict[str, int]) -> None:
    """Count the datagrams the general path (``send._build_datagram``) builds, by the
    frames their 1-RTT packets carried (the sent-packet records; ACK when an ACK owed
    before the build was no longer owed after it) and whether a bulk run followed in
    the same build, i.e. whether the datagram went alone or led a burst."""
    from quicflow.endpoint import endpoint as endpoint_mod
    from quicflow.transport import send as send_mod
    from quicflow.transport import state as state_mod


    names = {getattr(state_mod, n): n[2:] for n in dir(state_mod)
             if n.startswith("R_") and isinstance(getattr(state_mod, n), int)}
    general = send_mod._build_datagram
    bulk = send_mod.build_bulk
    whole = endpoint_mod.build_datagrams
    call: list[list[Any]] = []  # this build's general datagrams: [kind, bulk after]

    def kind_of(conn: Any, before: int, owed: bool) -> str:
        space = conn.loss.spaces[2]
        if space.largest_sent <= before:
            return "not 1-RTT"
        mix: set[str] = set()
        if owed and not conn.spaces[2].ack_pending:
            mix.add("ACK")
        for pn in range(before + 1, space.largest_sent + 1):
            pkt = space.sent.get(pn)
            if pkt is None:
                mix.add("ACK only")
                continue
            mix.update(names.get(r[0], str(r[0])) for r in pkt.frames)
        return "+".join(sorted(mix)) or "no frame record (an ACK repeat, a PING)"

    def general_build(conn: Any, now: float, buf: Any, room: int, seal: Any) -> Any:
        space = conn.loss.spaces[2]
        before = space.largest_sent
        owed = bool(conn.spaces[2].ack_pending)
        size = general(conn, now, buf, room, seal)
        if size:
            call.append([kind_of(conn, before, owed), False])
        return size

    def kinds_bulk(conn: Any, *args: Any) -> Any:
        built = bulk(conn, *args)
        if built > 0:
            for entry in call:
                entry[1] = True
        return built

    def kinds_whole(conn: Any, *args: Any) -> Any:
        call.clear()
        out = whole(conn, *args)
        for kind, then_bulk in call:
            kinds[kind + (" | bulk run after it" if then_bulk else " | alone")] += 1
        return out

    send_mod._build_datagram = general_build
    send_mod.build_bulk = kinds_bulk
    endpoint_mod.build_datagrams = kinds_whole


def serve(port: int, with_bounds: bool, with_kinds: bool = False) -> None:
    """The child: the perf server with the wrappers, the report on stderr at exit."""
    sys.path.insert(0, SRC)
    import atexit
    import runpy

    from quicflow.aio import runner as runner_mod
    from quicflow.endpoint.endpoint import Endpoint
    from quicflow.transport import send as send_mod

    clock = time.thread_time_ns
    source = ["other"]
    turns: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    outside: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    parts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    nested = [0]
    cls = runner_mod.EndpointRunner
    send = cls._send

    def timed_send(self: Any, conn: Any) -> None:
        before = conn.counters.datagrams_sent
        start = clock()
        send(self, conn)
        spent = clock() - start
        nested[0] += spent
        sent = conn.counters.datagrams_sent - before
        entry = turns[source[-1]]
        entry[0] += 1
        entry[1] += sent
        entry[2] += sent == 0
        entry[3] += spent

    def entry_point(name: str, tag: str) -> None:
        inner = getattr(cls, name)

        def wrapped(self: Any, *args: Any) -> Any:
            source.append(tag)
            before = nested[0]
            start = clock()
            try:
                return inner(self, *args)
            finally:
                source.pop()
                spent = clock() - start
                entry = outside[tag]
                entry[0] += 1
                entry[1] += spent - (nested[0] - before)
                nested[0] = before + spent

        setattr(cls, name, wrapped)

    def part(owner: Any, name: str, tag: str) -> None:
        inner = getattr(owner, name)

        def wrapped(*args: Any) -> Any:
            start = clock()
            try:
                return inner(*args)
            finally:
                entry = parts[tag]
                entry[0] += 1
                entry[1] += clock() - start

        setattr(owner, name, wrapped)

    bounds: dict[str, int] = collections.defaultdict(int)
    windows: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    rtts: list[tuple[float, float]] = []

    def bounded_build(conn: Any, now: float, buf: Any, ends: Any, seal: Any,
                      max_count: int) -> Any:
        """What bounded the run (measured before the build, as its own reads are)."""
        mds = conn.max_datagram_size
        cc = conn.loss.cc
        pacer = conn.pacer
        room = (cc.cwnd - cc.bytes_in_flight) // mds
        send = conn.streams[conn.send_queue[0]].send
        start = send.next_offset
        flow = conn.flow
        # (stream bytes per datagram: a little under the datagram size)
        limits = [("window", room), ("queued data", -(-(send.write_offset - start) // mds)),
                  ("stream flow control", -(-(send.max_data - start) // mds)),
                  ("connection flow control",
                   -(-(flow.peer_max_data - flow.data_sent) // mds)),
                  ("datagrams per build", max_count)]
        rtt = conn.loss.rtt
        rate = pacer.rate(rtt, cc.cwnd)
        bucket = pacer.capacity(rate, cc.cwnd) + rate * pacer.granularity
        rtts.append((rtt.smoothed_rtt, rtt.min_rtt))
        built = build_bulk(conn, now, buf, ends, seal, max_count)
        if built <= 0:
            bounds["(none: held by the pacer)" if built < 0 else "(none: general path)"] += 1
            return built
        tag, least = min(limits, key=lambda item: item[1])
        if built < least - 1:
            tag = "pacer bucket" if built >= bucket // mds - 2 else "pacer (a partial bucket)"
        bounds[tag] += 1
        window = cc.cwnd // mds
        key = next((f"< {w}" for w in (256, 512, 1024, 2048, 4096) if window < w), ">= 4096")
        windows[key][0] += 1
        windows[key][1] += built
        return built

    cls._send = timed_send  # type: ignore[method-assign]
    entry_point("_process", "recv")
    entry_point("on_timer", "timer")
    entry_point("_flush_dirty", "flush")
    part(Endpoint, "build_datagrams", "build")
    part(send_mod, "build_bulk", "bulk build (C)")
    part(send_mod, "_build_datagram", "general build")
    part(runner_mod, "send_buffer", "GSO send")
    part(cls, "_arm_timer", "timer re-arm")
    part(cls, "_route", "route")
    if with_bounds:
        build_bulk = send_mod.build_bulk  # (the timed one: the bookkeeping is outside)
        send_mod.build_bulk = bounded_build
    kinds: dict[str, int] = collections.defaultdict(int)
    if with_kinds:
        install_kinds(kinds)
    cpu_start = time.process_time()

    def report() -> None:
        out = {"turns": dict(turns), "outside": dict(outside), "parts": dict(parts),
               "bounds": dict(bounds), "windows": dict(windows), "kinds": dict(kinds),
               "rtts": _quartiles(rtts),
               "process_cpu": time.process_time() - cpu_start}
        print(MARK + json.dumps(out), file=sys.stderr, flush=True)

    atexit.register(report)
    sys.argv = ["quicflow", "perf", "server", "--host", "127.0.0.1", "--port", str(port),
                "--max-datagram", "1200"]
    runpy.run_module("quicflow", run_name="__main__")


def client_kinds(argv: list[str]) -> None:
    """The perf client with ``install_kinds``; its counts on stderr at exit."""
    sys.path.insert(0, SRC)
    import atexit
    import runpy

    kinds: dict[str, int] = collections.defaultdict(int)
    install_kinds(kinds)
    atexit.register(lambda: print(MARK + json.dumps(kinds), file=sys.stderr, flush=True))
    sys.argv = ["quicflow", *argv]
    runpy.run_module("quicflow", run_name="__main__")


def _quartiles(rtts: list[tuple[float, float]]) -> dict[str, list[float]]:
    """srtt, min_rtt (ms) and srtt / min_rtt at the builds: 10th, 50th, 90th percentile."""
    cols = {"srtt (ms)": [s * 1e3 for s, _ in rtts],
            "min_rtt (ms)": [m * 1e3 for _, m in rtts],
            "srtt / min_rtt": [s / m for s, m in rtts if m > 0.0]}
    out = {}
    for name, values in cols.items():
        values.sort()
        n = len(values)
        out[name] = [values[int(q * (n - 1))] for q in (0.1, 0.5, 0.9)] if n else []
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=256, help="concurrent downloads")
    ap.add_argument("--size", default="4G", help="total download (default 4G)")
    ap.add_argument("--bounds", action="store_true",
                    help="also what bounded each bulk build, and the windows they ran at")
    ap.add_argument("--kinds", action="store_true",
                    help="also the general-path datagrams by the frames they carried")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--client-kinds", action="store_true", help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--client-kinds"]:  # (the client's own options follow)
        client_kinds(sys.argv[2:])
        return
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.bounds, args.kinds)
        return
    size = parse_size(args.size)
    gib = size / (1 << 30)
    port = free_udp_port()
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)]
                              + (["--bounds"] if args.bounds else [])
                              + (["--kinds"] if args.kinds else []), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        print(f"downloading {args.size} over {args.connections} connections", file=sys.stderr)
        launcher = [__file__, "--client-kinds"] if args.kinds else ["-m", "quicflow"]
        client = subprocess.run(
            [sys.executable, *launcher, "perf", "client", "-q", "--host", "127.0.0.1",
             "--port", str(port), "--download", str(size), "--insecure", "--json",
             "--max-datagram", "1200", "--connections", str(args.connections),
             "--timeout", "120"], env=env, capture_output=True, text=True, check=True)
        goodput = json.loads(client.stdout)["goodput_bytes_per_s"] / 1e6
        client_rep = [json.loads(line[len(MARK):]) for line in client.stderr.splitlines()
                      if line.startswith(MARK)]
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    lines = [line for line in err.splitlines() if line.startswith(MARK)]
    if not lines:
        sys.exit("the server gave no report:\n" + err[-2000:])
    rep = json.loads(lines[-1][len(MARK):])
    print(f"{args.connections} connections, {args.size}, goodput {goodput:.0f} MB/s; "
          f"server process CPU {rep['process_cpu'] / gib:.3f} s/GiB (instrumented)\n")
    print("| send turns from | per GiB | datagrams per turn | empty per GiB | CPU us per turn "
          "| CPU s/GiB |\n|---|---|---|---|---|---|")
    for tag, (n, sent, empty, ns) in sorted(rep["turns"].items()):
        print(f"| {tag} | {n / gib:.0f} | {sent / max(n, 1):.1f} | {empty / gib:.0f} | "
              f"{ns / max(n, 1) / 1000:.1f} | {ns / 1e9 / gib:.3f} |")
    print("\n| part | calls per GiB | CPU us per call | CPU s/GiB |\n|---|---|---|---|")
    for tag, (n, ns) in sorted(rep["parts"].items()):
        print(f"| {tag} (in turns) | {n / gib:.0f} | {ns / max(n, 1) / 1000:.1f} | "
              f"{ns / 1e9 / gib:.3f} |")
    for tag, (n, ns) in sorted(rep["outside"].items()):
        print(f"| {tag} callbacks outside their turns | {n / gib:.0f} | "
              f"{ns / max(n, 1) / 1000:.1f} | {ns / 1e9 / gib:.3f} |")
    if args.kinds:
        print("\n| general-path datagrams (frames) | per GiB |\n|---|---|")
        for tag, n in sorted(rep["kinds"].items(), key=lambda item: -item[1]):
            print(f"| {tag} | {n / gib:.0f} |")
        print("\n| the client's general-path datagrams (frames) | per GiB |\n|---|---|")
        for tag, n in sorted(client_rep[-1].items(), key=lambda item: -item[1]):
            print(f"| {tag} | {n / gib:.0f} |")
    if not args.bounds:
        return
    print("\n| bulk builds bounded by | per GiB |\n|---|---|")
    for tag, n in sorted(rep["bounds"].items(), key=lambda item: -item[1]):
        print(f"| {tag} | {n / gib:.0f} |")
    print("\n| congestion window (datagrams) | builds per GiB | datagrams per GiB | datagrams "
          "per build |\n|---|---|---|---|")
    order = ["< 256", "< 512", "< 1024", "< 2048", "< 4096", ">= 4096"]
    for key in sorted(rep["windows"], key=order.index):
        n, sent = rep["windows"][key]
        print(f"| {key} | {n / gib:.0f} | {sent / gib:.0f} | {sent / max(n, 1):.1f} |")
    print("\n| at the builds | 10th | 50th | 90th percentile |\n|---|---|---|---|")
    for name, values in rep["rtts"].items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
