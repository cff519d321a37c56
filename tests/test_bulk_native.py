"""The native engine's bulk build (``crypto/_native_src/bulk.c``) against its Python twin.

``transport.bulk.build_bulk`` is the C function when the extension is built; it must
make the decisions ``build_bulk_python`` makes and leave the same state: the same
return value, datagram sizes and bounds, pacer (tokens, last refill, promised burst,
deadline), window, packet numbers, sent-packet records, flow control, stream offsets and
FIN, the send queue, counters, the idle deadline and the engine's counters, after every
call of a whole download — with loss, a window that the peer's flow control limits, and
the send buffer's chunk boundaries (which the C function hands to its twin). The
download arrives intact either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

import quicflow.transport.send as send_module
from quicflow.crypto.extension import EXT, python_forced
from quicflow.crypto.native import NativeOffloadEngine
from quicflow.crypto.offload import SoftwareOffloadEngine
from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport import bulk
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.streams import CHUNK_MIN
from tests.support import snapshot_peer
from tests.support.snapshot_peer import CLIENT_ADDR, SERVER_ADDR, ClientApp, LocalSide, ServerApp
from tests.test_snapshot import Net, _check_download, _received, _server_endpoint, _start


def _state(conn: Connection, buf: bytearray, bounds: list[int], built: int) -> tuple[Any, ...]:
    loss = conn.loss
    cc = loss.cc
    pacer = conn.pacer
    sp = loss.spaces[2]
    records = [
        (r.pn, r.time_sent, r.size, r.count, r.unit, r.base_pn, r.ack_eliciting,
         r.in_flight, r.epoch, tuple(r.frames))  # type: ignore[arg-type]
        for r in sp.sent.values()
    ]
    sends = [(sid, s.send.next_offset, s.send.fin_sent, s.send.blocked_sent_at)
             for sid, s in conn.streams.items() if s.send is not None]
    counters = conn.counters
    engine: Any = conn.engine
    floats = (pacer.tokens, pacer.promised, pacer.last_time, conn.pacer_deadline,
              conn.idle_deadline, loss.timer_anchor, sp.last_ack_eliciting_time)
    return (
        built, len(buf), tuple(bounds), floats, tuple(type(f).__name__ for f in floats),
        cc.bytes_in_flight, cc.cwnd, conn.spaces[2].next_pn, sp.largest_sent,
        sp.ack_eliciting_in_flight, loss.packets_sent, conn.flow.data_sent,
        tuple(conn.send_queue), sends, records, counters.packets_sent,
        counters.datagrams_sent, counters.bytes_sent,
        conn.last_ack_eliciting_sent_after_receive, engine.sealed, engine.seal_calls,
    )


def _setup_twin(twin: Callable[..., int]) -> None:
    EXT.bulk_setup(twin, bulk.SentPacket, bulk.effective_idle, bulk.R_STREAM_RUN,
                   bulk._ONE_RTT, NativeOffloadEngine)


def _download(monkeypatch: pytest.MonkeyPatch, build: Callable[..., int], size: int,
              loss: float, max_data: int | None, chunk: int = 0, software: bool = False,
              algorithm: str = "cubic", lossy_until: int = 0) -> list[tuple[Any, ...]]:
    """Each bulk build's result and the server's state after it, over a download (the
    server writes ``chunk`` bytes at a time when given: 64 KiB writes are send buffer
    chunks of their own, so many runs reach a chunk's end; ``lossy_until``: the link
    loses nothing once the client has that many bytes)."""
    trace: list[tuple[Any, ...]] = []

    def traced(conn: Connection, now: float, buf: bytearray, bounds: list[int],
               seal: list[Any], max_count: int) -> int:
        built = build(conn, now, buf, bounds, seal, max_count)
        trace.append(_state(conn, buf, bounds, built))
        return built

    with monkeypatch.context() as m:
        m.setattr(send_module, "build_bulk", traced)
        if chunk:
            m.setattr(snapshot_peer, "CHUNK", chunk)
        if max_data is None:
            net, client, server = _start(size, loss=loss)
        else:  # the client's flow control ends runs
            config = Configuration(alpn_protocols=["perf"], verify_peer=False,
                                   max_data=max_data, max_data_window=max_data,
                                   max_stream_data=max_data, max_stream_data_window=max_data)
            cli_ep = Endpoint(config, is_server=False)
            now = 1000.0
            conn = cli_ep.connect(SERVER_ADDR, now, server_name="localhost")
            client = LocalSide(cli_ep, ClientApp(size), SERVER_ADDR, conn)
            server = LocalSide(_server_endpoint(), ServerApp(), CLIENT_ADDR)
            net = Net(client, server, now, loss=loss)
        # (the server's engine whatever QUICFLOW_ENGINE says for this run)
        server.endpoint.engine = SoftwareOffloadEngine() if software else NativeOffloadEngine()
        server.endpoint.configuration = dataclasses.replace(
            server.endpoint.configuration, congestion_control=algorithm)
        if lossy_until:
            net.run(lambda: _received(client) >= lossy_until, max_time=120.0)
            net.loss = 0.0
        net.run(lambda: client.app.done, max_time=120.0)
        _check_download(client.app, size)
        assert _received(client) == size
    return trace


@pytest.mark.parametrize(
    ("size", "loss", "max_data", "chunk"),
    [(3 << 20, 0.0, None, 0), (3 << 20, 0.03, None, 0), (1 << 20, 0.2, None, 0),
     (2 << 20, 0.01, 96 * 1024, 0), (2 << 20, 0.01, None, CHUNK_MIN)],
)
def test_native_build_bulk_matches_python(
    monkeypatch: pytest.MonkeyPatch, require: Callable[[bool, str], None],
    size: int, loss: float, max_data: int | None, chunk: int,
) -> None:
    require(EXT is not None, "the native extension is not built")
    assert bulk.build_bulk is (bulk.build_bulk_python if python_forced() else EXT.build_bulk)
    twin_calls = 0

    def counted_twin(*args: Any) -> int:
        nonlocal twin_calls
        twin_calls += 1
        return bulk.build_bulk_python(*args)

    _setup_twin(counted_twin)
    try:
        native = _download(monkeypatch, EXT.build_bulk, size, loss, max_data, chunk)
    finally:
        _setup_twin(bulk.build_bulk_python)
    python = _download(monkeypatch, bulk.build_bulk_python, size, loss, max_data, chunk)
    assert len(native) == len(python) > 20
    for i, (a, b) in enumerate(zip(native, python, strict=True)):
        assert a == b, f"call {i}"
    # the C function took most calls itself (its twin: runs that may go on into the next
    # chunk, nothing else here), and with small chunks the twin took some
    assert twin_calls < len(native) // (3 if chunk else 20)
    assert twin_calls > 0 or not chunk


def test_native_build_bulk_hands_other_engines_to_python(
    monkeypatch: pytest.MonkeyPatch, require: Callable[[bool, str], None],
) -> None:
    """With the pure-Python engine (what ``QUICFLOW_ENGINE=python`` gives an endpoint),
    every call goes to the twin."""
    require(EXT is not None, "the native extension is not built")
    calls = 0

    def counted_twin(*args: Any) -> int:
        nonlocal calls
        calls += 1
        return bulk.build_bulk_python(*args)

    _setup_twin(counted_twin)
    try:
        trace = _download(monkeypatch, EXT.build_bulk, 1 << 20, 0.0, None, software=True)
    finally:
        _setup_twin(bulk.build_bulk_python)
    assert trace and calls == len(trace)
