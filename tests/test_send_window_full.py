"""A send turn that ends at the congestion window makes no empty general build.

When a bulk run stops because the window is full, ``build_datagrams`` ends the turn:
``bulk_applies`` had found nothing owed that goes without the window (an ACK, a probe,
the packet a new recovery period may send), so the general path would build nothing.
Before, every window-limited turn called it once more to find that out (and the engine's
bulk builder once more before it): ~5,000 empty builds per GiB at 256 connections.

Counted over seeded in-memory uploads with loss (the window, not the data, ends the
turns): the client's general builds that built nothing, against its turns, and the data
arrives intact with the loss recovered.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from quicflow.transport import send
from tests.support.memory_pair import MemoryPair, upload

SIZE = 4 << 20


@pytest.mark.parametrize(("seed", "loss"), [(5, 0.02), (6, 0.05)])
def test_a_turn_at_the_window_ends_without_an_empty_build(
        seed: int, loss: float, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = {"turns": 0, "empty": 0}
    build = send._build_datagram
    build_all = send.build_datagrams

    def general(conn: Any, now: float, buf: bytearray, room: int, seal: list[Any]) -> int:
        size = build(conn, now, buf, room, seal)
        if conn.is_client and size == 0:
            counts["empty"] += 1
        return size

    def turn(conn: Any, now: float, *rest: Any) -> tuple[bytearray, list[int]]:
        out = build_all(conn, now, *rest)
        if conn.is_client and out[1]:
            counts["turns"] += 1
        return out

    monkeypatch.setattr(send, "_build_datagram", general)
    monkeypatch.setattr(send, "build_datagrams", turn)
    pair = MemoryPair(seed=seed, loss=loss)
    data = bytes(range(256)) * (SIZE // 256)
    got = upload(pair, data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert pair.client.counters.packets_lost > 0  # the window was what ended the turns
    assert counts["turns"] > 100, counts
    # (before: about one empty build per turn)
    assert counts["empty"] <= counts["turns"] // 10, counts
