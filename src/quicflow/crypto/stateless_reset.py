"""Stateless reset tokens derived from a static key (RFC 9000 §10.3.2).

``token = HMAC-SHA256(key, "quicflow stateless reset" | cid)[:16]``: the same key gives
the same token for a connection ID in every process and on every host, so a server that
restarted, took over a connection or never saw it can still send the right reset.
"""

from __future__ import annotations

import hmac
from typing import Any

from .extension import native_for_keys

RESET_TOKEN_LEN = 16
_LABEL = b"quicflow stateless reset"
#: the C extension: its HKDF-Extract is HMAC-Hash(salt, ikm) on a reused OpenSSL MAC
#: context (an empty salt is hash-length zeros, the same HMAC key as an empty one)
_EXT: Any = native_for_keys()


def stateless_reset_token(key: bytes, cid: bytes) -> bytes:
    """The 16-byte stateless reset token of connection ID ``cid`` under ``key``."""
    if _EXT is not None:
        token: bytes = _EXT.hkdf_extract(0x1301, key, _LABEL + cid)[:RESET_TOKEN_LEN]
        return token
    return hmac.digest(key, _LABEL + cid, "sha256")[:RESET_TOKEN_LEN]
