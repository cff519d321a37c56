"""Downloads that run across a per-connection move; prints one JSON object.

``python -m tests.support.lb_move_clients HOST PORT CLIENTS SIZE`` (run inside the client
namespace of ``lbnet``): each client opens its own connection and downloads SIZE bytes
(the perf pattern, SHA-256 checked), reading slowly (so every download is mid-way when
a connection moves) until a line arrives on stdin, then at full speed. ``started`` is
printed on stderr once every client has received data.

Reported per client: whether the bytes were intact and the same connection carried them
(no new handshake, no close), the host ID byte of the server's CIDs at the start and at
the end, and for the stall measurement: the longest gap between two reads, the time from
the switch to another host's CIDs to the next read, and the PTO just before the switch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys
import time

import quicflow
from tests.support.takeover import perf_sha256
from tests.support.transfer import client_configuration

CHUNK = 32 * 1024


class Client:
    def __init__(self) -> None:
        self.reads: list[float] = []
        self.switched_at: float | None = None
        self.pto_before = 0.0
        self.first_host = self.last_host = -1
        self.received = False


async def one(index: int, host: str, port: int, size: int, fast: asyncio.Event,
              clients: list[Client], ready: asyncio.Event) -> dict[str, object]:
    me = clients[index]
    async with quicflow.connect(
        host, port, configuration=client_configuration(idle_timeout=30)
    ) as conn:
        first = conn.conn
        me.first_host = first.peer_cid[1]

        async def watch() -> None:  # when the client switches to another host's CIDs
            while True:
                if first.peer_cid[1] != me.first_host:
                    me.switched_at = time.monotonic()
                    return
                me.pto_before = first.pto()
                await asyncio.sleep(0.001)

        watcher = asyncio.get_running_loop().create_task(watch())
        reader, writer = await conn.create_stream()
        writer.write(struct.pack("!Q", size))
        writer.write_eof()
        digest = hashlib.sha256()
        got = 0
        while True:
            data = await reader.read(CHUNK if not fast.is_set() else 1 << 20)
            if not data:
                break
            me.reads.append(time.monotonic())
            digest.update(data)
            got += len(data)
            if not me.received:
                me.received = True
                if all(c.received for c in clients):
                    ready.set()
            if not fast.is_set():
                await asyncio.sleep(0.005)
        watcher.cancel()
        me.last_host = first.peer_cid[1]
        same = conn.conn is first and not conn.closed
    reads = me.reads
    gaps = [b - a for a, b in zip(reads, reads[1:], strict=False)]
    after = [t for t in reads if me.switched_at is not None and t >= me.switched_at]
    return {
        "intact": got == size and digest.hexdigest() == perf_sha256(size),
        "same_connection": same,
        "first_host": me.first_host,
        "last_host": me.last_host,
        "longest_gap": max(gaps) if gaps else 0.0,
        "switch_to_data": (after[0] - me.switched_at) if after and me.switched_at else None,
        "pto_before": me.pto_before,
    }


async def main(host: str, port: int, count: int, size: int) -> None:
    loop = asyncio.get_running_loop()
    fast, ready = asyncio.Event(), asyncio.Event()
    clients = [Client() for _ in range(count)]
    tasks = [loop.create_task(one(i, host, port, size, fast, clients, ready))
             for i in range(count)]
    await asyncio.wait_for(ready.wait(), 60)
    print("started", file=sys.stderr, flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    fast.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 180)
    print(json.dumps({"clients": results}), flush=True)


if __name__ == "__main__":
    h, p, c, s = sys.argv[1:5]
    asyncio.run(main(h, int(p), int(c), int(s)))
