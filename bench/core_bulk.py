"""CPU cost of a bulk transfer through the sans-I/O core alone: a server and a client
endpoint in one process, datagrams handed over in memory (no sockets, no asyncio).

    .venv/bin/python bench/core_bulk.py [--size-mib 128] [--max-datagram 1200] [--qlog]

Prints MB of stream payload per CPU second (both ends together). ``--qlog`` attaches a
trace with a sink that drops every record (the cost of building the records).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from quicflow.endpoint.endpoint import Endpoint
from quicflow.tls.certs import generate_self_signed
from quicflow.transport import qlog
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection

SERVER, CLIENT = ("127.0.0.1", 4433), ("127.0.0.1", 50000)


class NullSink:
    def header(self, record: dict[str, Any]) -> None:
        pass

    def event(self, time: float, name: str, data: dict[str, Any]) -> None:
        pass

    def close(self, keep: bool = True) -> None:
        pass


def run(size: int, mds: int, with_qlog: bool) -> float:
    cert, key = generate_self_signed(["localhost"])
    srv = Endpoint(Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                                 private_key=key, max_datagram_size=mds, pmtud=False),
                   is_server=True)
    cli = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False,
                                 max_datagram_size=mds, pmtud=False), is_server=False)
    if with_qlog:
        srv.qlog_factory = lambda conn, now: qlog.start(conn, NullSink(), now, wall_time_ms=0)
    now = 0.0
    c = cli.connect(SERVER, now, server_name="localhost")
    if with_qlog:
        qlog.start(c, NullSink(), now, wall_time_ms=0)

    def conns() -> list[Connection]:
        return [c, *srv.all_connections]

    def step() -> bool:
        nonlocal now
        moved = False
        for ep, conn, peer_ep, addr in [(cli, c, srv, CLIENT)] + [
                (srv, s, cli, SERVER) for s in srv.all_connections]:
            buf, bounds = ep.build_datagrams(conn, now)
            prev = 0
            for end in bounds:
                peer_ep.receive(bytes(buf[prev:end]), addr, now)
                prev = end
                moved = True
        now += 0.0001
        if not moved:
            timers = [t for t in (x.timer() for x in conns()) if t is not None]
            now = max(now, min(timers))
            for x in conns():
                x.handle_timer(now)
        return moved

    while not c.handshake_confirmed or not srv.all_connections:
        step()
    s = next(iter(srv.all_connections))
    sid = c.open_stream()
    c.send_stream_data(sid, b"q", end_stream=True)
    while sid not in s.streams:
        step()
    s.pop_events()
    chunk = os.urandom(1 << 20)
    sent = got = 0
    t0 = time.process_time()
    while got < size:
        while sent < size and s.stream_buffered(sid) < 4 << 20:
            s.send_stream_data(sid, chunk, end_stream=sent + len(chunk) >= size)
            sent += len(chunk)
        step()
        c.pop_events()
        while data := c.read_stream(sid, 1 << 22):
            got += len(data)
    return size / (time.process_time() - t0) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--max-datagram", type=int, default=1200)
    ap.add_argument("--qlog", action="store_true", help="trace both ends into a null sink")
    args = ap.parse_args()
    rate = run(args.size_mib << 20, args.max_datagram, args.qlog)
    print(f"{rate:.1f} MB/s of payload per CPU second")


if __name__ == "__main__":
    main()
