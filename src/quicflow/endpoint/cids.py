"""Connection ID generators: the endpoint issues every CID its connections use.

A server uses ``CidGenerator`` (QUIC-LB CIDs that carry its server ID, so load
balancers, reuseport steering programs and other workers can route them); a client,
which nobody routes to, uses ``RandomCidGenerator``. Both have the same shape:
``cid_length``, ``generate()``, ``is_ours(cid)``.
"""

from __future__ import annotations

import os
from typing import Protocol

# (random parts from batched os.urandom reads; re-exported for the endpoint's other users)
from quicflow.crypto.randoms import RANDOM_BATCH as RANDOM_BATCH
from quicflow.crypto.randoms import random_part as random_part
from quicflow.endpoint.quiclb import (
    QuicLbConfig,
    ServerIdLayout,
    decode_server_id,
    encode_cid,
)


class ConnectionIdSource(Protocol):
    """What the endpoint needs from a generator."""

    @property
    def cid_length(self) -> int: ...

    def generate(self) -> bytes: ...

    def is_ours(self, cid: bytes) -> bool: ...


class CidGenerator:
    """QUIC-LB CIDs (draft-ietf-quic-load-balancers) carrying one server ID."""

    __slots__ = ("config", "server_id", "cid_length", "_plaintext", "_config_id", "_sid_end",
                 "_prefix", "_nonce_len")

    def __init__(self, config: QuicLbConfig, server_id: bytes) -> None:
        if len(server_id) != config.server_id_len:
            raise ValueError(
                f"server_id must be {config.server_id_len} bytes for this config, "
                f"got {len(server_id)}"
            )
        self.config = config
        self.server_id = bytes(server_id)
        self.cid_length = config.cid_len
        # Plaintext mode: the server ID sits in the clear, so is_ours() is a compare.
        self._plaintext = config.key is None
        self._config_id = config.config_id  # (is_ours reads these for every datagram)
        self._sid_end = 1 + len(self.server_id)
        # plaintext CIDs are this prefix (first octet, server ID) and a random nonce
        self._prefix = encode_cid(config, self.server_id, bytes(config.nonce_len))[
            : 1 + config.server_id_len]
        self._nonce_len = config.nonce_len

    @classmethod
    def from_layout(
        cls, layout: ServerIdLayout | None = None, config: QuicLbConfig | None = None
    ) -> CidGenerator:
        """A generator for layout's server ID (plaintext QUIC-LB unless config says)."""
        layout = layout or ServerIdLayout()
        if config is None:
            config = QuicLbConfig(server_id_len=layout.server_id_len)
        return cls(config, layout.server_id())

    def generate(self) -> bytes:
        """A fresh CID of ours (random nonce)."""
        if self._plaintext:  # encode_cid's bytes, without its per-call checks
            return self._prefix + random_part(self._nonce_len)
        return encode_cid(self.config, self.server_id, random_part(self._nonce_len))

    def generate_for(self, server_id: bytes) -> bytes:
        """A fresh CID that routes to another server (to hand a connection over)."""
        return encode_cid(self.config, server_id, os.urandom(self.config.nonce_len))

    def server_id_of(self, cid: bytes) -> bytes | None:
        """The server ID in cid, or None if cid is not of this config and length."""
        return decode_server_id(self.config, cid)

    def is_ours(self, cid: bytes) -> bool:
        """Whether cid has our config id, our length and decodes to our server ID."""
        if self._plaintext:
            return (
                len(cid) == self.cid_length
                and cid[0] >> 5 == self._config_id
                and cid[1 : self._sid_end] == self.server_id
            )
        return decode_server_id(self.config, cid) == self.server_id


class RandomCidGenerator:
    """Random CIDs of a fixed length (clients; length 0 is allowed)."""

    __slots__ = ("cid_length",)

    def __init__(self, length: int = 8) -> None:
        if not 0 <= length <= 20:
            raise ValueError(f"connection ID length must be 0..20, got {length}")
        self.cid_length = length

    def generate(self) -> bytes:
        return random_part(self.cid_length)

    def is_ours(self, cid: bytes) -> bool:
        """Only the length can be checked: a random CID carries no mark."""
        return len(cid) == self.cid_length
