"""Downloads that run across a per-connection move; prints one JSON object.

``python -m tests.support.lb_move_clients HOST PORT CLIENTS SIZE [fast]`` (run inside the
client namespace of ``lbnet``): each client opens its own connection and downloads SIZE
bytes (the perf pattern, SHA-256 checked), reading slowly (so every download is mid-way
when a connection moves) until a line arrives on stdin, then at full speed (``fast``:
at full speed from the start; the network must then be slow enough). ``started`` is
printed on stderr once every client has received data.

Reported per client: whether the bytes were intact and the same connection carried them
(no new handshake, no close), the host ID byte of the server's CIDs at the start and at
the end, and for the stall measurement: the longest gap between two reads, the times
from the last read before the switch to another host's CIDs to the switch and from the
switch to the next read, the same for the arrival of new stream data (polled every
millisecond: reads can be served from the receive buffer while nothing arrives), and
the PTO just before the switch.
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
        self.fast_at: float | None = None
        self.progress_before: float | None = None
        self.progress_after: float | None = None


async def one(index: int, host: str, port: int, size: int, fast: asyncio.Event,
              clients: list[Client], ready: asyncio.Event) -> dict[str, object]:
    me = clients[index]
    async with quicflow.connect(
        host, port, configuration=client_configuration(idle_timeout=30)
    ) as conn:
        first = conn.conn
        me.first_host = first.peer_cid[1]

        async def watch() -> None:
            """When the client switches to another host's CIDs, and when new stream data
            arrived last before it and first after it (polled every millisecond)."""
            flow = first.flow
            seen = flow.data_received
            while True:
                now = time.monotonic()
                progressed = flow.data_received > seen
                seen = flow.data_received
                if me.switched_at is None:
                    if progressed:
                        me.progress_before = now
                    if first.peer_cid[1] != me.first_host:
                        me.switched_at = now
                    else:
                        me.pto_before = first.pto()
                elif progressed:
                    me.progress_after = now
                    return
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
    before = [t for t in reads if me.switched_at is not None and t < me.switched_at]
    return {
        "intact": got == size and digest.hexdigest() == perf_sha256(size),
        "same_connection": same,
        "first_host": me.first_host,
        "last_host": me.last_host,
        "longest_gap": max(gaps) if gaps else 0.0,
        # when the longest gap began, in seconds after the switch (negative: before)
        "longest_gap_from_switch": (reads[gaps.index(max(gaps))] - me.switched_at)
        if gaps and me.switched_at else None,
        "fast_from_switch": (me.fast_at - me.switched_at)
        if me.switched_at and me.fast_at else None,
        "switch_to_data": (after[0] - me.switched_at) if after and me.switched_at else None,
        "last_data_to_switch": (me.switched_at - before[-1]) if before and me.switched_at
        else None,
        # the stall in the network: new stream data last arrived before the switch (from
        # the old host) and first after it (from the new one), polled every millisecond
        "arrival_stall": (me.progress_after - me.progress_before)
        if me.progress_after and me.progress_before else None,
        "arrival_before_switch": (me.switched_at - me.progress_before)
        if me.switched_at and me.progress_before else None,
        "switch_to_arrival": (me.progress_after - me.switched_at)
        if me.switched_at and me.progress_after else None,
        "pto_before": me.pto_before,
    }


async def main(host: str, port: int, count: int, size: int, at_once: bool) -> None:
    loop = asyncio.get_running_loop()
    fast, ready = asyncio.Event(), asyncio.Event()
    if at_once:
        fast.set()
    clients = [Client() for _ in range(count)]
    tasks = [loop.create_task(one(i, host, port, size, fast, clients, ready))
             for i in range(count)]
    await asyncio.wait_for(ready.wait(), 60)
    print("started", file=sys.stderr, flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    fast.set()
    for c in clients:
        c.fast_at = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 180)
    print(json.dumps({"clients": results}), flush=True)


if __name__ == "__main__":
    h, p, c, s = sys.argv[1:5]
    asyncio.run(main(h, int(p), int(c), int(s), sys.argv[5:6] == ["fast"]))
