"""A receive round's kernel buffers of one flight reach the endpoint in one call.

The kernel hands GRO-coalesced datagrams over in buffers of at most 64 KiB; a round reads
up to sixteen. The runner gives the endpoint those read back to back from one peer in one
``Endpoint.receive_batches`` call, where a run of one connection goes on from buffer to
buffer: a round of one connection's download costs one lookup and one bookkeeping pass,
not one per kernel buffer (issue 11: at 256 connections a round held 3-4 buffers of one
connection)."""

from __future__ import annotations

import socket
from collections.abc import Callable

from quicflow.datapath import probe_capabilities

CAPS = probe_capabilities(socket.AF_INET)


def test_a_download_costs_one_lookup_per_receive_round(
        require: Callable[[bool, str], None]) -> None:
    """16 MiB over loopback in 1200-byte datagrams: the client's endpoint looks up a
    connection about once per receive call (58-60 lookups for 52-53 calls; 297 for 54 when
    every kernel buffer was looked up on its own), and the bytes arrive intact."""
    require(CAPS.gso and CAPS.gro, "UDP GSO/GRO not available on this kernel")
    from tests.support.quic_helpers import loopback_download

    stats, _ = loopback_download(16 << 20, seed=5)
    datapath, endpoint = stats["datapath"], stats["endpoint"]
    assert datapath["segments_per_recv_batch"] >= 20, datapath  # GRO did coalesce
    assert endpoint["lookups"] <= 1.5 * datapath["batches_received"], (endpoint, datapath)
    assert endpoint["segments_received"] >= 16 << 20 // 1200
