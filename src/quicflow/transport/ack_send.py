"""The ACK frame a packet carries, written straight from the received ranges, what
sending it clears, and the PING an ACK alone takes now and then (``elicit``); the
decisions of when an ACK is owed: ack_frequency.py."""

from __future__ import annotations

from collections.abc import Callable

from ..crypto.epoch import Epoch
from ..crypto.extension import EXT, python_forced
from ..wire import frames as F
from ..wire.varint import push_varint
from .connection import Connection
from .state import R_PING, PacketSpace

_ONE_RTT = Epoch.ONE_RTT  # (a global: an enum class attribute costs about four times more)


def encode_ack_python(conn: Connection, space: PacketSpace, payload: bytearray, now: float,
                      epoch: Epoch) -> None:
    """The space's ACK frame (the newest 32 ranges), written straight from the RangeSet:
    the bytes ``F.encode_frame(F.Ack(...))`` writes, without the frame object. The
    RangeSet keeps its ranges disjoint and non-adjacent, so every gap is >= 0.

    The reference of ``encode_ack``, which is its C twin (``crypto/_native_src/ack.c``)
    when the extension is built and not forced off: a change here needs the same change
    there (tests/test_send_fast_paths.py compares both with the frame encoder)."""
    received = space.received
    starts, ends = received.starts, received.ends
    i = len(starts) - 1
    stop = i - 32 if i > 31 else -1
    delay_us = int((now - space.largest_received_time) * 1_000_000)
    exponent = conn.configuration.ack_delay_exponent if epoch is _ONE_RTT else 3
    ecn = space.ecn_counts
    with_ecn = ecn[0] or ecn[1] or ecn[2]
    payload.append(F.ACK_ECN if with_ecn else F.ACK)
    smallest = starts[i]
    largest = ends[i] - 1
    # (one-byte varints inline: a handshake's largest, range count and first range;
    # two-byte ones too for the largest and the delay, a transfer's usual sizes)
    if largest < 0x40:
        payload.append(largest)
    elif largest < 0x4000:
        payload += (largest | 0x4000).to_bytes(2, "big")
    else:
        push_varint(payload, largest)
    delay = delay_us >> exponent if delay_us > 0 else 0
    if delay < 0x40:
        payload.append(delay)
    elif delay < 0x4000:
        payload += (delay | 0x4000).to_bytes(2, "big")
    else:
        push_varint(payload, delay)
    count = i - stop - 1
    if count < 0x40:
        payload.append(count)
    else:
        push_varint(payload, count)
    first = largest - smallest
    if first < 0x40:
        payload.append(first)
    else:
        push_varint(payload, first)
    for j in range(i - 1, stop, -1):  # (push_varint: one call per field)
        hi = ends[j] - 1
        push_varint(payload, smallest - hi - 2)
        smallest = starts[j]
        push_varint(payload, hi - smallest)
    if with_ecn:
        for n in ecn:  # (a handshake's counts are one-byte varints: written inline)
            if n < 0x40:
                payload.append(n)
            else:
                push_varint(payload, n)


def _pick_encode_ack() -> Callable[[Connection, PacketSpace, bytearray, float, Epoch], None]:
    native = getattr(EXT, "ack_frame", None) if EXT is not None else None
    if native is None or python_forced():
        return encode_ack_python
    EXT.ack_frame_setup(encode_ack_python, _ONE_RTT)
    picked: Callable[[Connection, PacketSpace, bytearray, float, Epoch], None] = native
    return picked


#: ``encode_ack_python``, or its C twin
encode_ack = _pick_encode_ack()


#: our packets awaiting the peer's ACK, none of them ack-eliciting, at which a 1-RTT
#: packet that holds an ACK alone carries a PING too (``elicit``)
ACK_ONLY_PING_AFTER = 32


def elicit(conn: Connection, payload: bytearray, records: list[tuple[int, ...]],
           now: float) -> bool:
    """A 1-RTT packet holds an ACK alone: add a PING when one is due; returns whether
    one went in (the packet is then ack-eliciting).

    RFC 9000 §13.2.4: "A receiver that sends only non-ack-eliciting packets, such as ACK
    frames, might not receive an acknowledgment for a long period of time", and it
    "could send a PING or other small ack-eliciting frame occasionally, such as once per
    round trip, to elicit an ACK from the peer". A peer acknowledges our ACK-only
    packets only with ACKs it sends for other packets (§13.2.1; ours too:
    ack_frequency.after_eliciting), and recovery keeps a record of each until then: a
    receiver that only acknowledges (a download's client) would keep one per ACK it sent.
    So a PING goes once ``ACK_ONLY_PING_AFTER`` records wait and nothing ack-eliciting
    is in flight: at most one per round trip (the next waits until this one is
    acknowledged or lost), and the congestion window is then empty (only ack-eliciting
    packets are in flight); the pacer is asked, as the packet is in flight. A lost PING
    is not sent again: a later ACK-only packet brings the next."""
    loss = conn.loss
    sp = loss.spaces[2]
    if sp.ack_eliciting_in_flight or len(sp.sent) < ACK_ONLY_PING_AFTER:
        return False
    if conn.pacer.budget(now, loss.rtt, loss.cc.cwnd) < conn.max_datagram_size:
        return False
    payload.append(F.PING)
    records.append((R_PING,))
    return True


def ack_sent(space: PacketSpace) -> None:
    space.ack_pending = False
    space.ack_immediately = False
    space.ack_eliciting_pending = 0
    space.ack_deadline = None
