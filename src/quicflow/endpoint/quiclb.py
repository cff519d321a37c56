"""QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21).

A QUIC-LB CID is a first octet (three config-rotation bits, then either the length of
the rest of the CID or random bits), a server ID and a nonce. Without a key the server
ID travels in the clear (what a reuseport BPF program or an nftables rule can read);
with a 16-byte key the server ID and nonce are encrypted with AES-128-ECB, in one pass
when they fill exactly one block and with the draft's four-pass Feistel network
otherwise.

Everything here is pure computation on bytes: no state, no clock, no I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

#: The config id that marks a CID as unroutable (draft §3.2); never a configuration.
UNROUTABLE_CONFIG_ID = 7
#: QUIC v1 limits connection IDs to 20 bytes.
MAX_CID_LENGTH = 20
#: The draft's lower bounds on the server ID and nonce (§5.3).
MIN_SERVER_ID_LENGTH = 1
MIN_NONCE_LENGTH = 4
KEY_LENGTH = 16

QuicLbMode = Literal["plaintext", "single-pass", "four-pass"]


@dataclass(frozen=True, slots=True)
class QuicLbConfig:
    """One QUIC-LB configuration: config id, field lengths and an optional AES key."""

    config_id: int = 0
    server_id_len: int = 2
    nonce_len: int = 5
    key: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.config_id < UNROUTABLE_CONFIG_ID:
            raise ValueError(f"config_id must be 0..6 (7 means unroutable), got {self.config_id}")
        if self.server_id_len < MIN_SERVER_ID_LENGTH:
            raise ValueError(f"server_id_len must be at least 1, got {self.server_id_len}")
        if self.nonce_len < MIN_NONCE_LENGTH:
            raise ValueError(f"nonce_len must be at least 4, got {self.nonce_len}")
        if self.cid_len > MAX_CID_LENGTH:
            raise ValueError(
                f"1 + server_id_len + nonce_len must be at most {MAX_CID_LENGTH}, "
                f"got {self.cid_len}"
            )
        if self.key is not None and len(self.key) != KEY_LENGTH:
            raise ValueError(f"key must be {KEY_LENGTH} bytes, got {len(self.key)}")

    @property
    def mode(self) -> QuicLbMode:
        if self.key is None:
            return "plaintext"
        if self.server_id_len + self.nonce_len == KEY_LENGTH:
            return "single-pass"
        return "four-pass"

    @property
    def cid_len(self) -> int:
        return 1 + self.server_id_len + self.nonce_len


@lru_cache(maxsize=32)
def _ecb(key: bytes) -> tuple[CipherContext, CipherContext]:
    """Reusable AES-128-ECB encryptor and decryptor for one key (never finalised)."""
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    return cipher.encryptor(), cipher.decryptor()


def _first_octet(cfg: QuicLbConfig, length_self_encoded: bool) -> int:
    low = (cfg.cid_len - 1) if length_self_encoded else os.urandom(1)[0] & 0x1F
    return (cfg.config_id << 5) | low


def _expand(total: int, pass_no: int, half: bytes) -> bytes:
    """The draft's expand(): the half, zero padding, then the length and pass octets."""
    return half + bytes(14 - len(half)) + bytes((total, pass_no))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[: len(a)], "big")).to_bytes(len(a), "big")


def _clear_first(value: bytes) -> bytes:
    return bytes((value[0] & 0x0F,)) + value[1:]


def _clear_last(value: bytes) -> bytes:
    return value[:-1] + bytes((value[-1] & 0xF0,))


def _feistel_round(
    enc: CipherContext, total: int, pass_no: int, source: bytes, target: bytes, odd: bool
) -> bytes:
    """XOR target with the AES of expand(source); clear the half-nibble if odd."""
    out = _xor(target, enc.update(_expand(total, pass_no, source)))
    if odd:
        # Passes 1 and 3 produce a right half (first nibble cleared), 2 and 4 a left half.
        out = _clear_first(out) if pass_no % 2 else _clear_last(out)
    return out


def _split(plain: bytes) -> tuple[bytes, bytes, bool]:
    total = len(plain)
    half = (total + 1) // 2
    odd = bool(total & 1)
    left, right = plain[:half], plain[total - half :]
    if odd:
        left, right = _clear_last(left), _clear_first(right)
    return left, right, odd


def _join(left: bytes, right: bytes, odd: bool) -> bytes:
    if not odd:
        return left + right
    return left[:-1] + bytes((left[-1] | right[0],)) + right[1:]


def _four_pass_encrypt(key: bytes, plain: bytes) -> bytes:
    enc = _ecb(key)[0]
    total = len(plain)
    left0, right0, odd = _split(plain)
    right1 = _feistel_round(enc, total, 1, left0, right0, odd)
    left1 = _feistel_round(enc, total, 2, right1, left0, odd)
    right2 = _feistel_round(enc, total, 3, left1, right1, odd)
    left2 = _feistel_round(enc, total, 4, right2, left1, odd)
    return _join(left2, right2, odd)


def _four_pass_decrypt(key: bytes, cipher: bytes) -> bytes:
    enc = _ecb(key)[0]
    total = len(cipher)
    left2, right2, odd = _split(cipher)
    left1 = _feistel_round(enc, total, 4, right2, left2, odd)
    right1 = _feistel_round(enc, total, 3, left1, right2, odd)
    left0 = _feistel_round(enc, total, 2, right1, left1, odd)
    right0 = _feistel_round(enc, total, 1, left0, right1, odd)
    return _join(left0, right0, odd)


def encode_cid(
    cfg: QuicLbConfig, server_id: bytes, nonce: bytes, *, length_self_encoded: bool = True
) -> bytes:
    """The CID carrying server_id and nonce under cfg (cfg.cid_len bytes)."""
    if len(server_id) != cfg.server_id_len:
        raise ValueError(f"server_id must be {cfg.server_id_len} bytes, got {len(server_id)}")
    if len(nonce) != cfg.nonce_len:
        raise ValueError(f"nonce must be {cfg.nonce_len} bytes, got {len(nonce)}")
    plain = bytes(server_id) + bytes(nonce)
    first = bytes((_first_octet(cfg, length_self_encoded),))
    if cfg.key is None:
        return first + plain
    if len(plain) == KEY_LENGTH:
        return first + _ecb(cfg.key)[0].update(plain)
    return first + _four_pass_encrypt(cfg.key, plain)


def decode_plaintext(cfg: QuicLbConfig, cid: bytes) -> bytes | None:
    """Server ID followed by nonce, or None if cid is not of this config and length."""
    if len(cid) != cfg.cid_len or cid[0] >> 5 != cfg.config_id:
        return None
    body = bytes(cid[1:])
    if cfg.key is None:
        return body
    if len(body) == KEY_LENGTH:
        return _ecb(cfg.key)[1].update(body)
    return _four_pass_decrypt(cfg.key, body)


def decode_server_id(cfg: QuicLbConfig, cid: bytes) -> bytes | None:
    """The server ID encoded in cid, or None if cid is not of this config and length."""
    plain = decode_plaintext(cfg, cid)
    return None if plain is None else plain[: cfg.server_id_len]


@dataclass(frozen=True, slots=True)
class ServerIdLayout:
    """A server ID made of a host part then a worker part, both big-endian.

    The worker byte is the last byte of the server ID: in plaintext mode it sits at CID
    offset ``worker_cid_offset`` (UDP payload offset 1 + that for short headers), where
    a reuseport steering program or an nftables rule can read it.
    """

    host_id: int = 0
    host_id_len: int = 1
    worker_id: int = 0
    worker_id_len: int = 1

    def __post_init__(self) -> None:
        if self.host_id_len < 0 or self.worker_id_len < 0:
            raise ValueError("host_id_len and worker_id_len must not be negative")
        if self.host_id_len + self.worker_id_len < MIN_SERVER_ID_LENGTH:
            raise ValueError("a server ID needs at least one byte")
        if not 0 <= self.host_id < 1 << (8 * self.host_id_len):
            raise ValueError(f"host_id {self.host_id} does not fit {self.host_id_len} bytes")
        if not 0 <= self.worker_id < 1 << (8 * self.worker_id_len):
            raise ValueError(f"worker_id {self.worker_id} does not fit {self.worker_id_len} bytes")

    @property
    def server_id_len(self) -> int:
        return self.host_id_len + self.worker_id_len

    @property
    def worker_cid_offset(self) -> int:
        """CID offset of the last server-ID byte (the worker byte) in plaintext mode."""
        return 1 + self.host_id_len + self.worker_id_len - 1

    def server_id(self) -> bytes:
        return self.host_id.to_bytes(self.host_id_len, "big") + self.worker_id.to_bytes(
            self.worker_id_len, "big"
        )

    def for_worker(self, worker_id: int) -> ServerIdLayout:
        """The same host with another worker id."""
        return ServerIdLayout(self.host_id, self.host_id_len, worker_id, self.worker_id_len)
