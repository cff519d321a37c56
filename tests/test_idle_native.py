"""The idle timeout in force (``transport/idle.py``'s ``effective_idle_python``)
against its C twin (``crypto/_native_src/idle.c``), which every received packet runs.

Over connection states of both sides (before and after the handshake, with and without
the peer's transport parameters, validated or not, any RTT estimate, our ACK_FREQUENCY
in force or not, our idle timeout and the peer's, zero, small, large, of other types)
both give the same value of the same type; the connection's handshake and its idle
deadline come out the same either way.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.extension import EXT, python_forced
from quicflow.transport import idle
from quicflow.transport.connection import Connection
from tests.support import prereq
from tests.support.memory_pair import MemoryPair


def _connections() -> list[Connection]:
    """A client and a server connection before, during and after their handshake."""
    out = [MemoryPair(seed=7).client]
    pair = MemoryPair(seed=8)
    pair.step()
    out += [pair.client, *pair.server_conns]
    pair = MemoryPair(seed=9)
    pair.complete_server_handshake()
    for _ in range(20):
        pair.step()
    out += [pair.client, *pair.server_conns]
    return out


_CONNS = _connections() if EXT is not None else []
if EXT is not None:  # (done at import unless QUICFLOW_ENGINE=python: compared here anyway)
    EXT.idle_setup(idle.effective_idle_python)
_FLOATS = st.floats(0.0, 100.0) | st.sampled_from([0.0, 0.001, 0.0025, 0.333, 5.0, 30.0])
_MS = st.integers(0, 600_000) | st.sampled_from([0, 1, 25, 16383, (1 << 53) + 1, 1 << 61])


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_native_effective_idle_matches_python(data: st.DataObject) -> None:
    prereq.require(EXT is not None, "the native extension is not built")
    conn = copy.copy(data.draw(st.sampled_from(_CONNS)))
    cfg = conn.configuration = copy.copy(conn.configuration)
    cfg.idle_timeout = data.draw(_FLOATS | st.integers(0, 60))  # (an int: the twin's)
    cfg.half_open_timeout = data.draw(_FLOATS | st.just(3))
    if conn.peer_params is not None or data.draw(st.booleans()):
        if conn.peer_params is None or data.draw(st.booleans()):
            conn.peer_params = None
        else:
            params = conn.peer_params = copy.copy(conn.peer_params)
            params.max_idle_timeout = data.draw(_MS)
            params.max_ack_delay = data.draw(_MS)
    conn.address_validated = data.draw(st.booleans())
    loss = conn.loss = copy.copy(conn.loss)
    rtt = loss.rtt = copy.copy(loss.rtt)
    rtt.smoothed_rtt = data.draw(_FLOATS)
    rtt.rttvar = data.draw(_FLOATS)
    af = conn.ack_freq = copy.copy(conn.ack_freq)
    af.peer_delay = data.draw(st.sampled_from([-1.0, 0.0, 0.001, 0.025, 0.2]))
    native: Any = EXT.effective_idle(conn)
    python = idle.effective_idle_python(conn)
    assert native == python
    assert type(native) is type(python)


@pytest.mark.parametrize("conn", _CONNS)
def test_native_effective_idle_on_real_connections(conn: Connection) -> None:
    prereq.require(EXT is not None, "the native extension is not built")
    # (what the transport uses)
    assert idle.effective_idle is (idle.effective_idle_python if python_forced()
                                       else EXT.effective_idle)
    native = EXT.effective_idle(conn)
    assert native == idle.effective_idle_python(conn) > 0
