"""Stateless reset tokens derived from a static key (RFC 9000 §10.3.2).

``token = HMAC-SHA256(key, "quicflow stateless reset" | cid)[:16]``: the same key gives
the same token for a connection ID in every process and on every host, so a server that
restarted, took over a connection or never saw it can still send the right reset.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from .extension import native_for_keys
from .hkdf import hkdf_extract

RESET_TOKEN_LEN = 16
_LABEL = b"quicflow stateless reset"
_SHA256 = hashes.SHA256()
_NATIVE = native_for_keys()
#: the C token (the key's HMAC state kept for the next call with it), or None
_NATIVE_TOKEN = _NATIVE.reset_token if _NATIVE is not None else None


def stateless_reset_token(key: bytes, cid: bytes) -> bytes:
    """The 16-byte stateless reset token of connection ID ``cid`` under ``key``."""
    # HKDF-Extract is HMAC-Hash(salt, ikm) (in C when the extension is loaded); its empty
    # salt is hash-length zeros, the same HMAC key as an empty key
    if _NATIVE_TOKEN is not None:  # the same HMAC-SHA256 in one C call, keyed once
        token: bytes = _NATIVE_TOKEN(key, cid)
        return token
    return hkdf_extract(_SHA256, key, _LABEL + cid)[:RESET_TOKEN_LEN]
