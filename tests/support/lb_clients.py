"""Concurrent downloads through a rebinding NAT; prints one JSON object.

``python -m tests.support.lb_clients HOST PORT CLIENTS SIZE REBIND_EVERY`` (run inside
the client namespace of ``lbnet``): each client downloads SIZE bytes (the perf pattern,
SHA-256 checked) through a ``RebindingNat`` whose upstream ports change every
REBIND_EVERY datagrams, and reports the server ID bytes (host, worker) of the CIDs its
server issued.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys

import quicflow
from quicflow.apps.perf import PATTERN
from tests.support.nat import RebindingNat
from tests.support.transfer import client_configuration


async def one(port: int, size: int) -> dict[str, object]:
    """One perf request (the server is ``quicflow perf server``)."""
    async with quicflow.connect(
        "127.0.0.1", port, configuration=client_configuration(idle_timeout=10)
    ) as conn:
        reader, writer = await conn.create_stream()
        writer.write(struct.pack("!Q", size))
        writer.write_eof()
        body = await reader.read()  # to the end
        expected = (PATTERN * (size // len(PATTERN) + 1))[:size]
        intact = hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
        cid = conn.conn.peer_cid
        return {"host": cid[1], "worker": cid[2], "intact": intact}


async def main(host: str, port: int, clients: int, size: int, every: int) -> None:
    nat = RebindingNat((host, port), every, upstream_host="0.0.0.0")
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(one(nat.address[1], size) for _ in range(clients))), 120
        )
    finally:
        nat.close()
    print(json.dumps({"clients": results, "rebinds": nat.rebinds}), flush=True)


if __name__ == "__main__":
    h, p, c, s, e = sys.argv[1:6]
    asyncio.run(main(h, int(p), int(c), int(s), int(e)))
