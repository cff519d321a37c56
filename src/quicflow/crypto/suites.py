"""TLS 1.3 cipher suites usable for QUIC packet protection (RFC 9001 §5)."""

from __future__ import annotations

from enum import IntEnum

from cryptography.hazmat.primitives import hashes


class CipherSuite(IntEnum):
    """TLS 1.3 cipher suite code points."""

    AES_128_GCM_SHA256 = 0x1301
    AES_256_GCM_SHA384 = 0x1302
    CHACHA20_POLY1305_SHA256 = 0x1303


_KEY_LEN: dict[CipherSuite, int] = {
    CipherSuite.AES_128_GCM_SHA256: 16,
    CipherSuite.AES_256_GCM_SHA384: 32,
    CipherSuite.CHACHA20_POLY1305_SHA256: 32,
}

# Every suite uses a 12-byte AEAD nonce and a 16-byte tag.
AEAD_IV_LEN = 12
AEAD_TAG_LEN = 16


def suite_hash(suite: CipherSuite) -> hashes.HashAlgorithm:
    """The suite's HKDF hash as a fresh ``cryptography`` hash instance."""
    if suite == CipherSuite.AES_256_GCM_SHA384:
        return hashes.SHA384()
    if suite in _KEY_LEN:
        return hashes.SHA256()
    raise ValueError(f"unsupported cipher suite {suite!r}")


def suite_key_len(suite: CipherSuite) -> int:
    """AEAD key length in bytes (the header-protection key has the same length)."""
    try:
        return _KEY_LEN[suite]
    except KeyError:
        raise ValueError(f"unsupported cipher suite {suite!r}") from None


def suite_hash_len(suite: CipherSuite) -> int:
    """Length in bytes of the suite's hash output (= length of its traffic secrets)."""
    return 48 if suite == CipherSuite.AES_256_GCM_SHA384 else 32
