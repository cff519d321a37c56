"""CPU per handshake of the sans-I/O core alone: no sockets, no asyncio.

Run: ``.venv/bin/python bench/handshake_core.py [--handshakes 2000] [--idle 0]
[--profile FILE] [--profile-server FILE]``

A client ``Connection`` and a server ``Endpoint`` exchange datagrams in memory until
both sides have completed the handshake (then the client closes and the server
connection is forgotten). The server's share is timed separately (``time.thread_time``
around every server call: receive, build datagrams, timers), so the figure is the
server CPU per handshake of the protocol core, free of the event loop and syscalls
that bench/handshake.py includes. ``--idle K`` keeps K completed connections in the
server endpoint meanwhile. ``--resume`` times resumed handshakes (a session ticket from
a first handshake, no 0-RTT): no certificate, no signature. ``--profile-server FILE``
cProfiles only the server's calls of the measured handshakes (deterministic call counts:
``server_calls_per_handshake`` in the output). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))

from quicflow.endpoint.endpoint import Endpoint  # noqa: E402
from quicflow.tls.certs import generate_self_signed  # noqa: E402
from quicflow.transport.config import Configuration  # noqa: E402
from quicflow.transport.events import SessionTicketReceived  # noqa: E402
from quicflow.transport.factory import client_connection  # noqa: E402
from quicflow.transport.send import datagrams_to_send  # noqa: E402

CLIENT_ADDR = ("127.0.0.1", 40000)
GC_TUNED = (20_000, 20, 100)
#: --close-at-complete: the client closes as soon as its handshake completes: its close
#: reaches the server after its Finished, and the server's answer to the Finished (its
#: post-handshake flight) never reaches it (the usual order in bench/handshake.py)
CLOSE_AT_COMPLETE = [False]


#: the cProfile.Profile of --profile-server while the measured handshakes run
_SERVER_PROFILE: list[Any] = []


def _server_begin() -> float:
    if _SERVER_PROFILE:
        _SERVER_PROFILE[0].enable()
    return time.thread_time()


def _server_end(t0: float) -> float:
    spent = time.thread_time() - t0
    if _SERVER_PROFILE:
        _SERVER_PROFILE[0].disable()
    return spent


def handshake(server: Endpoint, client_cfg: Configuration, now: float, port: int,
              clock: list[float], keep: bool, ticket: Any = None) -> Any:
    """One handshake; returns the session ticket the client got (or None)."""
    addr = ("127.0.0.1", port)
    client = client_connection(client_cfg, ("127.0.0.1", 4433), now, session_ticket=ticket)
    from quicflow.transport.receive import receive_datagram

    sconn = None
    closed = False
    for _ in range(10):
        out = datagrams_to_send(client, now)
        # as bench/handshake.py's client: it closes as soon as it has sent its Finished,
        # before the server's answer to it arrives
        closed = CLOSE_AT_COMPLETE[0] and not keep and client.handshake_complete
        t0 = _server_begin()
        for d in out:
            c = server.receive(d, addr, now)
            if c is not None:
                sconn = c
        back = server.datagrams_to_send(sconn, now) if sconn is not None else []
        server.accepted.clear()
        clock[0] += _server_end(t0)
        if closed:
            break
        for d in back:
            receive_datagram(client, d, ("127.0.0.1", 4433), now)
        now += 0.001
        if client.handshake_complete and sconn is not None and sconn.handshake_complete and \
                not out and not back:
            break
    assert sconn is not None and sconn.handshake_complete and client.handshake_complete
    assert ticket is None or sconn.session_resumed
    got = None if closed else next(
        (e.ticket for e in client.pop_events() if isinstance(e, SessionTicketReceived)), None)
    if not keep:
        client.close(0, "", now=now)
        close = datagrams_to_send(client, now)  # (the client's work: outside the window)
        t0 = _server_begin()
        for d in close:
            server.receive(d, addr, now)
        sconn.handle_timer(now + 10)  # draining ends
        server.datagrams_to_send(sconn, now + 10)
        server.forget(sconn)
        clock[0] += _server_end(t0)
    return got


def server_and_client_config() -> tuple[Endpoint, Configuration]:
    """The benchmarks' in-memory server endpoint and client configuration."""
    cert, key = generate_self_signed(["localhost"])
    server_cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                               private_key=key, idle_timeout=600.0)
    client_cfg = Configuration(alpn_protocols=["perf"], verify_peer=False, idle_timeout=600.0,
                               early_data=False)
    return Endpoint(server_cfg, is_server=True), client_cfg


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--resume", action="store_true",
                    help="time resumed handshakes (session ticket, no 0-RTT)")
    ap.add_argument("--profile", help="cProfile (CPU time) of the whole run into FILE")
    ap.add_argument("--profile-server", metavar="FILE",
                    help="cProfile only the server's calls of the measured handshakes into "
                         "FILE (call counts; see server_calls_per_handshake)")
    ap.add_argument("--close-at-complete", action="store_true",
                    help="the client closes as soon as its handshake completes, before the "
                         "server's post-handshake flight reaches it (as in "
                         "bench/handshake.py)")
    ap.add_argument("--gc", choices=["default", "freeze", "tuned", "off"], default="default")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                    help="trace allocations while the idle connections are made and "
                         "print the N biggest sites on stderr")
    args = ap.parse_args()
    server, client_cfg = server_and_client_config()
    CLOSE_AT_COMPLETE[0] = args.close_at_complete
    clock = [0.0]
    ticket = handshake(server, client_cfg, 1.0, 9999, clock, keep=False)  # imports, caches
    if not args.resume:
        ticket = None
    gc.collect()
    rss0 = _rss_kb()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
        snap0 = tracemalloc.take_snapshot()
    for i in range(args.idle):
        handshake(server, client_cfg, 1.0, 10000 + i % 50000, clock, keep=True)
    gc.collect()
    memory: dict[str, float] = {}
    if args.idle:
        memory["rss_kb_per_idle_connection"] = (_rss_kb() - rss0) / args.idle
    if args.tracemalloc:
        snap1 = tracemalloc.take_snapshot()
        traced = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        memory["traced_kb_per_idle_connection"] = traced / 1024 / max(args.idle, 1)
        for stat in snap1.compare_to(snap0, "lineno")[: args.tracemalloc]:
            print(f"{stat.size_diff / max(args.idle, 1):8.0f} B/conn {stat.count_diff:8d} "
                  f"{stat.traceback}", file=sys.stderr)
    if args.gc == "freeze":
        gc.freeze()
    elif args.gc == "tuned":
        gc.freeze()
        gc.set_threshold(*GC_TUNED)
    elif args.gc == "off":
        gc.disable()
    for _ in range(50):
        handshake(server, client_cfg, 1.0, 9999, clock, keep=False)
    gc_time = [0.0, 0.0, 0]  # total, started at, collections

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_time[1] = time.thread_time()
        else:
            gc_time[0] += time.thread_time() - gc_time[1]
            gc_time[2] += 1

    gc.callbacks.append(on_gc)
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile(time.thread_time)
        prof.enable()
    if args.profile_server:
        import cProfile

        _SERVER_PROFILE.append(cProfile.Profile())
    clock = [0.0]
    for _ in range(args.handshakes):
        handshake(server, client_cfg, 1.0, 9999, clock, keep=False, ticket=ticket)
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    calls: dict[str, float] = {}
    if _SERVER_PROFILE:
        import pstats

        _SERVER_PROFILE[0].dump_stats(args.profile_server)
        stats = pstats.Stats(args.profile_server)
        calls["server_calls_per_handshake"] = stats.total_calls / args.handshakes  # type: ignore[attr-defined]
        _SERVER_PROFILE.clear()
    print(json.dumps({"handshakes": args.handshakes, "idle": args.idle, "gc": args.gc,
                      "resumed": ticket is not None,
                      "server_core_ms_per_handshake": clock[0] * 1000 / args.handshakes,
                      "gc_ms_per_handshake": gc_time[0] * 1000 / args.handshakes,
                      "gc_collections": gc_time[2],
                      **calls, **memory}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
