"""The TLS 1.3 key schedule and transcript (RFC 8446 §7.1, §4.4.1)."""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes

from quicflow.crypto.hkdf import hkdf_expand_label, hkdf_extract
from quicflow.crypto.suites import CipherSuite, suite_hash

from .messages import MESSAGE_HASH


def transcript_hash(suite: CipherSuite, transcript: bytes | bytearray) -> bytes:
    digest = hashes.Hash(suite_hash(suite))
    digest.update(bytes(transcript))
    return digest.finalize()


def message_hash(suite: CipherSuite, first_client_hello: bytes) -> bytes:
    """The synthetic ``message_hash`` message that replaces ClientHello1 after an HRR."""
    h = transcript_hash(suite, first_client_hello)
    return bytes([MESSAGE_HASH, 0, 0, len(h)]) + h


class KeySchedule:
    """Secrets of one handshake with a known cipher suite, from a resumption PSK
    (RFC 8446 §4.6.1, §7.1) or none (all-zero PSK)."""

    __slots__ = ("suite", "hash", "hash_len", "early_secret", "handshake_secret",
                 "master_secret")

    def __init__(self, suite: CipherSuite, psk: bytes | None = None) -> None:
        self.suite = suite
        self.hash = suite_hash(suite)
        self.hash_len = self.hash.digest_size
        zeros = bytes(self.hash_len)
        self.early_secret = hkdf_extract(self.hash, zeros, psk if psk else zeros)
        self.handshake_secret = b""
        self.master_secret = b""

    def binder_key(self) -> bytes:
        """The resumption binder key: Derive-Secret(early, "res binder", "")."""
        return self._derive(self.early_secret, b"res binder", self._empty_hash())

    def binder(self, truncated_hash: bytes) -> bytes:
        """The PSK binder for the transcript hash of the ClientHello up to (without) the
        binders list (RFC 8446 §4.2.11.2): a Finished MAC under the binder key."""
        return self.finished_verify_data(self.binder_key(), truncated_hash)

    def client_early_traffic(self, client_hello_hash: bytes) -> bytes:
        """client_early_traffic_secret for the hash of the ClientHello (0-RTT keys)."""
        return self._derive(self.early_secret, b"c e traffic", client_hello_hash)

    def resumption_master(self, thash: bytes) -> bytes:
        """resumption_master_secret for the hash of CH..client Finished."""
        return self._derive(self.master_secret, b"res master", thash)

    def ticket_psk(self, resumption_master: bytes, nonce: bytes) -> bytes:
        """The PSK a NewSessionTicket with ``nonce`` stands for (RFC 8446 §4.6.1)."""
        return hkdf_expand_label(self.hash, resumption_master, b"resumption", nonce,
                                 self.hash_len)

    def _derive(self, secret: bytes, label: bytes, thash: bytes) -> bytes:
        return hkdf_expand_label(self.hash, secret, label, thash, self.hash_len)

    def _empty_hash(self) -> bytes:
        return transcript_hash(self.suite, b"")

    def set_shared_secret(self, shared: bytes) -> None:
        """Early secret → handshake secret → master secret."""
        zeros = bytes(self.hash_len)
        derived = self._derive(self.early_secret, b"derived", self._empty_hash())
        self.handshake_secret = hkdf_extract(self.hash, derived, shared)
        derived = self._derive(self.handshake_secret, b"derived", self._empty_hash())
        self.master_secret = hkdf_extract(self.hash, derived, zeros)

    def handshake_traffic(self, thash: bytes) -> tuple[bytes, bytes]:
        """(client, server) handshake traffic secrets for the hash of CH..SH."""
        return (
            self._derive(self.handshake_secret, b"c hs traffic", thash),
            self._derive(self.handshake_secret, b"s hs traffic", thash),
        )

    def application_traffic(self, thash: bytes) -> tuple[bytes, bytes]:
        """(client, server) application traffic secrets for the hash of CH..server Finished."""
        return (
            self._derive(self.master_secret, b"c ap traffic", thash),
            self._derive(self.master_secret, b"s ap traffic", thash),
        )

    def finished_verify_data(self, base_key: bytes, thash: bytes) -> bytes:
        finished_key = hkdf_expand_label(self.hash, base_key, b"finished", b"", self.hash_len)
        return hmac.digest(finished_key, thash, self.hash.name)
