"""Many connections at once: aggregate goodput, server CPU per GB, fairness, batching.

Run: ``.venv/bin/python bench/scale.py [--connections 1,8,64,256] [--size 200M]
[--impl quicflow,aioquic,qh3] [--repeat 1]``

For each implementation and each connection count a fresh perf server is started
(``quicflow perf server --json`` or ``bench/peers/*_perf.py server``), one perf client
process downloads SIZE in total over N concurrent connections (one stream each) on
loopback with 1200-byte datagrams, and the table gives:

- aggregate goodput (the client's ``goodput_bytes_per_s``: payload bytes / seconds from
  the end of the handshakes to the last byte);
- server CPU seconds per GB of payload (user + system time of the server process, read
  from /proc/PID/stat just before the client starts and just after it ends, so start-up
  and handshake set-up outside the run are not counted, but the handshakes are);
- Jain's fairness index over the connections' goodputs (quicflow's client reports each
  connection's bytes / its seconds to its last byte; the peers do not, shown as –);
- for quicflow, packets per engine call and segments per GSO call of the server (its
  ``--json`` counters at exit);
- client CPU seconds per GB (the client process from start to exit, handshakes and
  start-up included: it runs every connection, so it may be what limits the goodput);
  for quicflow also the client's CPU in the goodput window alone (its ``cpu_seconds``),
  per GB and as a share of one core (``cpu_seconds / seconds``: near 100 % the client
  process is what limits the goodput). Start-up (imports; with PYTHONDONTWRITEBYTECODE
  every module is compiled again), the handshakes and the closes are a fixed cost of
  about 0.3 s (1 connection) to 0.6 s (256) of the whole-process figure;
- for quicflow, ACK frames the client sent and datagrams the server received per GiB
  (the ACK Frequency extension's effect: a download's client sends little but ACKs).

With ``--repeat K`` the counts run in K interleaved rounds (1, 64, 256, 1, 64, 256, ...);
the first table keeps each cell's median run, and a second table gives, for each count,
the ratios to the one-connection run of the same round (goodput in %, server CPU per GB
and the client's CPU per GB in the transfer as multiples): the issue-11 targets are ratios,
and a host whose speed drifts moves two runs minutes apart more than two runs side by side.

Progress goes to stderr, the markdown tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from run import (  # noqa: E402
    Impl,
    certificate_pem,
    client_timeout,
    free_udp_port,
    generate_self_signed,
    log,
    parse_size,
    private_key_pem,
    run_client,
    running_server,
)

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def one_run(impl: Impl, connections: int, size: int, workdir: str,
            client_args: list[str] | None = None) -> dict[str, Any]:
    port = free_udp_port()
    srv = impl.server("127.0.0.1", port, 1200)
    if impl.name == "quicflow":
        srv.append("--json")
    cli = impl.client("127.0.0.1", port, size, 1200, connections)
    if impl.name == "quicflow" and client_args:
        cli += client_args
    with running_server(srv, workdir) as server:
        before = cpu_seconds(server.proc.pid)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = run_client(cli, client_timeout(size) + connections * 0.5)
        after = cpu_seconds(server.proc.pid)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)  # the client, reaped
        server.stop()
        out = server.output()
    got = int(result["bytes_received"])
    if got != size:
        raise RuntimeError(f"received {got} of {size} bytes")
    row: dict[str, Any] = {
        "goodput": float(result["goodput_bytes_per_s"]),
        "cpu_per_gb": (after - before) / (size / 1e9),
        "fairness": result.get("fairness"),
        # the client process (all connections in it), from its start to its exit:
        # handshakes and start-up included
        "client_cpu_per_gb": (reaped.ru_utime + reaped.ru_stime - children.ru_utime
                              - children.ru_stime) / (size / 1e9),
    }
    if impl.name == "quicflow":
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if lines:
            stats = json.loads(lines[-1])
            row["packets_per_engine_call"] = stats.get("packets_per_engine_call")
            row["segments_per_gso_call"] = stats.get("segments_per_gso_call")
            received = stats.get("datapath", {}).get("datagrams_received")
            if received is not None:
                row["server_datagrams_in_per_gib"] = received / (size / 2**30)
        row["data_blocked"] = (result.get("data_blocked_received"),
                               result.get("data_blocked_grew"))
        cpu = result.get("cpu_seconds")
        if cpu is not None:
            row["client_transfer_cpu_per_gb"] = float(cpu) / (size / 1e9)
            row["client_busy"] = float(cpu) / max(float(result["seconds"]), 1e-9)
        acks = result.get("ack_frames_sent")
        if acks is not None:
            row["client_acks_per_gib"] = int(acks) / (size / 2**30)
        # datagrams the kernel dropped for the client's socket(s): a full receive buffer
        row["client_receive_drops"] = result.get("receive_drops")
    return row


RATIO_HEADER = [
    "| implementation | connections | goodput, % of one connection's | server CPU/GB, "
    "× one connection's | client CPU/GB in transfer, × one connection's | rounds |",
    "|---|---|---|---|---|---|",
]


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _ratio_rows(shown: str, counts: list[int],
                by_round: list[dict[int, dict[str, Any]]]) -> list[str]:
    """Each count against the one-connection run of the same round: the median of the
    per-round ratios, and their range (a drifting host moves both runs of a round)."""
    if 1 not in counts:
        return []
    out = []
    for n in counts:
        if n == 1:
            continue
        good: list[float] = []
        cpu: list[float] = []
        cli: list[float] = []
        for rnd in by_round:
            one, many = rnd.get(1), rnd.get(n)
            if one is None or many is None:
                continue
            good.append(100 * many["goodput"] / one["goodput"])
            cpu.append(many["cpu_per_gb"] / one["cpu_per_gb"])
            if one.get("client_transfer_cpu_per_gb") and many.get("client_transfer_cpu_per_gb"):
                cli.append(many["client_transfer_cpu_per_gb"] / one["client_transfer_cpu_per_gb"])

        def cell(xs: list[float], spec: str) -> str:
            if not xs:
                return "–"
            if len(xs) == 1:
                return format(xs[0], spec)
            return f"{format(_median(xs), spec)} ({format(min(xs), spec)}–{format(max(xs), spec)})"

        out.append(f"| {shown} | {n} | {cell(good, '.1f')} | {cell(cpu, '.2f')} | "
                   f"{cell(cli, '.2f')} | {len(good)} |")
    return out


def _pct(share: float | None) -> float | None:
    return None if share is None else 100 * share


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", default="1,8,64,256",
                    help="comma-separated connection counts (default: %(default)s)")
    ap.add_argument("--size", type=parse_size, default=parse_size("200M"),
                    help="total download per run, shared by the connections (default: "
                    "200M). Each connection costs about 1-3 ms of client and ~0.75 ms of "
                    "server CPU whatever its size (its first flights, its close), so "
                    "SIZE/N sets how much of a run that is: the issue-11 figures in "
                    "bench/RESULTS.md use 1G (4 MiB per connection at 256) and 4G")
    ap.add_argument("--impl", default="quicflow",
                    help="comma-separated: quicflow, aioquic, qh3 (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds, each running every connection count once (interleaved); "
                    "the table keeps each cell's median run, and a second table gives each "
                    "count's ratios to the one-connection run of the same round (median and "
                    "range)")
    ap.add_argument("--shared-socket", action="store_true",
                    help="quicflow's client opens all connections on one shared socket "
                    "(perf client --shared-socket)")
    args = ap.parse_args()
    counts = [int(x) for x in args.connections.split(",")]
    names = [x.strip() for x in args.impl.split(",") if x.strip()]
    rows: list[str] = [
        "| implementation | connections | goodput MB/s | server CPU s/GB | Jain's index"
        " | packets/engine call | segments/GSO call | client CPU s/GB"
        " | client CPU s/GB in transfer (% of a core) | client ACKs/GiB"
        " | server datagrams in/GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratio_rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="quicflow-scale-") as workdir:
        cert, key = generate_self_signed(["localhost", "127.0.0.1"])
        cert_file = os.path.join(workdir, "cert.pem")
        key_file = os.path.join(workdir, "key.pem")
        with open(cert_file, "wb") as f:
            f.write(certificate_pem(cert))
        with open(key_file, "wb") as f:
            f.write(private_key_pem(key))
        for name in names:
            impl = Impl(name, cert_file, key_file)
            shown = f"{name} (shared socket)" if args.shared_socket and name == "quicflow" else name
            # rounds, each running every connection count once: on a host whose speed
            # drifts, a ratio to one connection is taken within a round
            per_count: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
            by_round: list[dict[int, dict[str, Any]]] = []
            for rep in range(args.repeat):
                this_round: dict[int, dict[str, Any]] = {}
                for n in counts:
                    label = f"{name} x{n} run {rep + 1}/{args.repeat}"
                    try:
                        r = one_run(impl, n, args.size, workdir,
                                   ["--shared-socket"] if args.shared_socket else None)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                        log(f"{label}: FAILED: {e}")
                        continue
                    log(f"{label}: {r['goodput'] / 1e6:.1f} MB/s, "
                        f"{r['cpu_per_gb']:.2f} CPU-s/GB (client {r['client_cpu_per_gb']:.2f}, "
                        f"in transfer {_fmt(r.get('client_transfer_cpu_per_gb'), '.2f')} "
                        f"at {_fmt(_pct(r.get('client_busy')), '.0f')} % of a core), "
                        f"fairness {r['fairness']}, "
                        f"{r.get('packets_per_engine_call')} packets/engine call, "
                        f"client ACKs/GiB {_fmt(r.get('client_acks_per_gib'), '.0f')}, "
                        f"server datagrams in/GiB "
                        f"{_fmt(r.get('server_datagrams_in_per_gib'), '.0f')}, "
                        f"client socket drops {r.get('client_receive_drops')}, "
                        f"client DATA_BLOCKED received/grew a window "
                        f"{r.get('data_blocked', (None, None))}")
                    per_count[n].append(r)
                    this_round[n] = r
                    time.sleep(0.5)
                by_round.append(this_round)
            for n in counts:
                results = per_count[n]
                if not results:
                    rows.append(f"| {shown} | {n} | failed | | | | | | | | |")
                    continue
                results.sort(key=lambda r: r["goodput"])
                r = results[len(results) // 2]
                rows.append(
                    f"| {shown} | {n} | {r['goodput'] / 1e6:.1f} | {r['cpu_per_gb']:.2f} | "
                    f"{_fmt(r['fairness'], '.3f')} | "
                    f"{_fmt(r.get('packets_per_engine_call'), '.1f')} | "
                    f"{_fmt(r.get('segments_per_gso_call'), '.1f')} | "
                    f"{r['client_cpu_per_gb']:.2f} | "
                    f"{_fmt(r.get('client_transfer_cpu_per_gb'), '.2f')} "
                    f"({_fmt(_pct(r.get('client_busy')), '.0f')} %) | "
                    f"{_fmt(r.get('client_acks_per_gib'), '.0f')} | "
                    f"{_fmt(r.get('server_datagrams_in_per_gib'), '.0f')} |"
                )
            ratio_rows.extend(_ratio_rows(shown, counts, by_round))
    print("\n".join(rows))
    if ratio_rows:
        print()
        print("\n".join(RATIO_HEADER + ratio_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
