"""Stateless reset tokens derived from a static key (RFC 9000 §10.3.2).

``token = HMAC-SHA256(key, "quicflow stateless reset" | cid)[:16]``: the same key gives
the same token for a connection ID in every process and on every host, so a server that
restarted, took over a connection or never saw it can still send the right reset.
"""

from __future__ import annotations

import hmac

RESET_TOKEN_LEN = 16
_LABEL = b"quicflow stateless reset"


def stateless_reset_token(key: bytes, cid: bytes) -> bytes:
    """The 16-byte stateless reset token of connection ID ``cid`` under ``key``."""
    return hmac.digest(key, _LABEL + cid, "sha256")[:RESET_TOKEN_LEN]
