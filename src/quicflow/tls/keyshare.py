"""(EC)DHE key exchange for the named groups x25519 and secp256r1 (RFC 8446 §4.2.8.2)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .alerts import ILLEGAL_PARAMETER, TlsAlert
from .messages import GROUP_SECP256R1, GROUP_X25519

KeyExchangeKey = x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey


def generate_key(group: int) -> KeyExchangeKey:
    if group == GROUP_X25519:
        return x25519.X25519PrivateKey.generate()
    if group == GROUP_SECP256R1:
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unsupported group {group:#06x}")


def public_bytes(key: KeyExchangeKey) -> bytes:
    if isinstance(key, x25519.X25519PrivateKey):
        return key.public_key().public_bytes_raw()
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


_X25519_GENERATE = x25519.X25519PrivateKey.generate
_X25519_PEER = x25519.X25519PublicKey.from_public_bytes


def server_share(group: int, peer: bytes) -> tuple[bytes, bytes]:
    """(our public key share, shared secret) for the client's share ``peer`` of
    ``group``, with a fresh key of ours (forward secrecy: never reused). The same checks
    and alerts as :func:`shared_secret`; x25519 without the ABC type checks of the
    general path (a key made right here is known to be one)."""
    if group != GROUP_X25519:
        key = generate_key(group)
        return public_bytes(key), shared_secret(key, peer)
    if len(peer) != 32:
        raise TlsAlert(ILLEGAL_PARAMETER, "invalid key share: x25519 key share must be "
                       "32 bytes")
    try:
        key_x = _X25519_GENERATE()
        return key_x.public_key().public_bytes_raw(), key_x.exchange(_X25519_PEER(peer))
    except ValueError as exc:
        raise TlsAlert(ILLEGAL_PARAMETER, f"invalid key share: {exc}") from exc


def shared_secret(key: KeyExchangeKey, peer: bytes) -> bytes:
    """The shared secret with the peer's key share; bad shares → illegal_parameter."""
    try:
        if isinstance(key, x25519.X25519PrivateKey):
            if len(peer) != 32:
                raise ValueError("x25519 key share must be 32 bytes")
            return key.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
        if len(peer) != 65 or peer[0] != 4:
            raise ValueError("secp256r1 key share must be an uncompressed point")
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), peer)
        return key.exchange(ec.ECDH(), pub)
    except ValueError as exc:
        raise TlsAlert(ILLEGAL_PARAMETER, f"invalid key share: {exc}") from exc
