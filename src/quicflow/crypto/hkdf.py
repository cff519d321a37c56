"""HKDF (RFC 5869) and TLS 1.3 HKDF-Expand-Label (RFC 8446 §7.1)."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes

from .extension import native_for_keys

_LABEL_PREFIX = b"tls13 "
#: the C extension's HKDF-Expand-Label takes a suite for its hash
_SUITE_OF_HASH = {"sha256": 0x1301, "sha384": 0x1302}
#: the C extension (chosen once per process), None for the pure-Python HMACs below
_NATIVE = native_for_keys()


def hkdf_extract(hash: hashes.HashAlgorithm, salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract: HMAC-Hash(salt, ikm); an empty salt means hash_len zero bytes."""
    if _NATIVE is not None:
        suite = _SUITE_OF_HASH.get(hash.name)
        if suite is not None:  # the same HMAC, one C call
            prk: bytes = _NATIVE.hkdf_extract(suite, salt, ikm)
            return prk
    if not salt:
        salt = bytes(hash.digest_size)
    return hmac.digest(salt, ikm, hash.name)


def hkdf_expand(hash: hashes.HashAlgorithm, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 §2.3)."""
    size = hash.digest_size
    if length < 0 or length > 255 * size:
        raise ValueError(f"HKDF-Expand length {length} out of range")
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), hash.name)
        out += block
        counter += 1
    return bytes(out[:length])


#: HkdfLabel || 0x01 for the empty-context labels (the QUIC key schedule's), by
#: (label, length): a handful of entries, built once
_SINGLE_BLOCK_INFO: dict[tuple[bytes, int], bytes] = {}


def _label_info(label: bytes, context: bytes, length: int) -> bytes:
    full_label = _LABEL_PREFIX + label
    if len(full_label) > 255 or len(context) > 255 or not 0 <= length <= 0xFFFF:
        raise ValueError("HKDF-Expand-Label argument too long")
    return (
        length.to_bytes(2, "big")
        + bytes((len(full_label),))
        + full_label
        + bytes((len(context),))
        + context
    )


def hkdf_expand_label(
    hash: hashes.HashAlgorithm, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """HKDF-Expand-Label; ``label`` is given without the ``"tls13 "`` prefix.

    Every label TLS 1.3 and QUIC expand is at most one hash long: that is one HMAC
    (OpenSSL's: one C call with the extension, else ``hmac.digest`` over a label block
    built once per label).
    """
    if length <= hash.digest_size:
        if _NATIVE is not None:
            suite = _SUITE_OF_HASH.get(hash.name)
            if suite is not None:  # one C call, the same HMAC (ValueError on bad sizes)
                out: bytes = _NATIVE.hkdf_expand_label(suite, secret, label, length, context)
                return out
        if context:
            info = _label_info(label, context, length) + b"\x01"
        else:
            info = _SINGLE_BLOCK_INFO.get((label, length), b"")
            if not info:
                info = _label_info(label, context, length) + b"\x01"
                if len(_SINGLE_BLOCK_INFO) < 64:
                    _SINGLE_BLOCK_INFO[(label, length)] = info
        return hmac.digest(secret, info, hash.name)[:length]
    return hkdf_expand(hash, secret, _label_info(label, context, length), length)
