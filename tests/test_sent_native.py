"""What the per-packet send path records for each packet it built
(``transport/send.py``'s ``on_packet_sent_python``) against its C twin
(``crypto/_native_src/sent.c``).

At every packet of whole connections (handshakes, uploads and downloads with 0-20 %
loss, both sides) the C function and the reference, each given its own copy of the
state they touch, leave the same counters, SentPacket records, loss detection, window,
pacer and idle deadline. The cases the C function hands to the reference (a discarded
space, a packet number not above the largest sent, a wrapped LossDetection method) come
out the same too.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.extension import EXT, python_forced
from quicflow.transport import idle, recovery, send
from quicflow.transport.congestion import CongestionControl
from quicflow.transport.connection import Connection
from quicflow.transport.recovery import LossDetection, new_sent_packet
from tests.support import prereq
from tests.support.memory_pair import MemoryPair


def _setup() -> None:
    """What send.py does at import (unless QUICFLOW_ENGINE=python: compared here anyway)."""
    EXT.sent_setup(send.on_packet_sent_python, new_sent_packet, Epoch.ZERO_RTT,
                   LossDetection.on_packet_sent, CongestionControl.on_sent,
                   idle.effective_idle)


def _clone(conn: Connection) -> Any:
    """The connection with its own copy of everything the function changes."""
    c = copy.copy(conn)
    c.counters = copy.copy(conn.counters)
    loss = c.loss = copy.copy(conn.loss)
    loss.spaces = [copy.copy(sp) for sp in conn.loss.spaces]
    for sp in loss.spaces:
        sp.sent = dict(sp.sent)
    loss.cc = copy.copy(conn.loss.cc)
    loss.rtt = copy.copy(conn.loss.rtt)
    c.pacer = copy.copy(conn.pacer)
    return c


def _fields(obj: Any) -> tuple[Any, ...]:
    values = tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))
    return values + tuple(type(v).__name__ for v in values)


def _state(c: Any) -> tuple[Any, ...]:
    loss = c.loss
    spaces = [(_fields(sp)[:len(dataclasses.fields(sp))],
               [(_fields(p), id(p.frames)) for p in sp.sent.values()])
              for sp in loss.spaces]
    return (_fields(c.counters), spaces, loss.packets_sent, loss.timer_anchor,
            _fields(loss.cc), _fields(loss.rtt), _fields(c.pacer), c.idle_deadline,
            c.last_ack_eliciting_sent_after_receive)


def _compare(args: tuple[Any, ...]) -> int:
    """Both functions on their own copies of the state: the same outcome."""
    conn, rest = args[0], args[1:]
    outcome = []
    for fn in (EXT.packet_sent, send.on_packet_sent_python):
        c = _clone(conn)
        try:
            fn(c, *rest)
        except Exception as exc:  # noqa: BLE001 - the same error either way
            outcome.append((type(exc), str(exc)))
        else:
            # (and the same objects kept: the pacer's unchanged fields and the `now` it
            # stores, as memory per connection counts them)
            outcome.append(_state(c) + (c.pacer.promised is conn.pacer.promised,
                                        c.pacer.last_time is rest[-1]))
    assert outcome[0] == outcome[1]
    return 1


def _run(monkeypatch: pytest.MonkeyPatch, seed: int, loss: float, upload: int,
         download: int) -> dict[Epoch, int]:
    compared: dict[Epoch, int] = {}

    def traced(*args: Any) -> None:
        compared[args[1]] = compared.get(args[1], 0) + _compare(args)
        EXT.packet_sent(*args)

    monkeypatch.setattr(send, "_on_packet_sent", traced)
    pair = MemoryPair(seed=seed, loss=loss)
    pair.complete_server_handshake()
    client = pair.client
    sid = client.open_stream()
    client.send_stream_data(sid, b"u" * upload, end_stream=True)
    server = None
    got = 0
    for _ in range(20000):
        if not pair.step() and server is not None and got >= upload:
            break
        for conn in pair.server_conns:
            server = conn
            for event_sid in list(conn.streams):
                stream = conn.streams[event_sid]
                if stream.recv is not None:
                    got += len(conn.read_stream(event_sid))
    if server is not None and download:
        back = server.open_stream()
        server.send_stream_data(back, b"d" * download, end_stream=True)
        for _ in range(20000):
            if not pair.step():
                break
    return compared


@pytest.mark.parametrize(("seed", "loss", "upload", "download"),
                         [(1, 0.0, 20_000, 200_000), (2, 0.05, 100_000, 0),
                          (3, 0.2, 30_000, 30_000)])
def test_native_packet_sent_matches_python(monkeypatch: pytest.MonkeyPatch, seed: int,
                                           loss: float, upload: int, download: int) -> None:
    prereq.require(EXT is not None, "the native extension is not built")
    _setup()
    compared = _run(monkeypatch, seed, loss, upload, download)
    # every epoch of a handshake, and the 1-RTT packets of the transfer
    assert compared.get(Epoch.INITIAL, 0) >= 2 and compared.get(Epoch.HANDSHAKE, 0) >= 2
    assert compared.get(Epoch.ONE_RTT, 0) > 10


def test_native_packet_sent_refusals_match_python() -> None:
    """A discarded space and a packet number not above the largest sent: the reference's
    ValueError, from either."""
    prereq.require(EXT is not None, "the native extension is not built")
    if not python_forced():
        assert send._on_packet_sent is EXT.packet_sent  # (what the transport uses)
    _setup()
    pair = MemoryPair(seed=4)
    pair.complete_server_handshake()
    conn = pair.client
    sp = conn.loss.spaces[2]
    now = pair.now + 0.5
    _compare((conn, Epoch.ONE_RTT, sp.largest_sent, 100, True, [], now))  # not above
    _compare((conn, Epoch.ONE_RTT, sp.largest_sent + 1, 100, False, [], now))
    _compare((conn, Epoch.ZERO_RTT, sp.largest_sent + 1, 100, True, [], now))
    conn.loss.spaces[0].discarded = True
    _compare((conn, Epoch.INITIAL, 50, 1200, True, [], now))  # discarded


def test_native_packet_sent_calls_a_wrapped_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """A LossDetection.on_packet_sent wrapped (by a test, a subclass) is called: the C
    function leaves such a call to the reference."""
    prereq.require(EXT is not None, "the native extension is not built")
    _setup()
    seen: list[int] = []
    original = recovery.LossDetection.on_packet_sent

    def counted(loss: Any, pkt: Any) -> None:
        seen.append(pkt.pn)
        original(loss, pkt)

    monkeypatch.setattr(recovery.LossDetection, "on_packet_sent", counted)
    pair = MemoryPair(seed=5)
    pair.complete_server_handshake()
    assert len(seen) >= 4
