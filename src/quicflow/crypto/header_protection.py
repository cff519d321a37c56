"""Header protection masks (RFC 9001 §5.4) with contexts built once per key."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from .suites import CipherSuite, suite_key_len

SAMPLE_LEN = 16
MASK_LEN = 5
_ZERO_MASK_INPUT = bytes(MASK_LEN)


class AesHeaderProtection:
    """AES-ECB based mask (RFC 9001 §5.4.3); one reused encryptor context."""

    __slots__ = ("_ecb",)

    def __init__(self, hp_key: bytes) -> None:
        self._ecb: CipherContext = Cipher(algorithms.AES(hp_key), modes.ECB()).encryptor()

    def mask(self, sample: bytes | bytearray | memoryview) -> bytes:
        """The 5-byte mask for a 16-byte ``sample``."""
        return self._ecb.update(sample)[:MASK_LEN]


class ChaChaHeaderProtection:
    """ChaCha20 based mask (RFC 9001 §5.4.4): counter || nonce is the sample itself."""

    __slots__ = ("_key",)

    def __init__(self, hp_key: bytes) -> None:
        self._key = bytes(hp_key)

    def mask(self, sample: bytes | bytearray | memoryview) -> bytes:
        """The 5-byte mask for a 16-byte ``sample`` (little-endian counter, 12-byte nonce)."""
        cipher = Cipher(algorithms.ChaCha20(self._key, bytes(sample)), mode=None)
        return cipher.encryptor().update(_ZERO_MASK_INPUT)


HeaderProtection = AesHeaderProtection | ChaChaHeaderProtection


def make_header_protection(suite: CipherSuite, hp_key: bytes) -> HeaderProtection:
    """Build the mask generator of ``suite`` for ``hp_key``."""
    if len(hp_key) != suite_key_len(suite):
        raise ValueError(f"header protection key must be {suite_key_len(suite)} bytes")
    if suite == CipherSuite.CHACHA20_POLY1305_SHA256:
        return ChaChaHeaderProtection(hp_key)
    return AesHeaderProtection(hp_key)
