"""Replies a server sends without connection state: Retry (RFC 9000 §17.2.5), the
INVALID_TOKEN close of an Initial with a bad Retry token (§8.1.2), and stateless resets
(§10.3). Pure packet builders; the policy lives in ``admission.py``."""

from __future__ import annotations

import os

from ..crypto.keys import INITIAL_SUITE, PacketProtector, derive_packet_keys, initial_secrets
from ..crypto.retry import retry_integrity_tag
from ..crypto.stateless_reset import RESET_TOKEN_LEN
from ..wire import frames as F
from ..wire.packet import INITIAL, QUIC_V1, build_long_header, build_retry, retry_pseudo_packet

#: the smallest stateless reset: 1 byte, 4 bytes of (unpredictable) "packet number and
#: payload", the token (RFC 9000 §10.3: at least 21 bytes are indistinguishable)
MIN_RESET_SIZE = 5 + RESET_TOKEN_LEN
#: resets are padded to at most this size (still smaller than what triggered them)
MAX_RESET_SIZE = 43
INVALID_TOKEN = 0x0B


def retry_packet(
    client_scid: bytes, client_dcid: bytes, new_scid: bytes, token: bytes,
    version: int = QUIC_V1,
) -> bytes:
    """A Retry to the client's Initial (sent to ``client_scid``, tagged with its DCID)."""
    body = build_retry(version, client_scid, new_scid, token, b"")
    return body + retry_integrity_tag(retry_pseudo_packet(client_dcid, body), version)


def invalid_token_close(
    client_scid: bytes, client_dcid: bytes, new_scid: bytes, version: int = QUIC_V1
) -> bytes:
    """An Initial carrying CONNECTION_CLOSE(INVALID_TOKEN), protected with the Initial
    keys of the client's DCID."""
    _, server_secret = initial_secrets(client_dcid, version)
    protector = PacketProtector(derive_packet_keys(INITIAL_SUITE, server_secret, version))
    payload = bytearray()
    F.encode_frame(
        F.ConnectionClose(error_code=INVALID_TOKEN, frame_type=0, reason=b"invalid token"),
        payload,
    )
    pn_len = 1
    header = build_long_header(
        INITIAL, version, client_scid, new_scid, b"", pn_len + len(payload) + 16, 0, pn_len
    )
    return protector.seal(header, bytes(payload), 0)


def stateless_reset(token: bytes, received_size: int) -> bytes | None:
    """A stateless reset smaller than the packet that triggered it (so two endpoints
    can never loop), or None when that packet is too small for one."""
    size = min(received_size - 1, MAX_RESET_SIZE)
    if size < MIN_RESET_SIZE:
        return None
    head = bytearray(os.urandom(size - RESET_TOKEN_LEN))
    head[0] = 0x40 | (head[0] & 0x3F)  # short header form, fixed bit set
    return bytes(head) + token
