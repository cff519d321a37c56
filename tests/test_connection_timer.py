"""Connection.timer() is the earliest of the connection's deadlines: the same value as
the minimum over the list of them (how it was computed before it compared them as they
come), for any mix of set and unset deadlines, on both sides of a real handshake."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.transport import pathprobe
from quicflow.transport.connection import Connection
from tests.support.memory_pair import MemoryPair

_PAIR: list[MemoryPair] = []


def pair() -> MemoryPair:
    if not _PAIR:
        p = MemoryPair()
        p.run(lambda: p.client.handshake_complete and bool(p.server_conns)
              and p.server_conns[0].handshake_complete)
        _PAIR.append(p)
    return _PAIR[0]


def reference(conn: Connection) -> float:
    """The deadlines listed, then min() (the code before)."""
    conn.sync_recovery()
    deadlines = [conn.idle_deadline]
    loss = conn.loss.timer()
    if loss is not None:
        deadlines.append(loss)
    for space in conn.spaces:
        if space.ack_deadline is not None and not space.discarded:
            deadlines.append(space.ack_deadline)
        if space.ack_repeat_at is not None:
            deadlines.append(space.ack_repeat_at)
    if conn.pacer_deadline is not None:
        deadlines.append(conn.pacer_deadline)
    if conn.key_update_requested and not conn.key_update_pending and conn.key_phase_acked():
        deadlines.append(conn.key_update_allowed_at)
    if conn.handshake_confirmed and conn.pmtud.next_at < conn.idle_deadline:
        deadlines.append(conn.pmtud.next_at)
    if conn.probe is not None:
        deadlines.append(pathprobe.probe_timer(conn) or conn.probe.deadline)
    return min(deadlines)


times = st.floats(0.0, 100.0)
maybe = st.one_of(st.none(), times)


@settings(max_examples=300, deadline=None)
@given(
    server=st.booleans(), idle=times, acks=st.lists(st.tuples(maybe, st.booleans(), maybe),
                                                    min_size=3, max_size=3),
    pacer=maybe, confirmed=st.booleans(), pmtud_at=times, key_update=st.booleans(),
    key_update_at=times,
)
def test_timer_is_the_earliest_deadline(server: bool, idle: float,
                                        acks: list[tuple[Any, bool, Any]], pacer: Any,
                                        confirmed: bool, pmtud_at: float, key_update: bool,
                                        key_update_at: float) -> None:
    p = pair()
    conn = p.server_conns[0] if server else p.client
    saved = (conn.idle_deadline, [(s.ack_deadline, s.discarded, s.ack_repeat_at)
                                  for s in conn.spaces], conn.pacer_deadline,
             conn.handshake_confirmed, conn.pmtud.next_at, conn.key_update_requested,
             conn.key_update_allowed_at)
    try:
        conn.idle_deadline = idle
        for space, (ack, discarded, repeat) in zip(conn.spaces, acks, strict=True):
            space.ack_deadline, space.discarded, space.ack_repeat_at = ack, discarded, repeat
        conn.pacer_deadline = pacer
        conn.handshake_confirmed = confirmed
        conn.pmtud.next_at = pmtud_at
        conn.key_update_requested = key_update
        conn.key_update_allowed_at = key_update_at
        assert conn.timer() == reference(conn)
    finally:
        conn.idle_deadline = saved[0]
        for space, (ack, discarded, repeat) in zip(conn.spaces, saved[1], strict=True):
            space.ack_deadline, space.discarded, space.ack_repeat_at = ack, discarded, repeat
        (conn.pacer_deadline, conn.handshake_confirmed, conn.pmtud.next_at,
         conn.key_update_requested, conn.key_update_allowed_at) = saved[2:]


def test_timer_of_a_fresh_handshake_is_unchanged() -> None:
    p = MemoryPair()
    p.step()
    for conn in [p.client, *p.server_conns]:
        assert conn.timer() == reference(conn)
