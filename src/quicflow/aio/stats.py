"""Counters of an endpoint, its socket and its connections, as one plain dict."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..datapath.backends import DatapathCounters
from ..datapath.connected import ConnectedSocketCounters, add_counters
from ..transport.congestion import NO_CEILING
from ..transport.connection import Connection
from ..transport.pmtud import stats as pmtud_stats
from .runner import EndpointRunner

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def counter_values(counters: Any) -> dict[str, Any]:
    """A counters dataclass (all its fields numbers) as a dict: what
    ``dataclasses.asdict`` gives for it, without asdict's recursive deep copy of every
    field (ConnectionCounters: 1.6 µs against 21.7; the perf client takes each
    connection's stats() as it ends, while the others still run)."""
    cls = type(counters)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls))
    return {name: getattr(counters, name) for name in names}


def datapath_stats(runner: EndpointRunner) -> dict[str, Any]:
    """Socket-level counters with the derived ratios a benchmark wants."""
    c = runner.transport.counters
    if runner.sockets is not None:  # the listener's and every per-connection socket's
        c = runner.sockets.datapath_totals()
        add_counters(c, runner.transport.counters)
    if runner.listeners:  # and those of the preferred addresses' listeners
        if c is runner.transport.counters:
            c = DatapathCounters()
            add_counters(c, runner.transport.counters)
        for listener in runner.listeners:
            add_counters(c, listener.counters)
    out: dict[str, Any] = counter_values(c)
    out["backend"] = runner.transport.backend
    out["receive_drops"] = runner.transport.receive_drops  # (the main socket's)
    out.update(datapath_ratios(out))
    return out


def datapath_ratios(c: dict[str, Any]) -> dict[str, float]:
    """Syscalls per datagram and segments per batch from raw datapath counters (also
    for counters added up over several sockets)."""
    sent, received = c.get("datagrams_sent", 0), c.get("datagrams_received", 0)
    calls_send, calls_recv = c.get("syscalls_send", 0), c.get("syscalls_recv", 0)
    batches_sent, batches_received = c.get("batches_sent", 0), c.get("batches_received", 0)
    datagrams = sent + received
    return {
        "syscalls_per_datagram": (calls_send + calls_recv) / datagrams if datagrams else 0.0,
        "send_syscalls_per_datagram": calls_send / sent if sent else 0.0,
        "recv_syscalls_per_datagram": calls_recv / received if received else 0.0,
        "segments_per_send_batch": sent / batches_sent if batches_sent else 0.0,
        # one send batch is one sendmsg with UDP_SEGMENT on the gso backend
        "segments_per_gso_call": sent / batches_sent if batches_sent else 0.0,
        "segments_per_recv_batch": received / batches_received if batches_received else 0.0,
    }


def endpoint_stats(runner: EndpointRunner) -> dict[str, Any]:
    e = runner.endpoint.counters
    out: dict[str, Any] = counter_values(e)
    out["dropped"] = e.dropped()
    admission = runner.endpoint.admission
    out.update(counter_values(admission.counters))
    out["half_open"] = len(admission.half_open)
    out["dropped"] += admission.counters.dropped_half_open
    out["segments_per_lookup"] = e.segments_received / e.lookups if e.lookups else 0.0
    out["send_buffered"] = runner.send_budget.used
    out["send_buffered_peak"] = runner.send_budget.peak
    out["send_buffer_limit"] = runner.send_budget.limit
    # 1-RTT packets the send path handed to the offload engine, and in how many calls
    engine = runner.endpoint.engine
    sealed = int(getattr(engine, "sealed", 0))
    calls = int(getattr(engine, "seal_calls", 0))
    out["engine_packets_sealed"] = sealed
    out["engine_seal_calls"] = calls
    out["packets_per_engine_call"] = sealed / calls if calls else 0.0
    sockets = socket_stats(runner)
    out["connected_sockets"] = sockets["connected_sockets"]
    out["connected_sockets_now"] = sockets["connected_sockets_now"]
    out["strays_redelivered"] = sockets["strays_redelivered"]
    out["connected_sockets_attached"] = sockets["connected_sockets_attached"]
    return out


def socket_stats(runner: EndpointRunner) -> dict[str, Any]:
    """Per-connection socket counters (all 0 when they are off); ``connected_sockets`` is
    the most held at once, ``connected_sockets_now`` how many are held now."""
    if runner.sockets is None:
        out = counter_values(ConnectedSocketCounters())
        out["cap"] = 0
    else:
        out = counter_values(runner.sockets.counters)
        out["cap"] = runner.sockets.cap
    return out


def connection_stats(conn: Connection) -> dict[str, Any]:
    out: dict[str, Any] = counter_values(conn.counters)
    loss = conn.loss
    out.update(
        smoothed_rtt=conn.rtt.smoothed_rtt,
        min_rtt=conn.rtt.min_rtt,
        cwnd=conn.cc.cwnd,
        # the ceiling its host's ensemble set at its last send turn (None: none)
        slow_start_ceiling=None if conn.cc.ss_ceiling == NO_CEILING else conn.cc.ss_ceiling,
        bytes_in_flight=conn.cc.bytes_in_flight,
        congestion_control=conn.cc.algorithm,
        pto_count=loss.pto_count,
        ptos_fired=loss.pto_fired,
        ecn="failed" if conn.ecn_state == 2 else ("capable" if conn.ecn_state == 1 else "testing"),
        cipher_suite=conn.cipher_suite.name,
        alpn=conn.alpn_protocol,
        max_datagram_size=conn.max_datagram_size,
        send_buffered=conn.send_buffered,
        path_changes=conn.path_changes,
        peer_address=list(conn.peer_address),
    )
    out.update(pmtud_stats(conn))
    return out
