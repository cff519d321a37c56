"""QUIC packet protection: key schedule, AEAD suites, header protection, Retry, offload."""

from .epoch import Epoch
from .hkdf import hkdf_expand, hkdf_expand_label, hkdf_extract
from .keys import (
    INITIAL_SALT_V1,
    INITIAL_SUITE,
    DecryptError,
    PacketKeys,
    PacketProtector,
    derive_packet_keys,
    initial_secrets,
    next_generation_secret,
    next_packet_keys,
)
from .offload import OffloadEngine, OpenResult, SoftwareOffloadEngine
from .retry import RETRY_TAG_LEN, retry_integrity_tag, verify_retry_integrity_tag
from .suites import CipherSuite, suite_hash, suite_hash_len, suite_key_len

__all__ = [
    "INITIAL_SALT_V1",
    "INITIAL_SUITE",
    "RETRY_TAG_LEN",
    "CipherSuite",
    "DecryptError",
    "Epoch",
    "OffloadEngine",
    "OpenResult",
    "PacketKeys",
    "PacketProtector",
    "SoftwareOffloadEngine",
    "derive_packet_keys",
    "hkdf_expand",
    "hkdf_expand_label",
    "hkdf_extract",
    "initial_secrets",
    "next_generation_secret",
    "next_packet_keys",
    "retry_integrity_tag",
    "suite_hash",
    "suite_hash_len",
    "suite_key_len",
    "verify_retry_integrity_tag",
]
