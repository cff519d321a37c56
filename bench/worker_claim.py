"""What a worker's per-connection socket reads cost in ``SteeringTransport.claim``.

Run: .venv/bin/python bench/worker_claim.py [--mib 128] [--repeat 20]

In worker mode every buffer a per-connection socket reads goes through the listener's
``claim`` (``EndpointRunner._sort_strays``), so a datagram of another worker that
arrives on the 4-tuple is handed over. This runs two steered workers in this process
(``tests/support/inprocess_workers.py``), uploads ``--mib`` MiB from one client through
its connection's socket, and counts the ``claim`` calls, the buffers and segments they
were given and the time spent in them (per GiB read through the socket), next to the
process's CPU time per GiB (client and both workers). Then it times ``claim`` again on
the recorded batches, ``--repeat`` times over, without the transfer around it.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import quicflow  # noqa: E402
from quicflow.datapath.backends import RecvEntry  # noqa: E402
from quicflow.datapath.connected import SocketPolicy  # noqa: E402
from quicflow.datapath.handoff import SteeringTransport  # noqa: E402
from tests.support.inprocess_workers import in_process_workers  # noqa: E402
from tests.support.transfer import client_configuration, download  # noqa: E402

GIB = 1 << 30
Samples = list[tuple[SteeringTransport, list[RecvEntry]]]


async def _run(mib: int, count: bool = True) -> tuple[dict[str, Any], Samples]:
    original = SteeringTransport.claim
    counts = {"calls": 0, "buffers": 0, "gro_buffers": 0, "segments": 0, "bytes": 0, "ns": 0}
    samples: Samples = []

    def counting(self: SteeringTransport, entries: list[RecvEntry]) -> list[RecvEntry]:
        t0 = time.perf_counter_ns()
        out = original(self, entries)
        counts["ns"] += time.perf_counter_ns() - t0
        counts["calls"] += 1
        counts["buffers"] += len(entries)
        for data, segment_size, _, _ in entries:
            counts["segments"] += -(-len(data) // segment_size)
            counts["bytes"] += len(data)
            counts["gro_buffers"] += segment_size < len(data)
        if len(samples) < 4000:
            samples.append((self, list(entries)))
        return out

    if count:
        SteeringTransport.claim = counting  # type: ignore[method-assign]
    try:
        every = SocketPolicy(min_bytes=0, min_age=0.0)
        async with in_process_workers(2, 8, every) as workers:
            async with quicflow.connect(
                "127.0.0.1", workers.port, configuration=client_configuration()
            ) as client:
                assert (await download(client, 1024)).ok  # the socket is made meanwhile
                cpu0, wall0 = time.process_time(), time.perf_counter()
                result = await download(client, 0, upload=mib << 20)
                cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
                assert result.ok, "the upload was not intact"
                misrouted = sum(t.misrouted_datagrams for t in workers.transports)
    finally:
        SteeringTransport.claim = original  # type: ignore[method-assign]
    per_gib = GIB / max(counts["bytes"], 1)
    report = {
        "uploaded_mib": mib,
        "read_through_socket_mib": round(counts["bytes"] / (1 << 20), 1),
        "claim_calls_per_gib": round(counts["calls"] * per_gib),
        "buffers_per_gib": round(counts["buffers"] * per_gib),
        "gro_buffers_per_gib": round(counts["gro_buffers"] * per_gib),
        "segments_per_gib": round(counts["segments"] * per_gib),
        "claim_ms_per_gib_in_transfer": round(counts["ns"] * per_gib / 1e6, 1),
        "process_cpu_s_per_gib": round(cpu * GIB / (mib << 20), 2),
        "wall_s": round(wall, 2),
        "misrouted_datagrams": misrouted,
    }
    return report, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB to upload (default 128)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=20,
        help="passes over the recorded batches when timing claim alone",
    )
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="no counting wrapper around claim: only the process's CPU time",
    )
    args = parser.parse_args()
    report, samples = asyncio.run(_run(args.mib, not args.cpu_only))
    if not samples:  # a build whose per-connection reads do not call claim
        print(json.dumps(report))
        return
    buffers = sum(len(entries) for _, entries in samples)
    nbytes = sum(len(e[0]) for _, entries in samples for e in entries)
    claim = SteeringTransport.claim
    t0 = time.perf_counter_ns()
    for _ in range(args.repeat):
        for transport, entries in samples:
            claim(transport, entries)
    ns = time.perf_counter_ns() - t0
    report["alone_us_per_call"] = round(ns / 1e3 / (args.repeat * len(samples)), 3)
    report["alone_us_per_buffer"] = round(ns / 1e3 / (args.repeat * buffers), 3)
    report["alone_ms_per_gib"] = round(ns / 1e6 * GIB / (args.repeat * nbytes), 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
