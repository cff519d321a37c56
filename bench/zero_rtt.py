"""Time to a first answer with a full handshake, a resumed one and 0-RTT.

Run: ``.venv/bin/python bench/zero_rtt.py [--delay-ms 25] [--runs 10]``

A quicflow server and client on loopback, with a relay in between that holds every
datagram ``--delay-ms`` in each direction (RTT = 2 x delay). Each run opens a connection,
sends a 1 KiB request on a stream and reads the 4 KiB answer; the time is from
``connect()`` to the last byte of the answer. Before each measured connection a first
one gets a session ticket and a NEW_TOKEN token (with the token the server has
validated the client's address at once, so the 3x amplification limit does not hold
back an answer sent before the handshake completes). Modes: ``full`` (token, no
ticket), ``resumed`` (the ticket, the request written after the handshake) and ``0rtt``
(the request written at once, in 0-RTT). Prints one JSON object with the medians in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))

import quicflow  # noqa: E402
from quicflow.endpoint.tokens import TokenCache  # noqa: E402
from quicflow.tls.certs import certificate_pem, generate_self_signed  # noqa: E402
from quicflow.tls.tickets import SessionTicketCache  # noqa: E402

ANSWER = [4096]


class DelayRelay(asyncio.DatagramProtocol):
    """Forwards datagrams between one client and the server, each after ``delay`` s."""

    def __init__(self, server: tuple[str, int], delay: float) -> None:
        self.server = server
        self.delay = delay
        self.client: Any = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        loop = asyncio.get_running_loop()
        if addr == self.server:
            target = self.client
        else:
            self.client = addr
            target = self.server
        if target is not None:
            loop.call_later(self.delay, self.transport.sendto, data, target)


async def answer(reader: Any, writer: Any) -> None:
    await reader.read()
    writer.write(b"a" * ANSWER[0])
    writer.write_eof()


async def one(port: int, cfg: quicflow.Configuration, early: bool) -> float:
    start = time.perf_counter()
    async with quicflow.connect("localhost", port, configuration=cfg,
                                wait_connected=not early) as conn:
        reader, writer = await conn.create_stream()
        writer.write(b"r" * 1024)
        writer.write_eof()
        got = await reader.read()
        elapsed = time.perf_counter() - start
        assert len(got) == ANSWER[0]
        if early:
            assert conn.early_data_accepted, "0-RTT was not accepted"
    return elapsed


async def main(args: argparse.Namespace) -> dict[str, Any]:
    cert, key = generate_self_signed(["localhost"])
    server = await quicflow.serve(answer, "127.0.0.1", 0, configuration=quicflow.Configuration(
        alpn_protocols=["bench"], certificate_chain=[cert], private_key=key))
    loop = asyncio.get_running_loop()
    relay_t, relay = await loop.create_datagram_endpoint(
        lambda: DelayRelay(("127.0.0.1", server.address[1]), args.delay_ms / 1000),
        local_addr=("127.0.0.1", 0))
    port = relay_t.get_extra_info("sockname")[1]
    times: dict[str, list[float]] = {"full": [], "resumed": [], "0rtt": []}
    try:
        for _ in range(args.runs):
            for mode in times:
                cache = SessionTicketCache()
                tokens = TokenCache()
                cfg = quicflow.Configuration(alpn_protocols=["bench"],
                                             cadata=certificate_pem(cert),
                                             session_ticket_cache=cache, token_cache=tokens)
                await one(port, cfg, False)  # a session ticket and a NEW_TOKEN token
                for _ in range(100):
                    if len(cache) and len(tokens):
                        break
                    await asyncio.sleep(0.01)
                assert len(cache) and len(tokens), "no ticket or token"
                if mode == "full":
                    cfg.session_ticket_cache = None
                relay.client = None
                times[mode].append(await one(port, cfg, mode == "0rtt"))
    finally:
        relay_t.close()
        server.close()
    return {"delay_ms_each_way": args.delay_ms, "runs": args.runs,
            **{f"{m}_ms_median": round(statistics.median(v) * 1000, 1)
               for m, v in times.items()}}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--answer", type=int, default=4096, help="answer size in bytes")
    ANSWER[0] = ap.parse_args().answer
    print(json.dumps(asyncio.run(main(ap.parse_args()))))
