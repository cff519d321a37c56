"""A receiver's ACK-only packets written by the short path (``send._ack_alone``) are
the general path's (``_fill_payload``): the same packets (numbers, lengths, plaintext
bytes), the same ACK state afterwards, the same counters, and the data arrives intact.

Each case runs one in-memory transfer twice with the same seed (loss and reordering
leave gaps, so ACKs carry several ranges): once as shipped, once with the general path
writing those packets. The simulated clock and the links are deterministic, so the receiver's
packets must match one for one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport import send
from quicflow.transport import stream_api as S
from quicflow.wire import frames as F
from quicflow.wire.packet import push_short_packet
from tests.support.memory_pair import MemoryPair


def _transfer(seed: int, loss: float, reorder: float, short_path: bool,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Upload 2 MiB from the client; the server is the receiver whose packets are
    recorded (packet number, pn length, plaintext payload of ACK-only packets)."""
    sent: list[tuple[int, int, bytes | tuple[str, ...]]] = []
    alone = [0]
    pair = MemoryPair(seed=seed, loss=loss, reorder=reorder)
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    (receiver,) = pair.server_conns
    push, ack_alone = push_short_packet, send._ack_alone

    def recorded(buf: bytearray, dcid: bytes, pn: int, pn_len: int,
                 payload: bytearray) -> int:
        if dcid == receiver.peer_cid:
            frames = F.parse_frames(payload)
            # packets with other frames (new CIDs, tokens: random bytes) by frame types
            sent.append((pn, pn_len, bytes(payload) if all(isinstance(f, F.Ack) for f in frames)
                         else tuple(type(f).__name__ for f in frames)))
        return push(buf, dcid, pn, pn_len, payload)

    def general(conn: Any, space: Any, payload: bytearray, records: list[Any],
                now: float) -> bool:
        """What the general path writes for it: _fill_payload with an ACK due."""
        repeat_due = space.ack_repeat_at is not None and now >= space.ack_repeat_at
        return send._fill_payload(conn, Epoch.ONE_RTT, space, payload, 1200, records, now,
                                  True, repeat_due, False)

    def counted(conn: Any, *args: Any) -> bool:
        alone[0] += conn is receiver
        return ack_alone(conn, *args)

    monkeypatch.setattr(send, "_PUSH_SHORT_C", None)  # (the reference: same bytes)
    monkeypatch.setattr(send, "push_short_packet", recorded)
    monkeypatch.setattr(send, "_ack_alone", counted if short_path else general)
    sid = S.open_stream(pair.client)
    data = bytes(range(256)) * (8 << 10)
    S.send_stream_data(pair.client, sid, data, True)
    got = bytearray()

    def done() -> bool:
        got.extend(S.read_stream(receiver, sid, -1, pair.now))
        return (len(got) == len(data) and S.stream_at_eof(receiver, sid)
                and not pair.client.loss.cc.bytes_in_flight)

    pair.run(done)
    monkeypatch.undo()
    c = receiver.counters
    space = receiver.spaces[2]
    return {
        "sent": sent,
        "alone": alone[0],
        "sha": hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(),
        "counters": (c.packets_sent, c.datagrams_sent, c.bytes_sent, c.ack_frames_sent),
        "ack_state": (space.next_pn, space.ack_pending, space.ack_eliciting_pending,
                      space.ack_deadline, space.ack_repeat_at, space.ack_repeats,
                      space.ack_immediately),
        "now": pair.now,
    }


@pytest.mark.parametrize(("seed", "loss", "reorder"),
                         [(1, 0.0, 0.0), (2, 0.03, 0.05), (5, 0.1, 0.1)])
def test_ack_only_packets_match_the_general_path(
        seed: int, loss: float, reorder: float, monkeypatch: pytest.MonkeyPatch) -> None:
    short = _transfer(seed, loss, reorder, True, monkeypatch)
    general = _transfer(seed, loss, reorder, False, monkeypatch)
    assert short["sha"] and general["sha"]
    assert general["alone"] == 0
    # the short path wrote most of the receiver's packets: ACK-only ones
    assert short["alone"] > len(short["sent"]) // 2
    assert short["sent"] == general["sent"]
    assert short["counters"] == general["counters"]
    assert short["ack_state"] == general["ack_state"]
    assert short["now"] == general["now"]
    if loss:  # gaps: some ACK frame held more than one range
        assert any(F.parse_frames(p)[0].ranges[1:]  # type: ignore[union-attr]
                   for _, _, p in short["sent"] if isinstance(p, bytes))
