"""Capture and restore cost of one idle connection, in process.

Run: ``.venv/bin/python bench/snapshot_cost.py [--connections 300] [--buffered BYTES]
[--profile]``. Builds established connections in memory (the test suite's in-memory
pair, a 1 KB request answered), then times ``capture_sealed`` and ``restore_sealed`` +
``adopt`` for each; ``--buffered`` first writes that many random bytes on a new stream
of each server connection (data a busy connection holds unsent or unacknowledged,
which a snapshot carries); ``--profile`` prints the cProfile of both.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quicflow.transport.snapshot import (  # noqa: E402
    SnapshotGuard,
    capture_sealed,
    new_snapshot_key,
    restore_sealed,
)
from tests.test_snapshot import _server_endpoint, _start  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=300)
    p.add_argument("--buffered", type=int, default=0,
                   help="random bytes written on a new stream of each connection first")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()
    key = new_snapshot_key()
    conns = []
    for _ in range(args.connections):
        net, client, server = _start(size=1000)
        net.run(lambda client=client: client.app.done)
        if args.buffered and server.conn is not None:
            sid = server.conn.open_stream(bidirectional=False)
            server.conn.send_stream_data(sid, os.urandom(args.buffered))
        conns.append((net, server.conn))
    ep = _server_endpoint()
    out_guard, in_guard = SnapshotGuard(), SnapshotGuard()
    profiles = [cProfile.Profile(), cProfile.Profile()]
    t0 = time.perf_counter()
    if args.profile:
        profiles[0].enable()
    blobs = [capture_sealed(conn, net.now, key, b"{}", guard=out_guard, wall_time=time.time())
             for net, conn in conns]
    profiles[0].disable()
    t1 = time.perf_counter()
    if args.profile:
        profiles[1].enable()
    for blob, (net, _) in zip(blobs, conns, strict=True):
        conn, _ = restore_sealed(blob, key, guard=in_guard, wall_time=time.time(),
                                 engine=ep.engine, now=net.now, configuration=ep.configuration)
        ep.adopt(conn)
    profiles[1].disable()
    t2 = time.perf_counter()
    n = args.connections
    print(f"capture {1000 * (t1 - t0) / n:.3f} ms, restore {1000 * (t2 - t1) / n:.3f} ms per "
          f"connection; sealed snapshot {sum(map(len, blobs)) / n:.0f} bytes")
    if args.profile:
        for prof in profiles:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
