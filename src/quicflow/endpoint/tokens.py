"""Address-validation tokens (RFC 9000 §8.1): Retry tokens and NEW_TOKEN tokens.

A token is sealed (AES-256-GCM) with a key derived from the server's configured
``token_key``, so every worker process and every host configured with the same key can
check the tokens any of them issued; nothing is stored on the server.

Layout: ``kind (1) | nonce (12) | AEAD(issued_at_ms (8) | len (1) | odcid | len (1) |
retry_scid)`` (Retry tokens carry the client's original DCID and the Retry's SCID, which
the client's next Initial must use as its DCID; NEW_TOKEN tokens leave both empty). The
kind byte is in clear (the server must tell a Retry token from a NEW_TOKEN one, RFC 9000
§8.1.1) and is authenticated with the client's address as associated data: the full
address (IP and port) for Retry tokens, only the IP for NEW_TOKEN tokens (a client's next
connection comes from another port). Times are wall-clock milliseconds (the sans-I/O
endpoint adds its ``wall_offset`` to ``now``), so tokens stay valid across processes.

``TokenCache`` is the client's side: tokens received in NEW_TOKEN frames, kept per server
and each used once (RFC 9000 §8.1.3 asks clients not to reuse a token).
"""

from __future__ import annotations

import ipaddress
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..crypto.extension import native_for_keys
from ..crypto.hkdf import hkdf_expand, hkdf_extract
from .cids import random_part

RETRY_TOKEN = 0x52  # 'R'
NEW_TOKEN = 0x4E  # 'N'
_NONCE_LEN = 12
_MIN_LEN = 1 + _NONCE_LEN + 10 + 16
_KIND = [bytes((i,)) for i in range(256)]  # the kind byte, made once

Address = tuple[Any, ...]


#: packed form of the hosts seen lately (``ipaddress`` costs several µs per parse)
_PACKED: dict[Any, bytes] = {}


def _address_bytes(address: Address, with_port: bool) -> bytes:
    host = address[0]
    ip = _PACKED.get(host)
    if ip is None:
        try:
            ip = ipaddress.ip_address(host).packed
        except ValueError:
            ip = str(host).encode()
        if len(_PACKED) >= 4096:
            _PACKED.clear()
        _PACKED[host] = ip
    if with_port:
        return ip + int(address[1]).to_bytes(2, "big")
    return ip


#: the C engine's token seal in one call (crypto/_native_src/ticket.c), or None (not
#: built, or Python forced)
_NATIVE_SEAL: Any = getattr(native_for_keys(), "address_token", None)


@dataclass(slots=True, eq=False)
class TokenSealer:
    """Seals and opens tokens with one configured key (any length; 32 random bytes is
    what :func:`new_token_key` gives)."""

    key: bytes
    _aead: AESGCM | None = field(default=None, repr=False)
    #: the derived AES-256-GCM key (for the C engine's address_token)
    _aead_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        h = hashes.SHA256()
        prk = hkdf_extract(h, b"quicflow address validation", self.key)
        self._aead_key = hkdf_expand(h, prk, b"token key", 32)
        self._aead = AESGCM(self._aead_key)

    def seal(
        self, kind: int, address: Address, odcid: bytes, wall_time: float,
        retry_scid: bytes = b"",
    ) -> bytes:
        assert self._aead is not None
        nonce = random_part(_NONCE_LEN)  # (os.urandom, read in batches; each used once)
        head = _KIND[kind]
        aad = head + _address_bytes(address, kind == RETRY_TOKEN)
        native = _NATIVE_SEAL
        if native is not None:  # the same bytes in one C call (None: the steps below)
            token: bytes | None = native(self._aead_key, kind, nonce, int(wall_time * 1000),
                                         odcid, retry_scid, aad)
            if token is not None:
                return token
        if odcid or retry_scid:
            plain = (
                int(wall_time * 1000).to_bytes(8, "big") + bytes((len(odcid),)) + odcid
                + bytes((len(retry_scid),)) + retry_scid
            )
        else:  # a NEW_TOKEN token: both empty
            plain = int(wall_time * 1000).to_bytes(8, "big") + b"\x00\x00"
        return head + nonce + self._aead.encrypt(nonce, plain, aad)

    def open(
        self, token: bytes, address: Address, wall_time: float, lifetime: float
    ) -> tuple[int, bytes, bytes] | None:
        """``(kind, odcid, retry_scid)`` of a token that is ours, for this address and not
        expired; None otherwise (wrong key, tampered, another address, expired, garbage)."""
        assert self._aead is not None
        if len(token) < _MIN_LEN or token[0] not in (RETRY_TOKEN, NEW_TOKEN):
            return None
        kind = token[0]
        aad = bytes((kind,)) + _address_bytes(address, kind == RETRY_TOKEN)
        try:
            plain = self._aead.decrypt(token[1 : 1 + _NONCE_LEN], token[1 + _NONCE_LEN :], aad)
        except Exception:  # InvalidTag (and nothing else can come out of garbage)
            return None
        if len(plain) < 10 or len(plain) < 10 + plain[8]:
            return None
        end = 9 + plain[8]
        if len(plain) != end + 1 + plain[end]:
            return None
        issued = int.from_bytes(plain[:8], "big") / 1000
        if not issued - 1.0 <= wall_time <= issued + lifetime:
            return None
        return kind, plain[9:end], plain[end + 1 :]


def token_kind(token: bytes) -> int:
    """RETRY_TOKEN or NEW_TOKEN as the clear kind byte says (not yet authenticated)."""
    return token[0] if token else 0


def new_token_key() -> bytes:
    """A fresh random key for ``Configuration.token_key``."""
    return os.urandom(32)


@dataclass(slots=True, eq=False)
class TokenCache:
    """A client's NEW_TOKEN tokens per server (``"host:port"``), newest last; each token
    is handed out once. At most ``max_servers`` servers and ``per_server`` tokens each."""

    max_servers: int = 256
    per_server: int = 4
    tokens: OrderedDict[str, list[bytes]] = field(default_factory=OrderedDict)

    def put(self, server: str, token: bytes) -> None:
        entry = self.tokens.setdefault(server, [])
        self.tokens.move_to_end(server)
        entry.append(token)
        del entry[: -self.per_server]
        while len(self.tokens) > self.max_servers:
            self.tokens.popitem(last=False)

    def take(self, server: str) -> bytes:
        """The newest token for ``server`` (removed from the cache), or b""."""
        entry = self.tokens.get(server)
        if not entry:
            return b""
        token = entry.pop()
        if not entry:
            del self.tokens[server]
        return token

    def __len__(self) -> int:
        return sum(len(v) for v in self.tokens.values())
