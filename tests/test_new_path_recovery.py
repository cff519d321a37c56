"""RFC 9000 §9.4: "Packets sent on the old path MUST NOT contribute to congestion control
or RTT estimation for the new path."

A server moves to a client's new host and restarts its RTT estimate and congestion
controller; the client's ACK of data sent on the old path then arrives. Before, it gave
the new estimator its first sample (the time since the old send, 0.3 s here) and grew
the new window. Now neither: with the native ACK path and with the pure-Python one.
"""

from __future__ import annotations

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.recovery import SentPacket
from quicflow.wire import frame_types as F
from quicflow.wire.frames import encode_frame

from .support.forge import forge, raw
from .support.memory_pair import MemoryPair, confirmed

NEW_HOST = ("198.51.100.9", 40000)


def _from_client(client: Connection, payload: bytes) -> bytes:
    """A client packet, recorded as sent by the client (so that an ACK of it is valid)."""
    pn = client.spaces[2].next_pn
    datagram = forge(client, Epoch.ONE_RTT, payload)
    client.loss.on_packet_sent(SentPacket(pn=pn, time_sent=client._now_hint,
                                          size=len(datagram), ack_eliciting=False,
                                          in_flight=False, epoch=Epoch.ONE_RTT, frames=[]))
    return datagram


def test_acks_of_old_path_packets_give_the_new_path_no_sample_and_no_growth(
        engine: str) -> None:
    pair, client, server = confirmed(MemoryPair(seed=81))
    sid = server.open_stream()
    server.send_stream_data(sid, b"x" * 6000, end_stream=False)
    pair.server.datagrams_to_send(server, pair.now)  # on the old path; its ACK waits
    old = sorted(server.loss.spaces[2].sent)
    assert old
    pair.now += 0.3
    pair.server.receive(_from_client(client, raw(0x01) + bytes(1200)), NEW_HOST, pair.now)
    assert server.peer_address == NEW_HOST and not server.loss.rtt.has_sample
    cwnd = server.loss.cc.cwnd
    in_flight = server.loss.cc.bytes_in_flight
    assert in_flight > 0
    pair.now += 0.01
    ack = bytearray()
    encode_frame(F.Ack(ranges=[(old[0], old[-1])], ack_delay=0, ecn=None), ack)
    pair.server.receive(_from_client(client, bytes(ack)), NEW_HOST, pair.now)
    assert not server.loss.spaces[2].sent.keys() & set(old), "acknowledged"
    assert not server.loss.rtt.has_sample, f"a sample of {server.loss.rtt.latest_rtt:.3f} s"
    assert server.loss.cc.cwnd == cwnd, "the new window grew from old-path packets"
    assert server.loss.cc.bytes_in_flight < in_flight, "they left the flight"
