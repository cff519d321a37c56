"""``quicflow perf migrate`` (also ``quicflow hq migrate``) and the move options of
``quicflow perf server`` and ``quicflow hq server``.

Moving the connections of a running perf server on host A to a perf server on host B
(the service address must move to B with them, e.g. a router switches its route):

    B: quicflow perf server --host VIP --cert c --key k --migrate-listen B_ADDR:7444 \\
           --migrate-cert b.pem --migrate-key b.key --migrate-ca ca.pem
    A: quicflow perf server --host VIP --cert c --key k --handoff /run/perf.sock
    A: quicflow perf migrate --handoff /run/perf.sock --to B_ADDR:7444 \\
           --cert a.pem --key a.key --ca ca.pem [--count N] [--json]

The command asks A's server (over its handoff socket: same user only) to move its
connections; A opens TLS to B with its certificate, B requires one from ca.pem.

With ``--mode cids`` the address stays: A and B sit behind a balancer that routes by
the server ID in the CID (docs/nftables-quic-lb.md; both started with their own
``--host-id``), B issues CIDs of its own for each moved connection, the client switches
to them and the balancer delivers to B; A forwards what still reaches it for
``--forward-seconds``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..aio import QuicServer
from ..migration.handoff import HandoffError, request_move
from ..migration.transfer import server_context
from .common import _positive_int


def add_server_options(server: argparse.ArgumentParser) -> None:
    server.add_argument(
        "--migrate-listen", metavar="HOST:PORT", type=_listen_host_port,
        help="accept connections moved here from a server on another host, over "
        "TCP inside TLS that requires a client certificate from --migrate-ca; needs "
        "--migrate-cert, --migrate-key and --migrate-ca (default: off)",
    )  # fmt: skip
    server.add_argument("--migrate-cert", metavar="FILE",
                        help="PEM certificate for --migrate-listen")
    server.add_argument("--migrate-key", metavar="FILE",
                        help="PEM private key for --migrate-listen")
    server.add_argument("--migrate-ca", metavar="FILE",
                        help="PEM CA certificate(s) a migration peer's certificate must "
                        "chain to")


async def start_receiver(args: argparse.Namespace, server: QuicServer) -> Any:
    """Start accepting moves when ``--migrate-listen`` was given (None otherwise)."""
    if not args.migrate_listen:
        return None
    if not (args.migrate_cert and args.migrate_key and args.migrate_ca):
        raise ValueError("--migrate-listen needs --migrate-cert, --migrate-key and --migrate-ca")
    host, _, port = args.migrate_listen.rpartition(":")
    context = server_context(args.migrate_cert, args.migrate_key, args.migrate_ca)
    receiver = await server.accept_moves(host.strip("[]"), int(port), context)
    address = receiver.address
    print(f"accepting migrations on {address[0]}:{address[1]}", file=sys.stderr, flush=True)
    return receiver


def cmd_perf_migrate(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"to": args.to, "cert": args.cert, "key": args.key,
                               "ca": args.ca, "server_name": args.server_name,
                               "count": args.count, "mode": args.mode,
                               "forward_seconds": args.forward_seconds}
    try:
        answer = request_move(args.handoff, request)
    except HandoffError as exc:
        print(f"quicflow: {exc}", file=sys.stderr)
        return 1
    if "error" in answer:
        print(f"quicflow: moving failed: {answer['error']}", file=sys.stderr)
        return 1
    moved = int(answer.get("moved", 0))
    for reason, n in dict(answer.get("not_captured") or {}).items():
        print(f"quicflow: {n} connection(s) not moved: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"moved_connections": moved}), flush=True)
    else:
        print(f"moved {moved} connection(s) to {args.to}", flush=True)
    return 0


def _host_port(text: str, lowest: int = 1) -> str:
    """HOST:PORT (IPv6 as [ADDR]:PORT), checked here and passed on as written."""
    host, sep, port = text.rpartition(":")
    if (not sep or not host.strip("[]") or not port.isdigit()
            or not lowest <= int(port) < 65536):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port {lowest}..65535, "
                                         f"got {text!r}")
    return text


def _listen_host_port(text: str) -> str:
    return _host_port(text, lowest=0)  # 0: any free port (it is printed)


def _forward_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 600")
    return value


def add_migrate_parser(sub: Any) -> None:
    """``migrate`` under ``perf`` or ``hq`` (the same command: it talks to the server's
    handoff socket, whatever the application)."""
    p = sub.add_parser(
        "migrate",
        help="move connections of a running server to one on another host",
        description="Ask the server offering a handoff at --handoff to move its "
        "connections (all, or --count of them) to the server accepting migrations "
        "at --to, over TCP inside mutually authenticated TLS; the service address must "
        "follow them to the other host, or (--mode cids) a balancer routing by the CIDs' "
        "server ID takes the clients there. Prints how many moved (--json: "
        '{"moved_connections": N}); exit 0, or 1 with one line saying why.',
    )
    p.add_argument("--handoff", required=True, metavar="PATH",
                   help="the running server's handoff socket (its --handoff PATH)")
    p.add_argument("--to", required=True, metavar="HOST:PORT", type=_host_port,
                   help="the receiving server's --migrate-listen address")
    p.add_argument("--cert", required=True, metavar="FILE",
                   help="PEM client certificate the sending server presents")
    p.add_argument("--key", required=True, metavar="FILE", help="its PEM private key")
    p.add_argument("--ca", required=True, metavar="FILE",
                   help="PEM CA the receiver's certificate must chain to")
    p.add_argument("--server-name", metavar="NAME",
                   help="name to check the receiver's certificate against "
                   "(default: the HOST of --to)")
    p.add_argument("--count", type=_positive_int, metavar="N",
                   help="move at most N connections (default: all of them)")
    p.add_argument(
        "--mode", choices=("address", "cids"), default="address",
        help="address (default): the service address follows the connections to the "
        "other host; cids: the address stays, the clients get connection IDs that a "
        "QUIC-LB balancer routes to the other host (docs/nftables-quic-lb.md)",
    )  # fmt: skip
    p.add_argument(
        "--forward-seconds", type=_forward_seconds, default=10.0, metavar="S",
        help="with --mode cids: how long the old server forwards what still reaches it "
        "for the moved connections to the new one (default 10, at most 600)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true",
                   help='print one JSON object on stdout, {"moved_connections": N}, '
                   "instead of a line")
    p.set_defaults(func=cmd_perf_migrate)
