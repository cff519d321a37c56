"""AEAD objects of the cipher suites and packet nonces (RFC 9001 §5.3)."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .suites import AEAD_IV_LEN, CipherSuite, suite_key_len

Aead = AESGCM | ChaCha20Poly1305


def make_aead(suite: CipherSuite, key: bytes) -> Aead:
    """The ``cryptography`` AEAD object for ``suite`` (built once per key)."""
    if len(key) != suite_key_len(suite):
        raise ValueError(f"packet key must be {suite_key_len(suite)} bytes")
    if suite == CipherSuite.CHACHA20_POLY1305_SHA256:
        return ChaCha20Poly1305(key)
    return AESGCM(key)


def packet_nonce(iv: int, pn: int) -> bytes:
    """Nonce = IV XOR packet number (left-padded); ``iv`` as a big-endian int."""
    return (iv ^ pn).to_bytes(AEAD_IV_LEN, "big")


def decode_packet_number(truncated: int, pn_nbits: int, largest_pn: int) -> int:
    """Recover a full packet number (RFC 9000 Appendix A.3)."""
    expected = largest_pn + 1
    win = 1 << pn_nbits
    hwin = win >> 1
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate
