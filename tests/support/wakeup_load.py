"""Loads for the lost wake-up check (tests/support/wakeups.py): quicflow to quicflow on
loopback, many connections and streams at once, uploads and downloads, optional loss
through ``LossyUdpRelay``, and flow-control windows and stream limits small enough that
credit updates (MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS) and BLOCKED frames happen often.

Each stream of ``tests/support/transfer.py``'s protocol carries ``upload`` bytes up and
``size`` bytes down, checked by SHA-256; a client connection opens ``streams`` of them,
``parallel`` at a time (more than the server's stream limit when ``parallel`` exceeds
``max_streams``: the client waits for MAX_STREAMS). With ``uni`` each connection also
sends as many uploads on unidirectional streams (the server reads them to FIN and
answers nothing: its reads are what frees the stream slots).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import quicflow
from tests.support import transfer as T
from tests.support.relay import LossyUdpRelay
from tests.support.wakeups import WakeupCheck


@dataclass
class Load:
    connections: int = 4
    streams: int = 16  # requests per connection
    parallel: int = 16  # of them at once
    size: int = 64 * 1024  # bytes down per stream
    upload: int = 16 * 1024  # bytes up per stream
    uni: bool = False  # also as many unidirectional uploads per connection
    loss: float = 0.0  # each way, through a relay (with as much reordering)
    seed: int = 1
    shared_client: bool = False  # the connections share one client socket
    #: both sides' windows and stream limit
    max_data: int = 64 * 1024
    max_stream_data: int = 16 * 1024
    max_data_window: int = 256 * 1024
    max_stream_data_window: int = 64 * 1024
    max_streams: int = 8
    idle_timeout: float = 20.0
    timeout: float = 60.0
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        return {"max_data": self.max_data, "max_stream_data": self.max_stream_data,
                "max_data_window": self.max_data_window,
                "max_stream_data_window": self.max_stream_data_window,
                "max_streams_bidi": self.max_streams, "max_streams_uni": self.max_streams,
                "idle_timeout": self.idle_timeout, **self.extra}


@dataclass
class LoadOutcome:
    ok: bool
    seconds: float
    streams: int
    check: WakeupCheck
    error: str = ""
    relay: dict[str, int] = field(default_factory=dict)


async def _uni_upload(face: quicflow.QuicConnection, size: int, seed: int) -> None:
    _, writer = await face.create_stream(bidirectional=False)
    data = T.payload(seed, size)
    for i in range(0, size, 16 * 1024):
        writer.write(data[i : i + 16 * 1024])
        await writer.drain()
    writer.write_eof()
    await writer.wait_closed()


async def _client(face: quicflow.QuicConnection, load: Load, index: int) -> int:
    gate = asyncio.Semaphore(load.parallel)
    done = 0

    async def one(i: int) -> None:
        nonlocal done
        async with gate:
            result = await T.download(face, load.size, seed=load.seed + 100 * index + i,
                                      upload=load.upload)
        if not result.ok:
            raise AssertionError(f"connection {index} stream {i}: {result}")
        done += 1

    jobs = [one(i) for i in range(load.streams)]
    if load.uni:
        jobs += [_uni_upload(face, load.upload or 1, load.seed + i) for i in range(load.streams)]
    await asyncio.gather(*jobs)
    return done


async def _server_stream(reader: Any, writer: Any) -> None:
    if reader.stream_id & 2:  # a unidirectional upload: read it to its end
        while await reader.read(T.CHUNK):
            pass
        return
    await T.serve_stream(reader, writer)


async def run_load(load: Load, check: WakeupCheck | None = None) -> LoadOutcome:
    """Run ``load`` on the running loop with the check installed (made here if not
    given); the outcome says whether every stream arrived intact in time."""
    loop = asyncio.get_running_loop()
    if check is None:
        check = WakeupCheck.of(loop) or WakeupCheck(loop).install()
    server = await quicflow.serve(_server_stream, "127.0.0.1", 0,
                                  configuration=T.server_configuration(**load.config()))
    relay = None
    port = server.address[1]
    if load.loss:
        relay = await LossyUdpRelay(("127.0.0.1", port), loss=load.loss, reorder=load.loss,
                                    seed=load.seed).start()
        port = relay.address[1]
    start = time.monotonic()
    error = ""
    done = 0
    cfg = T.client_configuration(**load.config())
    try:
        async def conn_job(index: int, opened: Any) -> int:
            async with opened as face:
                return await _client(face, load, index)

        if load.shared_client or load.loss:  # (the relay serves one client address)
            async with quicflow.client_endpoint("127.0.0.1", configuration=cfg) as ep:
                jobs = [conn_job(i, ep.connect("127.0.0.1", port))
                        for i in range(load.connections)]
                done = sum(await asyncio.wait_for(asyncio.gather(*jobs), load.timeout))
        else:
            jobs = [conn_job(i, quicflow.connect("127.0.0.1", port, configuration=cfg))
                    for i in range(load.connections)]
            done = sum(await asyncio.wait_for(asyncio.gather(*jobs), load.timeout))
    except Exception as exc:  # noqa: BLE001 - reported (TimeoutError too)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        relay_stats: dict[str, int] = {}
        if relay is not None:
            relay_stats = {"c2s_dropped": relay.c2s.dropped, "s2c_dropped": relay.s2c.dropped}
            await relay.close()
        server.close()
    return LoadOutcome(not error and done == load.connections * load.streams,
                       time.monotonic() - start, done, check, error, relay_stats)
