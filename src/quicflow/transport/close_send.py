"""A closing connection's datagram (CONNECTION_CLOSE in every space the peer may still
read), built once and sent again byte for byte while the closing period lasts."""

from __future__ import annotations

from ..crypto.epoch import Epoch
from ..wire import frames as F
from ..wire.packet import HANDSHAKE, INITIAL, MIN_INITIAL_DATAGRAM, push_short_packet
from . import qlog
from .connection import Connection
from .errors import APPLICATION_ERROR

TAG_LEN = 16
_EPOCHS = (Epoch.INITIAL, Epoch.ZERO_RTT, Epoch.HANDSHAKE, Epoch.ONE_RTT)
_SPACE = {Epoch.INITIAL: 0, Epoch.ZERO_RTT: 2, Epoch.HANDSHAKE: 1, Epoch.ONE_RTT: 2}
_INITIAL, _ZERO_RTT, _ONE_RTT = Epoch.INITIAL, Epoch.ZERO_RTT, Epoch.ONE_RTT


def close_shape(conn: Connection) -> int:
    """What decides which packets a closing datagram holds and how they are sealed (the
    spaces still in use, whether the peer is known to process 1-RTT, whether we have
    1-RTT keys, and which: a key update the peer started moves our send keys too)."""
    spaces = conn.spaces
    return (spaces[0].discarded | spaces[1].discarded << 1 | spaces[2].discarded << 2
            | conn.handshake_confirmed << 3 | conn.one_rtt_ready << 4
            | hash(conn.one_rtt_send_secret) << 5)


def close_datagrams(conn: Connection, now: float) -> list[bytes]:
    """The closing datagram: built once, then sent again byte for byte (RFC 9000
    §10.2.1: retransmitting the final packet is allowed, an exception to the rule of a
    new packet number per packet) until the packets it needs change (a space discarded,
    the handshake confirmed); with qlog each copy is built and logged afresh."""
    shape = close_shape(conn)
    if conn.close_datagram and conn.close_shape == shape and conn.qlog is None:
        datagram = conn.close_datagram
    else:
        datagram = build_close_datagram(conn, now)
        conn.close_datagram, conn.close_shape = datagram, shape
    if not datagram:
        return []
    if not conn.address_validated:
        budget = conn.amplification_credit()
        if len(datagram) > budget:
            return []
        conn.bytes_sent_unvalidated += len(datagram)
    return [datagram]


def build_close_datagram(conn: Connection, now: float) -> bytes:
    """The CONNECTION_CLOSE packets in one datagram. A client's datagram with an Initial
    packet is built twice: the first build measures it, the second pads the Initial
    packet so that the whole datagram has 1200 bytes (or 1201, when the padding makes
    the Initial's Length field a byte longer)."""
    if not conn.is_client or conn.spaces[0].discarded or conn.handshake_confirmed:
        return _build(conn, now, 0)
    next_pns = [space.next_pn for space in conn.spaces]
    measured = len(_build(conn, now, 0, log=False))
    for space, pn in zip(conn.spaces, next_pns, strict=True):
        space.next_pn = pn
    return _build(conn, now, max(0, MIN_INITIAL_DATAGRAM - measured))


def _build(conn: Connection, now: float, initial_padding: int, log: bool = True) -> bytes:
    assert conn.close_error is not None
    code, frame_type, reason, application = conn.close_error
    reason_bytes = reason.encode()[:256]
    buf = bytearray()
    seal: list[tuple[int, int, int, int, bytes]] = []
    for epoch in _EPOCHS:
        space = conn.spaces[_SPACE[epoch]]
        if space.discarded or epoch == _ZERO_RTT:
            continue
        if conn.handshake_confirmed and epoch != _ONE_RTT:
            continue  # the peer processes 1-RTT: send the close with its real code only
        # before that, the close goes in Handshake packets too: a server does not
        # process 1-RTT before its handshake completes (RFC 9000 §10.2.3, RFC 9001 §5.7)
        if epoch == _ONE_RTT:
            if not conn.one_rtt_ready:
                continue
            frame = F.ConnectionClose(error_code=code, frame_type=frame_type if not application
                                      else None, reason=reason_bytes)
        else:
            if conn.send_protectors[epoch] is None:
                continue
            if application:
                frame = F.ConnectionClose(error_code=APPLICATION_ERROR, frame_type=0, reason=b"")
            else:
                frame = F.ConnectionClose(error_code=code, frame_type=frame_type or 0,
                                          reason=reason_bytes)
        payload = bytearray()
        F.encode_frame(frame, payload)
        if len(payload) < 4:
            payload.extend(bytes(4 - len(payload)))
        pn = space.next_pn
        space.next_pn += 1
        pn_len = 4
        if epoch == _ONE_RTT:
            offset = len(buf)
            hlen = push_short_packet(buf, conn.peer_cid, pn, pn_len, payload)
            seal.append((offset, hlen, len(payload), pn, conn.seal_key))
            size = hlen + len(payload) + TAG_LEN
        else:
            protector = conn.send_protectors[epoch]
            assert protector is not None
            if epoch == _INITIAL:
                payload.extend(bytes(initial_padding))
            size = protector.seal_long(
                buf, INITIAL if epoch == _INITIAL else HANDSHAKE, conn.version, conn.peer_cid,
                conn.initial_scid, conn.token if epoch == _INITIAL else b"", payload, pn,
                pn_len,
            )
        if log and conn.qlog is not None:
            qlog.packet_sent(conn, now, epoch, pn, payload, size)
    if not buf:
        return b""
    if seal:
        conn.engine.seal(buf, seal)
    return bytes(buf)
