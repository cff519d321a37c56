"""Retry packet integrity (RFC 9001 §5.8; RFC 9369 §3.3.3 for QUIC version 2)."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RETRY_KEY_V1 = bytes.fromhex("be0c690b9f66575a1d766b54e368c84e")
RETRY_NONCE_V1 = bytes.fromhex("461599d35d632bf2239825bb")
RETRY_KEY_V2 = bytes.fromhex("8fb4b01b56ac48e260fbcbcead7ccc92")
RETRY_NONCE_V2 = bytes.fromhex("d86969bc2d7c6d9990efb04a")
RETRY_TAG_LEN = 16
_QUIC_V2 = 0x6B3343CF

_RETRY_AEAD_V1 = AESGCM(RETRY_KEY_V1)
_RETRY_AEAD_V2 = AESGCM(RETRY_KEY_V2)


def retry_integrity_tag(pseudo_packet: bytes, version: int = 1) -> bytes:
    """The 16-byte tag: AES-128-GCM over an empty plaintext with the pseudo-packet as AAD."""
    if version == _QUIC_V2:
        return _RETRY_AEAD_V2.encrypt(RETRY_NONCE_V2, b"", pseudo_packet)
    return _RETRY_AEAD_V1.encrypt(RETRY_NONCE_V1, b"", pseudo_packet)


def verify_retry_integrity_tag(pseudo_packet: bytes, tag: bytes, version: int = 1) -> bool:
    """Constant-time check of a received Retry's tag."""
    return hmac.compare_digest(retry_integrity_tag(pseudo_packet, version), tag)
