"""The idle timeout in force (RFC 9000 §10.1): ours, the peer's, a half-open server
connection's limit, never below three probe timeouts. Runs for every packet received and
the first ack-eliciting one sent after, so it has a C twin (``crypto/_native_src/idle.c``)."""

from __future__ import annotations

from collections.abc import Callable

from ..crypto.extension import EXT, python_forced
from .ack_frequency import peer_max_ack_delay
from .connection import Connection
from .rtt import GRANULARITY

_INF = float("inf")


def effective_idle_python(conn: Connection) -> float:
    """The idle timeout in force: the smaller of ours and the peer's (0: none), the
    half-open limit for a server's unvalidated connection, never below 3 PTO.

    The reference of ``effective_idle``, which is its C twin
    (``crypto/_native_src/idle.c``) when the extension is built and not forced off: a
    change here needs the same change there (tests/test_idle_native.py compares them)."""
    cfg = conn.configuration
    idle = cfg.idle_timeout if cfg.idle_timeout > 0 else _INF
    params = conn.peer_params
    if params is not None and params.max_idle_timeout > 0:
        peer = params.max_idle_timeout / 1000
        if peer < idle:
            idle = peer
    if not conn.is_client and not conn.address_validated:  # half-open: short life
        if cfg.half_open_timeout < idle:
            idle = cfg.half_open_timeout
    if idle == _INF:
        return idle
    # 3 PTO: Connection.pto() (RttEstimator.pto_duration with the peer's max_ack_delay)
    # inline, as this runs for every packet received
    rtt = conn.loss.rtt
    var = 4 * rtt.rttvar
    pto = 3 * (rtt.smoothed_rtt + (var if var > GRANULARITY else GRANULARITY)
               + peer_max_ack_delay(conn))
    return idle if idle > pto else pto



def _pick_effective_idle() -> Callable[[Connection], float]:
    native = getattr(EXT, "effective_idle", None) if EXT is not None else None
    if native is None or python_forced():
        return effective_idle_python
    EXT.idle_setup(effective_idle_python)
    picked: Callable[[Connection], float] = native
    return picked


#: the idle timeout in force (``effective_idle_python``, or its C twin); runs for every
#: packet received and the first ack-eliciting one sent after
effective_idle = _pick_effective_idle()
