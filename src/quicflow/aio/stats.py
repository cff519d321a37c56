"""Counters of an endpoint, its socket and its connections, as one plain dict."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..transport.connection import Connection
from .runner import EndpointRunner


def datapath_stats(runner: EndpointRunner) -> dict[str, Any]:
    """Socket-level counters with the derived ratios a benchmark wants."""
    c = runner.transport.counters
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
    # one send batch is one sendmsg with UDP_SEGMENT on the gso backend
    out["segments_per_gso_call"] = out["segments_per_send_batch"]
    out["segments_per_recv_batch"] = (
        c.datagrams_received / c.batches_received if c.batches_received else 0.0
    )
    return out


def endpoint_stats(runner: EndpointRunner) -> dict[str, Any]:
    e = runner.endpoint.counters
    out: dict[str, Any] = asdict(e)
    out["dropped"] = e.dropped()
    out["segments_per_lookup"] = e.segments_received / e.lookups if e.lookups else 0.0
    # 1-RTT packets the send path handed to the offload engine, and in how many calls
    engine = runner.endpoint.engine
    sealed = int(getattr(engine, "sealed", 0))
    calls = int(getattr(engine, "seal_calls", 0))
    out["engine_packets_sealed"] = sealed
    out["engine_seal_calls"] = calls
    out["packets_per_engine_call"] = sealed / calls if calls else 0.0
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
