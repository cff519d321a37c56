"""CPU per handshake of the TLS layer alone, server side and client side.

Run: ``.venv/bin/python bench/handshake_tls.py [--handshakes 1500] [--tickets]
[--verify] [--profile FILE]``

A client and a server ``TlsSession`` (quicflow.tls) exchange their handshake messages in
memory: no QUIC packets, no transport, no sockets. ``time.thread_time`` around each
side's calls gives the server's and the client's CPU per handshake (x25519, the
ECDSA P-256 signature and its verification, the key schedule, message parsing and
building). ``--tickets`` gives the server a ticket key (it then seals and sends a
NewSessionTicket, as quicflow servers do by default); ``--verify`` makes the client
verify the server's chain (against the certificate itself, as cadata). Runs 50
untimed handshakes first. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))

from quicflow.tls import (  # noqa: E402
    TlsConfig,
    TlsSession,
    certificate_pem,
    generate_self_signed,
)
from quicflow.tls.tickets import TicketSealer  # noqa: E402

WARMUP = 50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=1500, help="timed handshakes")
    ap.add_argument("--tickets", action="store_true",
                    help="the server seals and sends a session ticket")
    ap.add_argument("--verify", action="store_true",
                    help="the client verifies the server's certificate chain")
    ap.add_argument("--profile", help="cProfile (CPU time) of the whole run into FILE")
    args = ap.parse_args()
    cert, key = generate_self_signed(["localhost"])
    server_cfg = TlsConfig(is_client=False, alpn_protocols=["h3"], certificate_chain=[cert],
                           private_key=key,
                           ticket_sealer=TicketSealer(os.urandom(32)) if args.tickets else None)
    client_cfg = TlsConfig(is_client=True, alpn_protocols=["h3"], server_name="localhost",
                           verify_peer=args.verify,
                           cadata=certificate_pem(cert) if args.verify else None)
    params = bytes(60)
    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    server_s = client_s = 0.0
    for i in range(WARMUP + args.handshakes):
        if i and i % 500 == 0:
            print(f"[handshake_tls] {i} handshakes", file=sys.stderr)
        t0 = time.thread_time()
        client = TlsSession(client_cfg, params)
        client.start()
        hello = client.pop_output()
        t1 = time.thread_time()
        server = TlsSession(server_cfg, params)
        for epoch, data in hello:
            server.receive(epoch, data)
        flight = server.pop_output()
        t2 = time.thread_time()
        for epoch, data in flight:
            client.receive(epoch, data)
        finished = client.pop_output()
        t3 = time.thread_time()
        for epoch, data in finished:
            server.receive(epoch, data)
        server.pop_output()
        t4 = time.thread_time()
        if not (client.handshake_complete and server.handshake_complete):
            print("handshake did not complete", file=sys.stderr)
            return 1
        if i >= WARMUP:
            client_s += (t1 - t0) + (t3 - t2)
            server_s += (t2 - t1) + (t4 - t3)
    if profile is not None:
        profile.disable()
        profile.dump_stats(args.profile)
    n = args.handshakes
    print(json.dumps({
        "handshakes": n, "tickets": args.tickets, "verify": args.verify,
        "server_tls_us_per_handshake": round(server_s / n * 1e6, 1),
        "client_tls_us_per_handshake": round(client_s / n * 1e6, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
