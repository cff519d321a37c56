"""Certificate chain verification and CertificateVerify signatures (RFC 8446 §4.4.3)."""

from __future__ import annotations

import functools
import ipaddress
import os
import warnings
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from .alerts import (
    BAD_CERTIFICATE,
    CERTIFICATE_EXPIRED,
    CERTIFICATE_UNKNOWN,
    DECRYPT_ERROR,
    HANDSHAKE_FAILURE,
    ILLEGAL_PARAMETER,
    UNKNOWN_CA,
    UNSUPPORTED_CERTIFICATE,
    TlsAlert,
)
from .config import PrivateKey
from .messages import (
    SIG_ECDSA_SECP256R1_SHA256,
    SIG_ED25519,
    SIG_RSA_PSS_RSAE_SHA256,
    SIG_RSA_PSS_RSAE_SHA384,
    SIG_RSA_PSS_RSAE_SHA512,
)

SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"

# what a client offers in signature_algorithms, in preference order
CLIENT_SIGNATURE_ALGORITHMS = [
    SIG_ECDSA_SECP256R1_SHA256,
    SIG_ED25519,
    SIG_RSA_PSS_RSAE_SHA256,
    SIG_RSA_PSS_RSAE_SHA384,
    SIG_RSA_PSS_RSAE_SHA512,
]

_PSS_HASHES: dict[int, type[hashes.SHA256] | type[hashes.SHA384] | type[hashes.SHA512]] = {
    SIG_RSA_PSS_RSAE_SHA256: hashes.SHA256,
    SIG_RSA_PSS_RSAE_SHA384: hashes.SHA384,
    SIG_RSA_PSS_RSAE_SHA512: hashes.SHA512,
}

#: the ECDSA signature algorithm object of ecdsa_secp256r1_sha256 (immutable: made once)
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())

SERVER_CONTEXT = b"TLS 1.3, server CertificateVerify"
CLIENT_CONTEXT = b"TLS 1.3, client CertificateVerify"


def certificate_verify_content(context: bytes, thash: bytes) -> bytes:
    """64 spaces, the context string, a zero byte, the transcript hash."""
    return b" " * 64 + context + b"\x00" + thash


#: certificates already parsed, by DER: a client that connects to the same server again
#: (or a server that sees the same client certificate) gets the same immutable object,
#: its public key already decoded. A few entries (cleared past 64).
_PARSED: dict[bytes, x509.Certificate] = {}


def load_der_chain(ders: Sequence[bytes]) -> list[x509.Certificate]:
    """The certificates of a Certificate message; ``ValueError`` for one that does not
    parse. (Parsing only: every handshake still verifies the chain and the signature.)"""
    certs = []
    for der in ders:
        cert = _PARSED.get(der)
        if cert is None:
            cert = x509.load_der_x509_certificate(der)
            if len(_PARSED) >= 64:
                _PARSED.clear()
            _PARSED[der] = cert
        certs.append(cert)
    return certs


def signature_algorithms_for_key(key: PrivateKey) -> list[int]:
    """Signature schemes ``key`` can produce, best first."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return [SIG_ED25519]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return [SIG_ECDSA_SECP256R1_SHA256]
        return []
    if isinstance(key, rsa.RSAPrivateKey):
        return [SIG_RSA_PSS_RSAE_SHA256, SIG_RSA_PSS_RSAE_SHA384, SIG_RSA_PSS_RSAE_SHA512]
    return []


def sign(key: PrivateKey, algorithm: int, content: bytes) -> bytes:
    if algorithm == SIG_ED25519 and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(content)
    if algorithm == SIG_ECDSA_SECP256R1_SHA256 and isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(content, _ECDSA_SHA256)
    if algorithm in _PSS_HASHES and isinstance(key, rsa.RSAPrivateKey):
        h = _PSS_HASHES[algorithm]()
        pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
        return key.sign(content, pss, h)
    raise TlsAlert(HANDSHAKE_FAILURE, f"cannot sign with scheme {algorithm:#06x}")


def signer_for_key(key: PrivateKey) -> Callable[[int, bytes], bytes]:
    """``sign`` with ``key`` bound, its type looked at once (per configuration) instead
    of per signature: the same signatures and the same alert for a scheme it cannot
    make."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ec_sign = key.sign

        def sign_ec(algorithm: int, content: bytes) -> bytes:
            if algorithm == SIG_ECDSA_SECP256R1_SHA256:
                return ec_sign(content, _ECDSA_SHA256)
            raise TlsAlert(HANDSHAKE_FAILURE, f"cannot sign with scheme {algorithm:#06x}")

        return sign_ec
    return functools.partial(sign, key)


def verify_signature(
    cert: x509.Certificate, algorithm: int, signature: bytes, content: bytes
) -> None:
    """Check a CertificateVerify signature with the leaf's public key."""
    if algorithm not in CLIENT_SIGNATURE_ALGORITHMS:
        raise TlsAlert(ILLEGAL_PARAMETER, f"signature scheme {algorithm:#06x} was not offered")
    try:
        pub = cert.public_key()
        if algorithm == SIG_ED25519 and isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(signature, content)
        elif (
            algorithm == SIG_ECDSA_SECP256R1_SHA256
            and isinstance(pub, ec.EllipticCurvePublicKey)
            and isinstance(pub.curve, ec.SECP256R1)
        ):
            pub.verify(signature, content, _ECDSA_SHA256)
        elif algorithm in _PSS_HASHES and isinstance(pub, rsa.RSAPublicKey):
            h = _PSS_HASHES[algorithm]()
            pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
            pub.verify(signature, content, pss, h)
        else:
            raise TlsAlert(
                ILLEGAL_PARAMETER,
                f"signature scheme {algorithm:#06x} does not match the certificate key",
            )
    except InvalidSignature as exc:
        raise TlsAlert(DECRYPT_ERROR, "CertificateVerify signature is invalid") from exc
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise TlsAlert(BAD_CERTIFICATE, f"unusable certificate public key: {exc}") from exc


#: trust stores already parsed, by (cafile, cadata, the file's stat stamp): parsing the
#: system bundle costs ~1.4 ms, once per process now instead of once per handshake; a
#: file that changes (mtime, size or inode) is read again. A few entries (cleared past 16).
_STORES: dict[tuple[str | None, bytes | None, tuple[int, int, int] | None], Store] = {}


def _stamp(path: str | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_trust_store(cafile: str | None, cadata: bytes | None) -> Store:
    """Trust anchors from ``cadata`` and/or ``cafile``, else the system bundle (parsed
    once per process while the file stays the same)."""
    try:
        stamp = _stamp(cafile if cafile or cadata else SYSTEM_CA_FILE)
    except OSError as exc:
        raise TlsAlert(CERTIFICATE_UNKNOWN, f"cannot load trust anchors: {exc}") from exc
    key = (cafile, cadata, stamp)
    store = _STORES.get(key)
    if store is None:
        store = _read_trust_store(cafile, cadata)
        if len(_STORES) >= 16:
            _STORES.clear()
        _STORES[key] = store
    return store


def _read_trust_store(cafile: str | None, cadata: bytes | None) -> Store:
    anchors: list[x509.Certificate] = []
    try:
        if cadata:
            anchors += x509.load_pem_x509_certificates(cadata)
        if cafile:
            with open(cafile, "rb") as f:
                anchors += x509.load_pem_x509_certificates(f.read())
        if not cadata and not cafile:
            with open(SYSTEM_CA_FILE, "rb") as f, warnings.catch_warnings():
                # some system CAs have non-positive serial numbers; that is not ours to report
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                anchors += x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as exc:
        raise TlsAlert(CERTIFICATE_UNKNOWN, f"cannot load trust anchors: {exc}") from exc
    if not anchors:
        raise TlsAlert(UNKNOWN_CA, "no trust anchors configured")
    return Store(anchors)


def _subject(server_name: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        return x509.DNSName(server_name)


def _chain_alert(exc: VerificationError, who: str) -> TlsAlert:
    """The alert for a chain ``cryptography`` rejected (``who`` names the certificate)."""
    reason = str(exc)
    if "subjectAltName" in reason or "subject" in reason.lower() and "match" in reason:
        return TlsAlert(BAD_CERTIFICATE, f"{who} does not match: {reason}")
    if ("expired" in reason or "not yet valid" in reason or "validity" in reason
            or "not valid at validation time" in reason):  # (cryptography's wording)
        return TlsAlert(CERTIFICATE_EXPIRED, f"{who} is not valid now: {reason}")
    if "candidates exhausted" in reason or "issuer" in reason:
        return TlsAlert(UNKNOWN_CA, f"{who} is not issued by a trusted CA: {reason}")
    if "extended key usage" in reason.lower() or "EKU" in reason:
        return TlsAlert(UNSUPPORTED_CERTIFICATE, f"{who} is not for this use: {reason}")
    return TlsAlert(CERTIFICATE_UNKNOWN, f"{who} rejected: {reason}")


def verify_chain(
    chain: Sequence[x509.Certificate],
    server_name: str | None,
    cafile: str | None,
    cadata: bytes | None,
) -> None:
    """Verify a server chain (leaf first) for ``server_name``; raises ``TlsAlert``."""
    if not chain:
        raise TlsAlert(BAD_CERTIFICATE, "server sent no certificate")
    if not server_name:
        raise TlsAlert(
            CERTIFICATE_UNKNOWN, "cannot verify the server certificate without a server_name"
        )
    store = load_trust_store(cafile, cadata)
    who = f"certificate for {server_name!r}"
    try:
        verifier = PolicyBuilder().store(store).build_server_verifier(_subject(server_name))
        verifier.verify(chain[0], list(chain[1:]))
    except VerificationError as exc:
        alert = _chain_alert(exc, who)
        if alert.description == BAD_CERTIFICATE:
            alert = TlsAlert(
                BAD_CERTIFICATE, f"certificate does not match host {server_name!r}: {exc}"
            )
        raise alert from exc
    except ValueError as exc:  # bad subject name, unsupported key types, ...
        raise TlsAlert(BAD_CERTIFICATE, f"{who} rejected: {exc}") from exc


def verify_client_chain(
    chain: Sequence[x509.Certificate], cafile: str | None, cadata: bytes | None
) -> None:
    """Verify a client chain (leaf first) for the clientAuth use; raises ``TlsAlert``."""
    if not chain:
        raise TlsAlert(BAD_CERTIFICATE, "client sent no certificate")
    store = load_trust_store(cafile, cadata)
    who = f"client certificate {chain[0].subject.rfc4514_string()!r}"
    try:
        verifier = PolicyBuilder().store(store).build_client_verifier()
        verifier.verify(chain[0], list(chain[1:]))
    except VerificationError as exc:
        raise _chain_alert(exc, who) from exc
    except ValueError as exc:
        raise TlsAlert(BAD_CERTIFICATE, f"{who} rejected: {exc}") from exc
