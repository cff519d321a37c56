"""Instructions per handshake of the sans-I/O core server, counted by valgrind.

Run: ``.venv/bin/python bench/handshake_ir.py [--handshakes 100] [--only FUNCTION]``

CPU time on a shared machine moves by 15-30 % with the load; the number of instructions
executed does not. This runs bench/handshake_core.py's in-memory handshakes under
``valgrind --tool=callgrind`` and counts instructions only inside the server's calls
(``server``, the default: receive, build, timers and teardown of each handshake) or only
inside one function of the server (``--only server_connection`` and the like: the
outermost call, its callees included), or only inside one of its flight builds per
handshake (``--only first_flight`` / ``post_flight``). A tiny C helper, compiled on the
fly with the system's ``valgrind/callgrind.h``, switches the counting on and off. Needs
valgrind and a C compiler. Under valgrind OpenSSL may not use the CPU's SHA extensions, so hashing
counts for more instructions than it costs in time. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

_HELPER = r"""
#include <valgrind/callgrind.h>
void qf_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
"""

#: --only choices: (module, attribute owner path, name)
_TARGETS = {
    "server_connection": ("quicflow.endpoint.endpoint", None, "server_connection"),
    # every datagram's lookup: admission, construction and registration of a new one
    "lookup": ("quicflow.endpoint.endpoint", "Endpoint", "_lookup"),
    "client_hello": ("quicflow.tls.server", "ServerHandshake", "_client_hello"),
    "server_flight": ("quicflow.tls.server", "ServerHandshake", "_send_server_flight"),
    "finished": ("quicflow.tls.server", "ServerHandshake", "_finished"),
    "issue_host_cid": ("quicflow.transport.connection", "Connection", "issue_host_cid"),
    # the transport packet path: receive (TLS included: subtract tls_handle), build
    "receive_datagram": ("quicflow.endpoint.endpoint", None, "receive_datagram"),
    "tls_handle": ("quicflow.tls.server", "ServerHandshake", "handle"),
    "datagrams_to_send": ("quicflow.endpoint.endpoint", None, "datagrams_to_send"),
}

#: --only choices that count one of the server's Endpoint.datagrams_to_send calls per
#: handshake: its first (the Initial and Handshake flight) or the one right after its
#: handshake completed (HANDSHAKE_DONE, NEW_TOKEN and the NewSessionTicket)
_FLIGHTS = ("first_flight", "post_flight")


def _inner(args: argparse.Namespace) -> None:
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import handshake_core as hc


    toggle = ctypes.CDLL(args.helper).qf_toggle
    server, client_cfg = hc.server_and_client_config()
    hc.CLOSE_AT_COMPLETE[0] = args.close_at_complete
    clock = [0.0]
    for _ in range(30):  # imports, caches
        hc.handshake(server, client_cfg, 1.0, 9999, clock, keep=False)
    if args.only == "server":
        begin, end = hc._server_begin, hc._server_end

        def counted_begin() -> float:
            toggle()
            return begin()

        def counted_end(t0: float) -> float:
            spent = end(t0)
            toggle()
            return spent

        hc._server_begin, hc._server_end = counted_begin, counted_end  # type: ignore[assignment]
    elif args.only in _FLIGHTS:
        _count_flight(args.only, hc, toggle)
    else:
        module_name, owner_name, name = _target(args.only)
        module = importlib.import_module(module_name)
        owner: Any = getattr(module, owner_name) if owner_name else module
        func = getattr(owner, name)
        depth = [0]
        in_server = [False]  # only the server's calls count (a function both sides run)
        begin, end = hc._server_begin, hc._server_end

        def server_begin() -> float:
            in_server[0] = True
            return begin()

        def server_end(t0: float) -> float:
            in_server[0] = False
            return end(t0)

        def counted(*a: Any, **k: Any) -> Any:
            if not in_server[0]:
                return func(*a, **k)
            depth[0] += 1
            if depth[0] == 1:
                toggle()
            try:
                return func(*a, **k)
            finally:
                if depth[0] == 1:
                    toggle()
                depth[0] -= 1

        hc._server_begin, hc._server_end = server_begin, server_end  # type: ignore[assignment]
        setattr(owner, name, counted)
    for _ in range(args.handshakes):
        hc.handshake(server, client_cfg, 1.0, 9999, clock, keep=False)


def _count_flight(which: str, hc: Any, toggle: Any) -> None:
    """Count only the server's first ``datagrams_to_send`` call of each connection, or
    the first one after its handshake completed (``which``)."""
    from quicflow.endpoint.endpoint import Endpoint

    build = Endpoint.datagrams_to_send
    seen: dict[int, str] = {}  # id(connection) -> the last flight counted

    def counted(self: Endpoint, conn: Any, now: float) -> list[bytes]:
        key = id(conn)
        if key not in seen:
            seen[key] = "first_flight"
            flight = "first_flight"
        elif seen[key] == "first_flight" and conn.handshake_complete:
            seen[key] = flight = "post_flight"
        else:
            flight = ""
        if flight != which:
            return build(self, conn, now)
        toggle()
        try:
            return build(self, conn, now)
        finally:
            toggle()

    forget = Endpoint.forget

    def forgotten(self: Endpoint, conn: Any) -> None:
        seen.pop(id(conn), None)  # (an id is reused once its connection is gone)
        forget(self, conn)

    Endpoint.datagrams_to_send = counted  # type: ignore[method-assign]
    Endpoint.forget = forgotten  # type: ignore[method-assign]


def _target(only: str) -> tuple[str, str | None, str]:
    """A --only choice, or ``module:name`` / ``module:Class.name`` (the function as the
    caller looks it up: patch the name in the module that calls it)."""
    if ":" not in only:
        return _TARGETS[only]
    module_name, qualname = only.split(":", 1)
    owner_name, _, name = qualname.rpartition(".")
    return module_name, owner_name or None, name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=100)
    ap.add_argument("--only", default="server",
                    help="count inside all the server's calls (default) or one function: "
                         f"{', '.join(_TARGETS)}; one server flight build per "
                         f"handshake: {', '.join(_FLIGHTS)}; or any as MODULE:NAME or "
                         "MODULE:CLASS.NAME (e.g. quicflow.transport.receive:_after_tls)")
    ap.add_argument("--close-at-complete", action="store_true",
                    help="the client closes as soon as its handshake completes, before the "
                         "server's post-handshake flight reaches it (as in "
                         "bench/handshake.py)")
    ap.add_argument("--helper", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only != "server" and ":" not in args.only and args.only not in _TARGETS and (
            args.only not in _FLIGHTS):
        ap.error(f"--only: unknown function {args.only!r}")
    if args.helper:
        _inner(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "toggle.c")
        helper = os.path.join(tmp, "toggle.so")
        with open(src, "w") as f:
            f.write(_HELPER)
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", helper, src], check=True)
        print(f"counting {args.handshakes} handshakes under valgrind...", file=sys.stderr)
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             f"--callgrind-out-file={os.path.join(tmp, 'callgrind.out')}",
             sys.executable, os.path.abspath(__file__), "--handshakes", str(args.handshakes),
             "--only", args.only, "--helper", helper]
            + (["--close-at-complete"] if args.close_at_complete else []),
            capture_output=True, text=True, check=True,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        print(run.stderr, file=sys.stderr)
        return 1
    print(json.dumps({"handshakes": args.handshakes, "only": args.only,
                      "close_at_complete": args.close_at_complete,
                      "instructions_per_handshake": round(int(found.group(1))
                                                          / args.handshakes)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
