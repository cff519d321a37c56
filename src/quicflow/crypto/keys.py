"""QUIC key schedule (RFC 9001 §5.1-5.2, §6) and per-packet protection (§5.3-5.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes

from ..wire.packet import build_long_header
from .aead import Aead, decode_packet_number, make_aead, packet_nonce
from .extension import native_for_keys
from .header_protection import SAMPLE_LEN, make_header_protection
from .hkdf import hkdf_expand_label, hkdf_extract
from .suites import (
    AEAD_IV_LEN,
    AEAD_TAG_LEN,
    CipherSuite,
    suite_hash,
    suite_hash_len,
    suite_key_len,
)

INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
INITIAL_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")  # RFC 9369 §3.3.1
QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
#: HKDF labels per QUIC version: key, iv, hp, ku (RFC 9001 §5.1, RFC 9369 §3.3.2)
LABELS = {
    QUIC_V1: (b"quic key", b"quic iv", b"quic hp", b"quic ku"),
    QUIC_V2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp", b"quicv2 ku"),
}
INITIAL_SUITE = CipherSuite.AES_128_GCM_SHA256
#: the C extension for key derivation and header protection, chosen once per process
#: (None: not built, or ``QUICFLOW_ENGINE=python``)
_EXT: Any = native_for_keys()
_SHA256: hashes.HashAlgorithm = hashes.SHA256()

Buffer = bytes | bytearray | memoryview


class DecryptError(Exception):
    """A packet could not be unprotected (too short, bad tag, ...)."""


class ReservedBitsError(DecryptError):
    """A packet opened, but its reserved header bits are set (RFC 9000 §17.2, §17.3.1):
    a connection error of type PROTOCOL_VIOLATION, not a packet to drop quietly."""


@dataclass(slots=True)
class PacketKeys:
    """The keying material derived from one traffic secret."""

    suite: CipherSuite
    secret: bytes
    key: bytes
    iv: bytes
    hp_key: bytes
    version: int = QUIC_V1


def derive_packet_keys(suite: CipherSuite, secret: bytes, version: int = QUIC_V1) -> PacketKeys:
    """Derive key, iv and header-protection key ("quic key"/"quic iv"/"quic hp"; the
    "quicv2 ..." labels for QUIC v2)."""
    key_label, iv_label, hp_label, _ = LABELS[version]
    if _EXT is not None:  # the same three HMACs in one C call
        key, iv, hp = _EXT.quic_keys(suite, secret, version == QUIC_V2, False)
        return PacketKeys(suite, bytes(secret), key, iv, hp, version)
    key_len = suite_key_len(suite)
    h = suite_hash(suite)
    return PacketKeys(
        suite=suite,
        secret=bytes(secret),
        key=hkdf_expand_label(h, secret, key_label, b"", key_len),
        iv=hkdf_expand_label(h, secret, iv_label, b"", AEAD_IV_LEN),
        hp_key=hkdf_expand_label(h, secret, hp_label, b"", key_len),
        version=version,
    )


def derive_key_iv(
    suite: CipherSuite, secret: bytes, version: int = QUIC_V1
) -> tuple[bytes, bytes]:
    """Only the AEAD key and IV of ``secret`` (when the header-protection key is known)."""
    h = suite_hash(suite)
    key_label, iv_label, _, _ = LABELS[version]
    return (
        hkdf_expand_label(h, secret, key_label, b"", suite_key_len(suite)),
        hkdf_expand_label(h, secret, iv_label, b"", AEAD_IV_LEN),
    )


def derive_hp_key(suite: CipherSuite, secret: bytes, version: int = QUIC_V1) -> bytes:
    """Only the header-protection key of ``secret`` ("quic hp"/"quicv2 hp")."""
    return hkdf_expand_label(
        suite_hash(suite), secret, LABELS[version][2], b"", suite_key_len(suite)
    )


def next_generation_secret(suite: CipherSuite, secret: bytes, version: int = QUIC_V1) -> bytes:
    """The secret of the next key phase (RFC 9001 §6.1, label "quic ku"/"quicv2 ku")."""
    return hkdf_expand_label(
        suite_hash(suite), secret, LABELS[version][3], b"", suite_hash_len(suite)
    )


def next_packet_keys(keys: PacketKeys) -> PacketKeys:
    """Keys of the next key phase; the header-protection key does not change."""
    secret = next_generation_secret(keys.suite, keys.secret, keys.version)
    key, iv = derive_key_iv(keys.suite, secret, keys.version)
    return PacketKeys(
        suite=keys.suite, secret=secret, key=key, iv=iv, hp_key=keys.hp_key,
        version=keys.version,
    )


def initial_secrets(dcid: bytes, version: int = QUIC_V1) -> tuple[bytes, bytes]:
    """(client, server) Initial secrets from the client's first DCID (QUIC v1 or v2)."""
    salt = INITIAL_SALT_V2 if version == QUIC_V2 else INITIAL_SALT_V1
    ext = _EXT
    if ext is not None:  # the same HMACs as below, without the generic wrappers
        initial = ext.hkdf_extract(0x1301, salt, dcid)
        return (ext.hkdf_expand_label(0x1301, initial, b"client in", 32, b""),
                ext.hkdf_expand_label(0x1301, initial, b"server in", 32, b""))
    h = _SHA256
    initial = hkdf_extract(h, salt, dcid)
    client = hkdf_expand_label(h, initial, b"client in", b"", h.digest_size)
    server = hkdf_expand_label(h, initial, b"server in", b"", h.digest_size)
    return client, server


def initial_packet_keys(dcid: bytes, version: int = QUIC_V1) -> tuple[PacketKeys, PacketKeys]:
    """(client, server) Initial packet keys of the client's first DCID: the keys of
    :func:`initial_secrets` (with the C extension: one call for the 9 HMACs)."""
    salt = INITIAL_SALT_V2 if version == QUIC_V2 else INITIAL_SALT_V1
    ext = _EXT
    if ext is not None:
        cs, ck, civ, chp, ss, sk, siv, shp = ext.initial_keys(salt, dcid, version == QUIC_V2)
        return (PacketKeys(INITIAL_SUITE, cs, ck, civ, chp, version),
                PacketKeys(INITIAL_SUITE, ss, sk, siv, shp, version))
    client, server = initial_secrets(dcid, version)
    return (derive_packet_keys(INITIAL_SUITE, client, version),
            derive_packet_keys(INITIAL_SUITE, server, version))


def initial_protectors(dcid: bytes, version: int = QUIC_V1
                       ) -> tuple[PacketProtector, PacketProtector]:
    """(client, server) protectors of :func:`initial_packet_keys`: with the C extension
    one call derives both directions' keys straight into their ``KeyContext`` objects
    (``keys`` derived again from the secret only if asked for)."""
    ext = _EXT
    if ext is None:
        client, server = initial_packet_keys(dcid, version)
        return PacketProtector(client), PacketProtector(server)
    salt = INITIAL_SALT_V2 if version == QUIC_V2 else INITIAL_SALT_V1
    client_ctx, server_ctx = ext.initial_contexts(salt, dcid, version == QUIC_V2)
    return (PacketProtector.of_context(client_ctx, INITIAL_SUITE, version),
            PacketProtector.of_context(server_ctx, INITIAL_SUITE, version))


class PacketProtector:
    """Seals and opens packets with one set of keys; AEAD and HP contexts are cached.

    With the C extension a packet is sealed or opened in one call of its ``KeyContext``
    (the same AEAD and header protection, pooled OpenSSL contexts: no per-key
    ``cryptography`` objects); ``QUICFLOW_ENGINE=python`` runs the reference code below.
    A runtime object (never part of snapshot state): rebuild it from ``PacketKeys``.
    """

    __slots__ = ("_keys", "_spec", "_aead", "_iv", "_hp", "_native")

    def __init__(self, keys: PacketKeys) -> None:
        self._keys: PacketKeys | None = keys
        self._spec: tuple[CipherSuite, bytes, int] | None = None
        ext = _EXT
        self._native = ext is not None
        self._iv = int.from_bytes(keys.iv, "big")
        if ext is not None:
            # the C KeyContext validates the key lengths like make_aead does
            self._aead: Aead | None = None
            self._hp: Any = ext.KeyContext(keys.suite, keys.key, keys.iv, keys.hp_key)
        else:
            self._aead = make_aead(keys.suite, keys.key)
            self._hp = make_header_protection(keys.suite, keys.hp_key)

    @classmethod
    def for_secret(cls, suite: CipherSuite, secret: bytes,
                   version: int = QUIC_V1) -> PacketProtector:
        """``PacketProtector(derive_packet_keys(suite, secret, version))``; with the C
        extension the keys go straight into the ``KeyContext`` (one call) and
        ``keys`` is derived only if asked for."""
        ext = _EXT
        if ext is None:
            return cls(derive_packet_keys(suite, secret, version))
        LABELS[version]  # (an unknown version: KeyError, as derive_packet_keys raises)
        self = cls.__new__(cls)
        self._keys = None
        self._spec = (suite, secret, version)
        self._native = True
        self._aead = None
        self._iv = 0  # (the Python path's; the KeyContext has its own)
        self._hp = ext.packet_key_context(suite, bytes(secret), version == QUIC_V2)
        return self

    @classmethod
    def of_context(cls, context: Any, suite: CipherSuite, version: int) -> PacketProtector:
        """(C extension) A protector of ``context``, a ``KeyContext`` holding the packet
        keys of its secret (``suite``, ``version``): what ``for_secret`` makes."""
        self = cls.__new__(cls)
        self._keys = None
        self._spec = (suite, context.secret, version)
        self._native = True
        self._aead = None
        self._iv = 0  # (the Python path's; the KeyContext has its own)
        self._hp = context
        return self

    @property
    def keys(self) -> PacketKeys:
        """The keying material (derived again from the secret when made by
        ``for_secret``: the same bytes)."""
        keys = self._keys
        if keys is None:
            assert self._spec is not None  # (set by for_secret, the only way to no keys)
            keys = self._keys = derive_packet_keys(*self._spec)
        return keys

    def next_generation(self) -> PacketProtector:
        """A protector for the next key phase (RFC 9001 §6)."""
        return PacketProtector(next_packet_keys(self.keys))

    def hp_mask(self, sample: Buffer) -> bytes:
        """The 5-byte header-protection mask for a 16-byte sample."""
        if len(sample) != SAMPLE_LEN:
            raise ValueError("header protection sample must be 16 bytes")
        mask: bytes = self._hp.mask(sample)
        return mask

    def seal(self, header: bytes, payload: bytes | bytearray, pn: int) -> bytes:
        """Encrypt ``payload`` with ``header`` as associated data, then mask the header.

        The pn length comes from ``header[0] & 3``; the pn field ends ``header``.
        Raises ``ValueError`` when the packet is too short to be sampled. (A bytearray
        payload is read, not kept: the caller may reuse it.)
        """
        if self._native:
            sealed: bytes = self._hp.seal_packet(header, payload, pn)
            return sealed
        assert self._aead is not None
        payload = bytes(payload)
        pn_len = (header[0] & 3) + 1
        pn_offset = len(header) - pn_len
        sample_at = pn_offset + 4
        packet = bytearray(header)
        packet += self._aead.encrypt(packet_nonce(self._iv, pn), payload, header)
        if len(packet) < sample_at + SAMPLE_LEN:
            raise ValueError("packet too short for header protection sample; pad the payload")
        mask = self._hp.mask(packet[sample_at : sample_at + SAMPLE_LEN])
        packet[0] ^= mask[0] & (0x0F if packet[0] & 0x80 else 0x1F)
        for i in range(pn_len):
            packet[pn_offset + i] ^= mask[1 + i]
        return bytes(packet)

    def seal_long(
        self, buf: bytearray, packet_type: int, version: int, dcid: bytes, scid: bytes,
        token: bytes, payload: bytes | bytearray, pn: int, pn_len: int,
    ) -> int:
        """Append to ``buf`` the sealed long-header packet (Initial, 0-RTT, Handshake) of
        ``payload``; returns its size. The same bytes as
        ``buf += self.seal(build_long_header(packet_type, version, dcid, scid, token,
        pn_len + len(payload) + 16, pn, pn_len), payload, pn)``, and the same errors;
        with the C extension one call builds the header in ``buf``, copies the payload
        after it and seals it there (the reference below for what C leaves to it)."""
        if self._native:
            size: int | None = self._hp.seal_long(buf, packet_type, version, dcid, scid,
                                                   token, payload, pn, pn_len)
            if size is not None:
                return size
        header = build_long_header(packet_type, version, dcid, scid, token,
                                   pn_len + len(payload) + AEAD_TAG_LEN, pn, pn_len)
        packet = self.seal(header, payload, pn)
        buf += packet
        return len(packet)

    def open(self, packet: Buffer, pn_offset: int, largest_pn: int) -> tuple[bytes, bytes, int]:
        """Remove header protection, recover the pn and decrypt.

        ``packet`` runs from the first byte to the end of this packet.
        Returns ``(plain_header, payload, pn)``; raises ``DecryptError``.
        """
        if self._native:
            opened = self._hp.open_packet(packet, pn_offset, largest_pn)
            if opened.__class__ is int:
                raise (ReservedBitsError if opened == RESERVED_BITS else DecryptError)(
                    _OPEN_ERRORS[opened])
            result: tuple[bytes, bytes, int] = opened
            return result
        assert self._aead is not None
        view = memoryview(packet)
        sample_at = pn_offset + 4
        if pn_offset < 1 or len(view) < sample_at + SAMPLE_LEN:
            raise DecryptError(_OPEN_ERRORS[1])
        mask = self._hp.mask(view[sample_at : sample_at + SAMPLE_LEN])
        first = view[0]
        first ^= mask[0] & (0x0F if first & 0x80 else 0x1F)
        pn_len = (first & 3) + 1
        header = bytearray(view[: pn_offset + pn_len])
        header[0] = first
        truncated = 0
        for i in range(pn_len):
            byte = header[pn_offset + i] ^ mask[1 + i]
            header[pn_offset + i] = byte
            truncated = (truncated << 8) | byte
        pn = decode_packet_number(truncated, pn_len * 8, largest_pn)
        plain_header = bytes(header)
        try:
            payload = self._aead.decrypt(
                packet_nonce(self._iv, pn), view[pn_offset + pn_len :], plain_header
            )
        except InvalidTag:
            raise DecryptError(_OPEN_ERRORS[2]) from None
        if first & (0x0C if first & 0x80 else 0x18):
            raise ReservedBitsError(_OPEN_ERRORS[RESERVED_BITS])
        return plain_header, payload, pn

    def open_frames(
        self, data: Buffer, pos: int, pn_offset: int, end: int, largest_pn: int,
        classes: tuple[type, ...] | None,
    ) -> tuple[int, bytes, list[Any] | None] | int | None:
        """``open`` of the packet ``data[pos:end]`` (``pn_offset`` counted from
        ``data``'s start), then, with the C extension and ``classes`` given, its
        payload's frames as the C ``parse_frames`` makes them: one C call per received
        long-header packet. Returns ``(pn, payload, frames)``, ``frames`` None when not
        parsed here (no extension, no ``classes``, or input the C parser leaves to the
        Python reference); None when the packet cannot be opened (``DecryptError``), and
        ``RESERVED_BITS`` when it opened with its reserved header bits set (a connection
        error, RFC 9000 §17.2)."""
        if self._native:
            opened: tuple[int, bytes, list[Any] | None] | int | None = self._hp.open_frames(
                data, pos, pn_offset, end, largest_pn, classes)
            return opened
        try:
            _, payload, pn = self.open(memoryview(data)[pos:end], pn_offset - pos, largest_pn)
        except ReservedBitsError:
            return RESERVED_BITS
        except DecryptError:
            return None
        return pn, payload, None


#: an opened packet's reserved header bits were set (RFC 9000 §17.2, §17.3.1): the C
#: KeyContext's code 3, ``open_frames``'s value for it
RESERVED_BITS = 3
#: why a packet could not be opened (the C KeyContext's codes)
_OPEN_ERRORS = {1: "packet too short to remove header protection",
                2: "packet authentication failed",
                RESERVED_BITS: "reserved header bits set"}
