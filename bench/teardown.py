"""Teardown cost: connections that expire together (issue 10 item 8, issue 11 item 1).

Feeds N client Initials (from N addresses) into a sans-I/O server endpoint, then lets
every half-open connection time out at once and flushes each as the runner does
(``handle_timer`` + ``datagrams_to_send``, which forgets it). Prints the server CPU time
of that mass expiry and the registry's dict operations per connection (when the
registry exists). ``--reverse`` expires the newest first (the worst order for list-based
bookkeeping). Uses the pure-Python engine unless QUICFLOW_ENGINE says otherwise.

    .venv/bin/python bench/teardown.py --connections 1000 --reverse
"""

from __future__ import annotations

import argparse
import sys
import time

from quicflow.endpoint.endpoint import Endpoint
from quicflow.tls.certs import generate_self_signed
from quicflow.transport.config import Configuration


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000, help="half-open connections")
    parser.add_argument("--reverse", action="store_true", help="expire the newest first")
    args = parser.parse_args()
    cert, key = generate_self_signed(["localhost"])
    server = Endpoint(
        Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                      idle_timeout=5, retry="never", max_half_open=10**9),
        is_server=True,
    )  # fmt: skip
    for i in range(args.connections):
        cep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False), False)
        conn = cep.connect(("127.0.0.1", 4433), 0.0, server_name="localhost")
        initial = cep.datagrams_to_send(conn, 0.0)[0]
        sconn = server.receive(initial, (f"127.0.{1 + i // 250}.{1 + i % 250}", 40000), 0.0)
        if sconn is not None:
            server.datagrams_to_send(sconn, 0.0)
        if i % 500 == 499:
            print(f"{i + 1} connections", file=sys.stderr)
    conns = list(server.all_connections)
    if args.reverse:
        conns.reverse()
    registry = getattr(server, "registry", None)
    ops_before = registry.counters.ops if registry is not None else 0
    start = time.process_time()
    for conn in conns:
        conn.handle_timer(10.0)
        server.datagrams_to_send(conn, 10.0)
    cpu = time.process_time() - start
    ops = (registry.counters.ops - ops_before) / len(conns) if registry is not None else None
    print(
        f"connections={len(conns)} expiry_cpu_s={cpu:.3f} left={len(server.all_connections)}"
        + (f" registry_ops_per_connection={ops:.1f}" if ops is not None else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
