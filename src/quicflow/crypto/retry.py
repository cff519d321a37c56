"""Retry packet integrity (RFC 9001 §5.8), QUIC version 1."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RETRY_KEY_V1 = bytes.fromhex("be0c690b9f66575a1d766b54e368c84e")
RETRY_NONCE_V1 = bytes.fromhex("461599d35d632bf2239825bb")
RETRY_TAG_LEN = 16

_RETRY_AEAD_V1 = AESGCM(RETRY_KEY_V1)


def retry_integrity_tag(pseudo_packet: bytes) -> bytes:
    """The 16-byte tag: AES-128-GCM over an empty plaintext with the pseudo-packet as AAD."""
    return _RETRY_AEAD_V1.encrypt(RETRY_NONCE_V1, b"", pseudo_packet)


def verify_retry_integrity_tag(pseudo_packet: bytes, tag: bytes) -> bool:
    """Constant-time check of a received Retry's tag."""
    return hmac.compare_digest(retry_integrity_tag(pseudo_packet), tag)
