"""What a spoofed Initial costs a server, by policy (sans-I/O endpoint, one process).

Builds N distinct valid client Initials (each its own DCID and ClientHello) from many
source addresses, then feeds them to a server ``Endpoint`` and reports, per policy:
microseconds of server CPU per Initial, connections held afterwards, and Python memory
held (tracemalloc) afterwards:

- ``retry=never``, no bound: every Initial opens a half-open connection (TLS handshake
  work, state held until the half-open timeout);
- ``retry=never``, ``max_half_open=B``: past the bound, Initials are dropped;
- ``retry=always``: every Initial gets a stateless Retry (a sealed token), no state.

    .venv/bin/python bench/admission.py [--initials 2000] [--bound 256]
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

from quicflow.endpoint.endpoint import Endpoint
from quicflow.tls.certs import generate_self_signed
from quicflow.transport.config import Configuration
from quicflow.transport.factory import client_connection
from quicflow.transport.send import datagrams_to_send


def initials(count: int) -> list[tuple[bytes, tuple[str, int]]]:
    cfg = Configuration(alpn_protocols=["perf"], verify_peer=False)
    out = []
    for i in range(count):
        conn = client_connection(cfg, ("127.0.0.1", 4433), 0.0, server_name="localhost")
        out.append((datagrams_to_send(conn, 0.0)[0], (f"127.0.{i // 250}.{i % 250 + 2}", 40000)))
    return out


CERT = generate_self_signed(["localhost"])


def _feed(
    policy: str, bound: int, flood: list[tuple[bytes, tuple[str, int]]], costs: list[float]
) -> Endpoint:
    """Feed the flood; ``costs`` gets [CPU of admitted Initials, admitted, CPU of the
    others (Retry or dropped), others]."""
    cert, key = CERT
    cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                        retry=policy, max_half_open=bound, retry_threshold=bound)
    server = Endpoint(cfg, is_server=True)
    costs[:] = [0.0, 0, 0.0, 0]
    clock = time.process_time
    for data, addr in flood:
        start = clock()
        conn = server.receive(data, addr, 1.0)
        if conn is not None:
            server.datagrams_to_send(conn, 1.0)  # the server's first flight
        server.pop_stateless()
        i = 0 if conn is not None else 2
        costs[i] += clock() - start
        costs[i + 1] += 1
    return server


def run(policy: str, bound: int, flood: list[tuple[bytes, tuple[str, int]]]) -> dict[str, float]:
    costs: list[float] = []
    _feed(policy, bound, flood, costs)  # CPU, without tracemalloc's overhead
    admitted = costs[0] / costs[1] * 1e6 if costs[1] else 0.0
    others = costs[2] / costs[3] * 1e6 if costs[3] else 0.0
    tracemalloc.start()
    server = _feed(policy, bound, flood, [])  # memory held afterwards
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "admitted_us": admitted,
        "others_us": others,
        "connections": len(server.all_connections),
        "held_mib": held / (1 << 20),
        "retries": server.admission.counters.retries_sent,
        "dropped": server.admission.counters.dropped_half_open,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--initials", type=int, default=2000)
    p.add_argument("--bound", type=int, default=256)
    args = p.parse_args()
    print(f"building {args.initials} Initials...", file=sys.stderr, flush=True)
    flood = initials(args.initials)
    print("| policy | µs CPU per admitted Initial | µs per retried/dropped Initial |"
          " connections held | memory held (MiB) | Retries | dropped |")
    print("|---|---|---|---|---|---|---|")
    for name, policy, bound in (
        ("retry=never, no bound", "never", 10**9),
        (f"retry=never, max_half_open={args.bound}", "never", args.bound),
        ("retry=always", "always", 10**9),
    ):
        r = run(policy, bound, flood)
        print(f"| {name} | {r['admitted_us']:.0f} | {r['others_us']:.0f} | {r['connections']} |"
              f" {r['held_mib']:.1f} | {r['retries']} | {r['dropped']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
