"""Counters of an endpoint, its socket and its connections, as one plain dict."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..datapath.connected import ConnectedSocketCounters, add_counters
from ..transport.connection import Connection
from .runner import EndpointRunner


def datapath_stats(runner: EndpointRunner) -> dict[str, Any]:
    """Socket-level counters with the derived ratios a benchmark wants."""
    c = runner.transport.counters
    if runner.sockets is not None:  # the listener's and every per-connection socket's
        c = runner.sockets.datapath_totals()
        add_counters(c, runner.transport.counters)
    out: dict[str, Any] = asdict(c)
    out["backend"] = runner.transport.backend
    datagrams = c.datagrams_sent + c.datagrams_received
    syscalls = c.syscalls_send + c.syscalls_recv
    out["syscalls_per_datagram"] = syscalls / datagrams if datagrams else 0.0
    out["send_syscalls_per_datagram"] = (
        c.syscalls_send / c.datagrams_sent if c.datagrams_sent else 0.0
    )
    out["recv_syscalls_per_datagram"] = (
        c.syscalls_recv / c.datagrams_received if c.datagrams_received else 0.0
    )
    out["segments_per_send_batch"] = c.datagrams_sent / c.batches_sent if c.batches_sent else 0.0
    out["segments_per_recv_batch"] = (
        c.datagrams_received / c.batches_received if c.batches_received else 0.0
    )
    return out


def endpoint_stats(runner: EndpointRunner) -> dict[str, Any]:
    e = runner.endpoint.counters
    out: dict[str, Any] = asdict(e)
    out["dropped"] = e.dropped()
    out["segments_per_lookup"] = e.segments_received / e.lookups if e.lookups else 0.0
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
        out = asdict(ConnectedSocketCounters())
        out["cap"] = 0
    else:
        out = asdict(runner.sockets.counters)
        out["cap"] = runner.sockets.cap
    return out


def connection_stats(conn: Connection) -> dict[str, Any]:
    out: dict[str, Any] = asdict(conn.counters)
    loss = conn.loss
    out.update(
        smoothed_rtt=conn.rtt.smoothed_rtt,
        min_rtt=conn.rtt.min_rtt,
        cwnd=conn.cc.cwnd,
        bytes_in_flight=conn.cc.bytes_in_flight,
        congestion_control=conn.cc.algorithm,
        pto_count=loss.pto_count,
        ptos_fired=loss.pto_fired,
        ecn="failed" if conn.ecn_state == 2 else ("capable" if conn.ecn_state == 1 else "testing"),
        cipher_suite=conn.cipher_suite.name,
        alpn=conn.alpn_protocol,
        max_datagram_size=conn.max_datagram_size,
    )
    return out
