"""Build valid, protected packets carrying arbitrary frames, as a hostile peer would.

The packets are sealed with a real connection's keys (its Initial/Handshake protectors
or its 1-RTT keys in the offload engine), so the receiver opens them and acts on every
frame: this is how the adversarial tests put extreme and forbidden frames on the wire.
Built only with the project's own wire and crypto modules.
"""

from __future__ import annotations

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.wire import frames as F
from quicflow.wire.packet import (
    HANDSHAKE,
    INITIAL,
    QUIC_V1,
    build_long_header,
    build_short_header,
)
from quicflow.wire.varint import push_varint

TAG_LEN = 16
_SPACE = {Epoch.INITIAL: 0, Epoch.HANDSHAKE: 1, Epoch.ONE_RTT: 2}


def encode_frames(frames: list[F.Frame]) -> bytes:
    out = bytearray()
    for frame in frames:
        F.encode_frame(frame, out)
    return bytes(out)


def forge(conn: Connection, epoch: Epoch, payload: bytes, *, pad_to: int = 0) -> bytes:
    """One datagram holding one packet of ``conn`` (the sender) with ``payload`` as its
    frames, in ``epoch``'s packet number space (the next packet number is used)."""
    space = conn.spaces[_SPACE[epoch]]
    pn = space.next_pn
    space.next_pn += 1
    pn_len = 4
    body = bytes(payload)
    if len(body) < 4:
        body += bytes(4 - len(body))  # PADDING for the header-protection sample
    if epoch == Epoch.ONE_RTT:
        header = build_short_header(conn.peer_cid, pn, pn_len, conn.key_phase)
        buf = bytearray(header + body + bytes(TAG_LEN))
        conn.engine.seal(buf, [(0, len(header), len(body), pn, conn.seal_key)])
        return bytes(buf)
    protector = conn.send_protectors[epoch]
    if protector is None:
        raise ValueError(f"{conn!r} has no {epoch.name} keys")
    ptype = INITIAL if epoch == Epoch.INITIAL else HANDSHAKE
    token = conn.token if epoch == Epoch.INITIAL else b""

    def header_for(n: int) -> bytes:
        return build_long_header(ptype, QUIC_V1, conn.peer_cid, conn.initial_scid, token,
                                 pn_len + n + TAG_LEN, pn, pn_len)

    if pad_to:
        room = pad_to - len(header_for(len(body))) - len(body) - TAG_LEN
        if room > 0:
            body += bytes(room)
    return protector.seal(header_for(len(body)), body, pn)


def raw(frame_type: int, *fields: int | bytes) -> bytes:
    """A frame from its type and fields: ints become varints, bytes are copied."""
    out = bytearray()
    push_varint(out, frame_type)
    for value in fields:
        if isinstance(value, int):
            push_varint(out, value)
        else:
            out += value
    return bytes(out)
