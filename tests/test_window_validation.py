"""A congestion window that flow control leaves underused does not grow (RFC 9002 §7.8).

On loopback nothing is lost, so slow start never ends; a window grown by every byte
acknowledged reached the size of the whole download while flow control kept a few MB in
flight. The pacing rate (1.25·cwnd/srtt) and the burst of each send turn grew with it, so
among many connections the ones that had sent the most were handed the most per turn
(issue 11, 64 x 64 MiB: Jain's index under 0.98 in about half the runs). Slow start now
grows the window only while at least a quarter of it is in flight when an ACK comes.
"""

from __future__ import annotations

import asyncio

import quicflow
from quicflow.transport.congestion import CongestionControl, initial_window
from quicflow.transport.rtt import RttEstimator
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config

KIB = 1024
MDS = 1200
#: the client's receive windows, fixed: no more stream payload than this is ever in flight
WINDOW = 256 * KIB
#: the most a packet of MDS bytes adds to the payload it carries (a short header with an
#: up-to-20-byte CID, a 4-byte packet number, the STREAM frame's header, the AEAD tag):
#: the congestion window counts whole packets, flow control counts payload
PACKET_OVERHEAD = 1 + 20 + 4 + 16 + 16
#: the most bytes in flight a full receive window can make, in the congestion window's units
IN_FLIGHT = -(-WINDOW // (MDS - PACKET_OVERHEAD)) * MDS
DOWNLOAD = 8 * 1024 * KIB


def test_slow_start_grows_only_a_window_in_use() -> None:
    rtt = RttEstimator()
    cc = CongestionControl(algorithm="cubic", max_datagram_size=MDS)
    cc.cwnd = 100 * MDS
    cc.on_sent(24 * MDS, 0.0)  # under a quarter of the window in flight
    cc.on_acked(12 * MDS, 0.0, 0.01, rtt)
    assert cc.cwnd == 100 * MDS and cc.bytes_in_flight == 12 * MDS
    cc.on_sent(13 * MDS, 0.01)  # a quarter (25 of 100): in use, it grows by what was acked
    cc.on_acked(10 * MDS, 0.01, 0.02, rtt)
    assert cc.cwnd == 110 * MDS and cc.bytes_in_flight == 15 * MDS
    # congestion avoidance is unchanged: it grows even with little in flight
    cc.on_congestion_event(0.02, 0.03)
    window = cc.cwnd
    cc.on_sent(MDS, 0.04)
    cc.on_acked(MDS, 0.04, 1.0, rtt)
    assert cc.cwnd > window


def test_flow_limited_connections_keep_windows_near_what_they_use() -> None:
    """Three downloads over loopback sockets, started one after another, each held by the
    client's fixed 256 KiB receive windows: every server connection's window stays within
    five times what can be in flight (a quarter in use, plus one ACK's growth; counted in
    whole packets, as the window counts them: an ACK that covers a whole window under
    load brought a payload-only bound of 1.32 MB to 1.34 MB) instead of
    growing by all 8 MiB each sends, whichever started first; the bytes arrive intact."""
    faces: list[object] = []

    async def download(port: int, seed: int) -> dict[str, object]:
        config = client_config(max_data=WINDOW, max_data_window=WINDOW,
                               max_stream_data=WINDOW, max_stream_data_window=WINDOW)
        async with quicflow.connect("127.0.0.1", port, configuration=config) as conn:
            reader, writer = await conn.create_stream()
            return await echo_proto.client_exchange(
                reader, writer, upload=b"", download=DOWNLOAD, seed=seed
            )

    def acked(i: int) -> int:
        conn = faces[i].conn  # type: ignore[attr-defined]
        return int(conn.flow.data_sent - conn.loss.cc.bytes_in_flight)

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config(),
            connection_handler=faces.append,
        )
        try:
            port = server.address[1]
            tasks = []
            for seed in range(3):
                tasks.append(asyncio.create_task(download(port, seed)))
                for _ in range(2000):  # the next starts once this one is well under way
                    if len(faces) > seed and acked(seed) >= 2 * 1024 * KIB:
                        break
                    await asyncio.sleep(0.005)
            results = await asyncio.gather(*tasks)
            assert all(r["ok"] for r in results), results
            conns = [face.conn for face in faces]  # type: ignore[attr-defined]
        finally:
            server.close()
        assert len(conns) == 3
        in_slow_start = [c for c in conns if not c.loss.cc.congestion_events]
        assert len(in_slow_start) >= 2  # (loopback loses nothing, as a rule)
        for conn in in_slow_start:
            cc = conn.loss.cc
            assert conn.flow.data_sent > DOWNLOAD
            assert cc.cwnd <= 5 * IN_FLIGHT + initial_window(MDS), (cc.cwnd, conn.flow.data_sent)

    run(main(), 120)
