"""``perf client --resume`` / ``--0rtt``: connect once for a session ticket, then measure
a second connection that resumes the session (and, with 0-RTT, sends its requests and
upload in the first flight, before the handshake completes)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from ..aio import connect
from ..tls.tickets import SessionTicketCache
from ..transport.config import Configuration
from .perf import (
    ALPN,
    PerfError,
    PerfResult,
    ProgressCallback,
    _report_progress,
    _Run,
    _run_stream,
    split_evenly,
)

#: how long the first connection waits for the server's session ticket
TICKET_WAIT = 3.0


async def _fetch_ticket(host: str, port: int, config: Configuration, backend: str,
                        timeout: float | None) -> None:
    cache = config.session_ticket_cache
    assert isinstance(cache, SessionTicketCache)
    async with connect(host, port, configuration=config, backend=backend,
                       wait_connected=False) as conn:
        await asyncio.wait_for(conn.wait_connected(), timeout)
        deadline = time.monotonic() + TICKET_WAIT
        while not len(cache) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    if not len(cache):
        raise PerfError(f"{host} port {port} sent no session ticket within {TICKET_WAIT:g} s")


async def run_resumed_client(
    host: str,
    port: int,
    *,
    download: int,
    upload: int = 0,
    streams: int = 1,
    configuration: Configuration | None = None,
    backend: str = "auto",
    verify: bool = False,
    timeout: float | None = None,
    early_data: bool = True,
    progress: ProgressCallback | None = None,
) -> PerfResult:
    """Two connections: the first only fetches a session ticket; the second resumes with
    it and moves ``download``/``upload`` over ``streams`` streams, written before the
    handshake completes when ``early_data`` (0-RTT). The result describes the second
    connection, with ``resumed`` and ``early_data_accepted``."""
    if streams < 1 or download < 0 or upload < 0:
        raise ValueError("streams must be at least 1 and sizes not negative")
    config = replace(configuration) if configuration is not None else Configuration()
    if ALPN not in config.alpn_protocols:
        config.alpn_protocols = [ALPN]
    config.session_ticket_cache = SessionTicketCache()
    config.early_data = early_data
    await _fetch_ticket(host, port, config, backend, timeout)
    run = _Run(1)
    tally = run.tally
    started = time.perf_counter()
    async with connect(host, port, configuration=config, backend=backend,
                       wait_connected=False) as conn:
        if not early_data:
            await asyncio.wait_for(conn.wait_connected(), timeout)
        connected_at = run.connected_at = time.perf_counter()
        run.all_connected.set()
        reporter = (
            asyncio.create_task(_report_progress(run, progress, 1.0))
            if progress is not None else None
        )
        try:
            work = asyncio.gather(*(
                _run_stream(conn, d, u, tally, verify)
                for d, u in zip(split_evenly(download, streams),
                                split_evenly(upload, streams), strict=True)
            ))
            await asyncio.wait_for(conn.wait_connected(), timeout)
            handshake = time.perf_counter() - started
            await work
        finally:
            if reporter is not None:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
        finished = time.perf_counter()
        resumed, accepted = conn.session_resumed, conn.early_data_accepted
        # the same datapath/connection/endpoint counters as run_client reports
        run.add_counters(conn)
        counters = dict(run.counters)
        counters["zero_rtt_packets_sent"] = conn.conn.counters.zero_rtt_sent
    seconds = max(finished - connected_at, 1e-9)
    moved = tally.received + tally.sent
    return PerfResult(
        bytes_received=tally.received, bytes_sent=tally.sent, seconds=seconds,
        goodput_bytes_per_s=moved / seconds, connections=1, streams=streams,
        handshake_seconds=handshake, verified=verify, counters=counters, backend=run.backend,
        connection_goodputs=[moved / seconds], resumed=resumed,
        early_data_accepted=accepted,
    )
