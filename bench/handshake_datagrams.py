"""Datagrams per connect-then-close handshake, counted (not timed): a quicflow server and
a quicflow client endpoint in this process, N handshakes at 8 concurrent (ALPN h3, the
client closes right after the handshake). Prints one JSON object on stdout:
server/client datagrams received and sent per handshake.

    .venv/bin/python bench/handshake_datagrams.py --handshakes 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "src"))

import quicflow  # noqa: E402
from quicflow.endpoint.endpoint import Endpoint  # noqa: E402
from quicflow.tls.certs import generate_self_signed  # noqa: E402

counts = {"server_received": 0, "client_received": 0, "server_sent": 0, "client_sent": 0}


def _count() -> None:
    receive, build = Endpoint.receive_datagrams, Endpoint.build_datagrams

    def receive_datagrams(self: Endpoint, datagrams: Any, now: float) -> Any:
        counts["server_received" if self.is_server else "client_received"] += len(datagrams)
        return receive(self, datagrams, now)

    def build_datagrams(self: Endpoint, conn: Any, now: float, *rest: Any) -> Any:
        buf, ends = build(self, conn, now, *rest)
        counts["server_sent" if self.is_server else "client_sent"] += len(ends)
        return buf, ends

    Endpoint.receive_datagrams = receive_datagrams  # type: ignore[method-assign]
    Endpoint.build_datagrams = build_datagrams  # type: ignore[method-assign]


async def _run(handshakes: int) -> dict[str, float]:
    cert, key = generate_self_signed(["localhost", "127.0.0.1"])
    scfg = quicflow.Configuration(alpn_protocols=["h3"], certificate_chain=[cert],
                                  private_key=key, idle_timeout=600.0)

    async def handler(reader: Any, writer: Any) -> None:
        writer.write_eof()

    server = await quicflow.serve(handler, "127.0.0.1", 0, configuration=scfg)
    ccfg = quicflow.Configuration(alpn_protocols=["h3"], verify_peer=False, idle_timeout=600.0)
    sem = asyncio.Semaphore(8)
    try:
        async with quicflow.client_endpoint("127.0.0.1", configuration=ccfg) as ep:
            async def one() -> None:
                async with sem, ep.connect("127.0.0.1", server.address[1]):
                    pass

            await asyncio.gather(*(one() for _ in range(handshakes)))
            await asyncio.sleep(0.5)  # the closing periods end
    finally:
        server.close()
    return {k: v / handshakes for k, v in counts.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=100)
    args = ap.parse_args()
    _count()
    print(f"[handshake_datagrams] {args.handshakes} handshakes", file=sys.stderr)
    print(json.dumps(asyncio.run(_run(args.handshakes))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
