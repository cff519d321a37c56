"""The TLS 1.3 key schedule and transcript (RFC 8446 §7.1, §4.4.1).

With the C extension every step (HKDF-Extract, a Derive-Secret, a Finished MAC) is one
C call; ``QUICFLOW_ENGINE=python`` (or no extension) runs the bit-identical pure-Python
HKDF of ``quicflow.crypto.hkdf``. What depends only on the suite (the empty-transcript
hash, the early secret without a PSK and the "derived" secret after it) is computed
once per process.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes

from quicflow.crypto.extension import native_for_keys
from quicflow.crypto.hkdf import hkdf_expand_label, hkdf_extract
from quicflow.crypto.suites import CipherSuite, suite_hash

from .messages import FINISHED, MESSAGE_HASH

#: hashlib's constructor of each suite's hash (the same digest as ``suite_hash``'s, with
#: less per-call overhead than a ``cryptography`` Hash object)
HASHLIB = {
    CipherSuite.AES_128_GCM_SHA256: hashlib.sha256,
    CipherSuite.AES_256_GCM_SHA384: hashlib.sha384,
    CipherSuite.CHACHA20_POLY1305_SHA256: hashlib.sha256,
}
#: the C extension (HKDF steps in one call each), None for the pure-Python code
_EXT: Any = native_for_keys()


def transcript_hash(suite: CipherSuite, transcript: bytes | bytearray) -> bytes:
    new = HASHLIB.get(suite)
    if new is None:
        digest = hashes.Hash(suite_hash(suite))
        digest.update(bytes(transcript))
        return digest.finalize()
    return new(transcript).digest()


def message_hash(suite: CipherSuite, first_client_hello: bytes) -> bytes:
    """The synthetic ``message_hash`` message that replaces ClientHello1 after an HRR."""
    h = transcript_hash(suite, first_client_hello)
    return bytes([MESSAGE_HASH, 0, 0, len(h)]) + h


class _SuiteConstants:
    """Per suite, once per process: its hash, the empty-transcript hash, and the early
    secret without a PSK with the "derived" secret after it."""

    __slots__ = ("hash", "hash_len", "empty_hash", "early_secret", "derived")

    def __init__(self, suite: CipherSuite) -> None:
        self.hash = suite_hash(suite)
        self.hash_len = self.hash.digest_size
        self.empty_hash = transcript_hash(suite, b"")
        zeros = bytes(self.hash_len)
        self.early_secret = hkdf_extract(self.hash, zeros, zeros)
        self.derived = b""  # set just below, with a KeySchedule that has these


_CONSTANTS: dict[CipherSuite, _SuiteConstants] = {}


def _constants(suite: CipherSuite) -> _SuiteConstants:
    found = _CONSTANTS.get(suite)
    if found is None:
        found = _SuiteConstants(suite)
        _CONSTANTS[suite] = found  # (a handful of suites: never more entries)
        found.derived = KeySchedule(suite)._derive(found.early_secret, "derived",
                                                   found.empty_hash)
    return found


class KeySchedule:
    """Secrets of one handshake with a known cipher suite, from a resumption PSK
    (RFC 8446 §4.6.1, §7.1) or none (all-zero PSK)."""

    __slots__ = ("suite", "hash", "hash_len", "early_secret", "handshake_secret",
                 "master_secret", "_const", "_psk")

    def __init__(self, suite: CipherSuite, psk: bytes | None = None) -> None:
        const = _CONSTANTS.get(suite) or _constants(suite)
        self.suite = suite
        self._const = const
        self.hash = const.hash
        self.hash_len = const.hash_len
        self._psk = bool(psk)
        if psk:
            self.early_secret = hkdf_extract(self.hash, bytes(self.hash_len), psk)
        else:
            self.early_secret = const.early_secret
        self.handshake_secret = b""
        self.master_secret = b""

    def binder_key(self) -> bytes:
        """The resumption binder key: Derive-Secret(early, "res binder", "")."""
        return self._derive(self.early_secret, "res binder", self._const.empty_hash)

    def binder(self, truncated_hash: bytes) -> bytes:
        """The PSK binder for the transcript hash of the ClientHello up to (without) the
        binders list (RFC 8446 §4.2.11.2): a Finished MAC under the binder key."""
        return self.finished_verify_data(self.binder_key(), truncated_hash)

    def client_early_traffic(self, client_hello_hash: bytes) -> bytes:
        """client_early_traffic_secret for the hash of the ClientHello (0-RTT keys)."""
        return self._derive(self.early_secret, "c e traffic", client_hello_hash)

    def resumption_master(self, thash: bytes) -> bytes:
        """resumption_master_secret for the hash of CH..client Finished."""
        return self._derive(self.master_secret, "res master", thash)

    def ticket_psk(self, resumption_master: bytes, nonce: bytes) -> bytes:
        """The PSK a NewSessionTicket with ``nonce`` stands for (RFC 8446 §4.6.1)."""
        return self._derive(resumption_master, "resumption", nonce)

    def _derive(self, secret: bytes, label: str, context: bytes) -> bytes:
        """HKDF-Expand-Label(secret, label, context, hash length) (Derive-Secret when
        ``context`` is a transcript hash)."""
        if _EXT is not None:
            out: bytes = _EXT.hkdf_expand_label(self.suite, secret, label, self.hash_len,
                                                context)
            return out
        return hkdf_expand_label(self.hash, secret, label.encode("ascii"), context,
                                 self.hash_len)

    def set_shared_secret(self, shared: bytes) -> None:
        """Early secret → handshake secret → master secret."""
        const = self._const
        derived = const.derived if not self._psk else self._derive(
            self.early_secret, "derived", const.empty_hash)
        self.handshake_secret = hkdf_extract(self.hash, derived, shared)
        derived = self._derive(self.handshake_secret, "derived", const.empty_hash)
        self.master_secret = hkdf_extract(self.hash, derived, bytes(self.hash_len))

    def handshake_traffic(self, thash: bytes) -> tuple[bytes, bytes]:
        """(client, server) handshake traffic secrets for the hash of CH..SH."""
        return (
            self._derive(self.handshake_secret, "c hs traffic", thash),
            self._derive(self.handshake_secret, "s hs traffic", thash),
        )

    def application_traffic(self, thash: bytes) -> tuple[bytes, bytes]:
        """(client, server) application traffic secrets for the hash of CH..server Finished."""
        return (
            self._derive(self.master_secret, "c ap traffic", thash),
            self._derive(self.master_secret, "s ap traffic", thash),
        )

    def server_flight(
        self,
        shared: bytes,
        transcript: bytes | bytearray,
        sh_len: int,
        sign: Callable[[bytes], bytes] | None,
        with_ticket: bool,
    ) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes]:
        """A server's key schedule from the shared secret to its Finished, the transcript
        hashed once: sets the handshake and master secrets and returns (client and
        server handshake traffic secrets, the CertificateVerify message, the server
        Finished verify_data, client and server application traffic secrets, the client
        Finished verify_data that must arrive, and with ``with_ticket`` the PSK of a
        NewSessionTicket with the nonce 0x00 from the resumption master secret of the
        transcript ending with that client Finished, else b"").

        ``transcript`` is ClientHello..Certificate (..EncryptedExtensions when
        resuming), the ServerHello ending at ``sh_len``; ``sign`` is None (resuming: no
        CertificateVerify, b"") or gives the CertificateVerify message for the hash of
        ``transcript``; the Finished steps hash it after ``transcript`` (``sign`` must
        not change ``transcript``: the C call holds its buffer). No client certificate
        may come in between. One C call with the extension."""
        const = self._const
        if _EXT is not None:
            derived = const.derived if not self._psk else self._derive(
                self.early_secret, "derived", const.empty_hash)
            (self.handshake_secret, self.master_secret, *out) = _EXT.tls_server_flight(
                self.suite, derived, shared, transcript, sh_len, sign, with_ticket)
            return tuple(out)
        self.set_shared_secret(shared)
        view = memoryview(transcript)
        h = HASHLIB[self.suite](view[:sh_len])
        c_hs, s_hs = self.handshake_traffic(h.copy().digest())
        h.update(view[sh_len:])
        cv = b"" if sign is None else sign(h.copy().digest())
        h.update(cv)
        header = bytes((FINISHED, 0, 0, self.hash_len))
        server_fin = self.finished_verify_data(s_hs, h.copy().digest())
        h.update(header + server_fin)
        h_sf = h.copy().digest()
        c_ap, s_ap = self.application_traffic(h_sf)
        client_fin = self.finished_verify_data(c_hs, h_sf)
        psk = b""
        if with_ticket:
            h.update(header + client_fin)
            psk = self.ticket_psk(self.resumption_master(h.digest()), b"\x00")
        return c_hs, s_hs, cv, server_fin, c_ap, s_ap, client_fin, psk

    def finished_verify_data(self, base_key: bytes, thash: bytes) -> bytes:
        """HMAC(HKDF-Expand-Label(base_key, "finished", "", Hash.length), thash)."""
        if _EXT is not None:
            out: bytes = _EXT.finished_verify_data(self.suite, base_key, thash)
            return out
        finished_key = hkdf_expand_label(self.hash, base_key, b"finished", b"", self.hash_len)
        return hmac.digest(finished_key, thash, self.hash.name)
