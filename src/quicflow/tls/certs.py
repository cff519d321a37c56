"""Certificates and keys for tests and simple deployments.

``generate_self_signed`` makes a self-signed *leaf* (basicConstraints CA:false, with SAN,
serverAuth EKU and key identifiers): it is accepted as its own trust anchor by
``cryptography.x509.verification``, so a client can pin it via ``TlsConfig.cadata``.
For a CA-based setup use ``generate_ca`` and ``issue_certificate``.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import PrivateKey

KeyType = Literal["ec", "ed25519", "rsa"]

_VALIDITY = datetime.timedelta(days=365)
_BACKDATE = datetime.timedelta(hours=1)


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    """A new private key: EC P-256 ("ec"), Ed25519 or RSA-2048."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}; use 'ec', 'ed25519' or 'rsa'")


def _sign_hash(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _san(hostnames: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _leaf(
    hostnames: list[str], key: PrivateKey, issuer: x509.Name, issuer_key: PrivateKey,
    client_auth: bool = False,
) -> x509.Certificate:
    if not hostnames:
        raise ValueError("a certificate needs at least one host name")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    if issuer_key is key:
        issuer = subject
    builder = (
        _builder(subject, issuer, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth
            else [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(hostnames), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(issuer_key, _sign_hash(issuer_key))


def generate_ca(
    common_name: str = "quicflow test CA", key_type: KeyType = "ec"
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA certificate (CA:true, keyCertSign) and its key."""
    key = generate_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    return builder.sign(key, _sign_hash(key)), key


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    hostnames: list[str],
    key_type: KeyType = "ec",
    *,
    client_auth: bool = False,
) -> tuple[x509.Certificate, PrivateKey]:
    """A server (leaf) certificate for ``hostnames`` signed by the CA, and its key;
    ``client_auth`` also allows it as a TLS client certificate (mutual TLS)."""
    key = generate_key(key_type)
    return _leaf(hostnames, key, ca_cert.subject, ca_key, client_auth), key


def generate_self_signed(
    hostnames: list[str], key_type: KeyType = "ec"
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed server certificate for ``hostnames`` (DNS names or IP addresses).

    The certificate is its own trust anchor: pass its PEM as the client's ``cadata``.
    """
    key = generate_key(key_type)
    return _leaf(hostnames, key, x509.Name([]), key), key


def load_pem_chain(path: str) -> list[x509.Certificate]:
    """All certificates of a PEM file, in file order (leaf first for a chain)."""
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())


def load_pem_key(path: str, password: bytes | None = None) -> PrivateKey:
    """A PEM private key (EC P-256, Ed25519 or RSA)."""
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=password)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
