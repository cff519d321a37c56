"""The TLS 1.3 key schedule: RFC 8448 §3 values, and the C extension's one-call steps
(HKDF-Extract, HKDF-Expand-Label with a context, Finished MAC, QUIC packet keys) equal
to the pure-Python HKDF that ``QUICFLOW_ENGINE=python`` runs, bit for bit."""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterator

import pytest

from quicflow.crypto import hkdf, keys
from quicflow.crypto.extension import EXT
from quicflow.crypto.hkdf import hkdf_expand
from quicflow.crypto.keys import (
    QUIC_V1,
    QUIC_V2,
    derive_hp_key,
    derive_key_iv,
    derive_packet_keys,
    initial_secrets,
    next_generation_secret,
)
from quicflow.crypto.native import NativeOffloadEngine, available
from quicflow.crypto.offload import SoftwareOffloadEngine
from quicflow.crypto.suites import CipherSuite, suite_hash, suite_hash_len
from quicflow.tls import keyschedule
from quicflow.tls.alerts import HANDSHAKE_FAILURE, TlsAlert
from quicflow.tls.keyschedule import KeySchedule
from tests.support.prereq import require

SUITES = list(CipherSuite)
NATIVE = [True, False] if available() else [False]


def need_native() -> None:
    require(available(), "native crypto extension not built (gcc and libssl-dev needed)")


def use_engine(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    """The C extension's HKDF steps, or the pure-Python ones (what ``QUICFLOW_ENGINE=
    python`` selects at import), whatever the environment of this test run says."""
    ext = EXT if native else None
    monkeypatch.setattr(keyschedule, "_EXT", ext)
    monkeypatch.setattr(hkdf, "_NATIVE", ext)
    monkeypatch.setattr(keys, "_EXT", ext)
    monkeypatch.setattr(keyschedule, "_CONSTANTS", {})


@pytest.fixture(params=NATIVE, ids=lambda n: "native" if n else "python")
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    use_engine(monkeypatch, request.param)
    yield request.param


def test_rfc8448_simple_handshake_secrets(engine: bool) -> None:
    # RFC 8448 §3 (TLS_AES_128_GCM_SHA256, x25519, no PSK)
    ks = KeySchedule(CipherSuite.AES_128_GCM_SHA256)
    assert ks.early_secret.hex() == (
        "33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a")
    ks.set_shared_secret(bytes.fromhex(
        "8bd4054fb55b9d63fdfbacf9f04b9f0d35e6d63f537563efd46272900f89492d"))
    assert ks.handshake_secret.hex() == (
        "1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac")
    client_hs, server_hs = ks.handshake_traffic(bytes.fromhex(
        "860c06edc07858ee8e78f0e7428c58edd6b43f2ca3e6e95f02ed063cf0e1cad8"))
    assert client_hs.hex() == "b3eddb126e067f35a780b3abf45e2d8f3b1a950738f52e9600746a0e27a55a21"
    assert server_hs.hex() == "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38"
    assert ks.master_secret.hex() == (
        "18df06843d13a08bf2a449844c5f8a478001bc4d4c627984d5a41da8d0402919")
    verify_data = ks.finished_verify_data(server_hs, bytes.fromhex(
        "edb7725fa7a3473b031ec8ef65a2485493900138a2b91291407d7951a06110ed"))
    assert verify_data.hex() == (
        "9b9b141d906337fbd2cbdce71df4deda4ab42c309572cb7fffee5454b78f0718")


def schedule_outputs(suite: CipherSuite, psk: bytes | None, shared: bytes,
                     hashes: list[bytes]) -> list[bytes]:
    ks = KeySchedule(suite, psk)
    out = [ks.early_secret, ks.binder_key(), ks.binder(hashes[0]),
           ks.client_early_traffic(hashes[0])]
    ks.set_shared_secret(shared)
    out += [ks.handshake_secret, ks.master_secret, *ks.handshake_traffic(hashes[1]),
            *ks.application_traffic(hashes[2])]
    out.append(ks.finished_verify_data(out[6], hashes[3]))
    rms = ks.resumption_master(hashes[3])
    out += [rms, ks.ticket_psk(rms, b"\x00"), ks.ticket_psk(rms, b"n" * 255)]
    return out


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("with_psk", [False, True])
def test_native_schedule_equals_python_schedule(suite: CipherSuite, with_psk: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    need_native()
    n = suite_hash_len(suite)
    psk = os.urandom(n) if with_psk else None
    shared = os.urandom(32)
    hashes = [os.urandom(n) for _ in range(4)]
    use_engine(monkeypatch, True)
    native = schedule_outputs(suite, psk, shared, hashes)
    use_engine(monkeypatch, False)
    python = schedule_outputs(suite, psk, shared, hashes)
    assert native == python
    assert len(set(native)) == len(native)  # every step gave a distinct secret


@pytest.mark.parametrize("suite", SUITES)
def test_native_hkdf_steps_match_rfc5869(suite: CipherSuite) -> None:
    need_native()
    ext = EXT
    assert ext is not None
    h = suite_hash(suite)
    n = h.digest_size
    # (keys of every length around the hash's block: a longer key is hashed first)
    for salt in (b"", os.urandom(n), os.urandom(7), os.urandom(64), os.urandom(65),
                 os.urandom(128), os.urandom(129), os.urandom(300)):
        ikm = os.urandom(40)
        expected = hmac.digest(salt or bytes(n), ikm, h.name)
        assert ext.hkdf_extract(int(suite), salt, ikm) == expected
    secret = os.urandom(n)
    for label, context, length in ((b"c hs traffic", os.urandom(n), n), (b"key", b"", 16),
                                   (b"resumption", b"\x00", n), (b"x" * 249, b"c" * 255, 1)):
        info = (length.to_bytes(2, "big") + bytes((6 + len(label),)) + b"tls13 " + label
                + bytes((len(context),)) + context)
        assert ext.hkdf_expand_label(int(suite), secret, label, length, context) == \
            hkdf_expand(h, secret, info, length)
    # an empty key (HMAC pads it with zeros) right after another key: not "the same key
    # as before", which an empty key means to a reused OpenSSL MAC context
    for key in (secret, b"", b"\x00", secret, b""):
        info = (16).to_bytes(2, "big") + bytes((9,)) + b"tls13 key" + b"\0"
        assert ext.hkdf_expand_label(int(suite), key, b"key", 16, b"") == \
            hkdf_expand(h, key, info, 16)
        assert ext.hkdf_extract(int(suite), key, b"ikm") == \
            hmac.digest(key or bytes(n), b"ikm", h.name)
    with pytest.raises(ValueError):
        ext.hkdf_expand_label(int(suite), secret, b"x" * 250, 16, b"")
    with pytest.raises(ValueError):
        ext.hkdf_expand_label(int(suite), secret, b"key", n + 1, b"")
    with pytest.raises(ValueError):
        ext.hkdf_expand_label(int(suite), secret, b"key", 16, b"c" * 256)
    with pytest.raises(ValueError):
        ext.hkdf_extract(0x1304, b"", b"")


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_quic_keys_in_one_call_equal_the_label_by_label_derivation(
    suite: CipherSuite, version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_native()
    secret = os.urandom(suite_hash_len(suite))
    use_engine(monkeypatch, True)
    native_keys = derive_packet_keys(suite, secret, version)
    native_state = NativeOffloadEngine()
    native_state.install(b"c", suite, secret, opener=True, version=version)
    state = native_state.key_state(b"c", opener=True)
    dcid = os.urandom(8)
    native_initial = initial_secrets(dcid, version)
    native_hp = derive_hp_key(suite, secret, version)
    use_engine(monkeypatch, False)
    python_keys = derive_packet_keys(suite, secret, version)
    assert native_keys == python_keys
    assert native_initial == initial_secrets(dcid, version)
    assert native_hp == python_keys.hp_key
    assert (python_keys.key, python_keys.iv) == derive_key_iv(suite, secret, version)
    assert python_keys.hp_key == derive_hp_key(suite, secret, version)
    ku = next_generation_secret(suite, secret, version)
    assert state.next.secret == ku and state.hp_key == python_keys.hp_key
    assert state.current.iv == int.from_bytes(python_keys.iv, "big")
    assert state.next.iv == int.from_bytes(derive_key_iv(suite, ku, version)[1], "big")
    # and packets sealed by the two engines are the same bytes
    soft = SoftwareOffloadEngine()
    soft.install(b"c", suite, secret, opener=False, version=version)
    native_state.install(b"c", suite, secret, opener=False, version=version)
    header = bytes([0x41]) + b"c" + b"\x00\x07"
    bufs = []
    for eng in (soft, native_state):
        buf = bytearray(header + bytes(range(40)) + bytes(16))
        eng.seal(buf, [(0, len(header), 40, 7, b"c")])
        bufs.append(bytes(buf))
    assert bufs[0] == bufs[1]


def server_steps_by_step(suite: CipherSuite, psk: bytes | None, shared: bytes,
                         transcript: bytes, sh_len: int, cert_len: int,
                         with_ticket: bool) -> list[bytes]:
    """What ``server_flight`` must give, one RFC 8446 step at a time (transcript hashes
    of prefixes, then each Derive-Secret / Finished MAC): ``transcript[:cert_len]`` is
    what it is given, ``transcript[cert_len:]`` the CertificateVerify its signer returns
    for the hash of the first part (none when the two are equal: resuming)."""
    ks = KeySchedule(suite, psk)
    ks.set_shared_secret(shared)
    c_hs, s_hs = ks.handshake_traffic(keyschedule.transcript_hash(suite, transcript[:sh_len]))
    server_fin = ks.finished_verify_data(s_hs, keyschedule.transcript_hash(suite, transcript))
    n = suite_hash_len(suite)
    with_sf = transcript + bytes((20, 0, 0, n)) + server_fin
    c_ap, s_ap = ks.application_traffic(keyschedule.transcript_hash(suite, with_sf))
    client_fin = ks.finished_verify_data(c_hs, keyschedule.transcript_hash(suite, with_sf))
    psk_out = b""
    if with_ticket:
        with_cf = with_sf + bytes((20, 0, 0, n)) + client_fin
        rms = ks.resumption_master(keyschedule.transcript_hash(suite, with_cf))
        psk_out = ks.ticket_psk(rms, b"\x00")
    return [ks.handshake_secret, ks.master_secret, c_hs, s_hs, transcript[cert_len:],
            server_fin, c_ap, s_ap, client_fin, psk_out]


def server_steps(suite: CipherSuite, psk: bytes | None, shared: bytes, transcript: bytes,
                 sh_len: int, cert_len: int, with_ticket: bool) -> list[bytes]:
    ks = KeySchedule(suite, psk)
    signed: list[bytes] = []

    def sign(h: bytes) -> bytes:
        signed.append(h)
        return transcript[cert_len:]

    out = ks.server_flight(shared, bytearray(transcript[:cert_len]), sh_len,
                           sign if cert_len < len(transcript) else None, with_ticket)
    # the signer saw the hash of what CertificateVerify signs (ClientHello..Certificate)
    assert signed == ([keyschedule.transcript_hash(suite, transcript[:cert_len])]
                      if cert_len < len(transcript) else [])
    return [ks.handshake_secret, ks.master_secret, *out]


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("with_psk", [False, True])
@pytest.mark.parametrize("with_ticket", [False, True])
def test_server_key_schedule_in_one_call_equals_the_steps(
    engine: bool, suite: CipherSuite, with_psk: bool, with_ticket: bool
) -> None:
    # the server's one call (one C call with the extension; QUICFLOW_ENGINE=python runs
    # the Python code) gives what the RFC 8446 steps one by one give, bit for bit
    n = suite_hash_len(suite)
    psk = os.urandom(n) if with_psk else None
    shared = os.urandom(32)
    transcript = os.urandom(1500)
    for sh_len, cert_len in ((300, 1200), (0, 0), (1500, 1500), (90, 91), (300, 300)):
        expected = server_steps_by_step(suite, psk, shared, transcript, sh_len, cert_len,
                                        with_ticket)
        got = server_steps(suite, psk, shared, transcript, sh_len, cert_len, with_ticket)
        assert got == expected
        assert (got[-1] == b"") == (not with_ticket)


def test_server_key_schedule_signer_errors_pass_through(engine: bool) -> None:
    # what the signer raises (an alert: no signature with that scheme) comes out as it
    # is; a signer that returns no bytes is refused by the C call
    ks = KeySchedule(CipherSuite.AES_128_GCM_SHA256)

    def refuse(h: bytes) -> bytes:
        raise TlsAlert(HANDSHAKE_FAILURE, "cannot sign")

    with pytest.raises(TlsAlert):
        ks.server_flight(bytes(32), bytearray(b"x" * 10), 5, refuse, True)


def test_server_key_schedule_rfc8448_secrets(engine: bool) -> None:
    # RFC 8448 §3: the handshake and master secrets from its (EC)DHE shared secret (they
    # do not depend on the transcript)
    ks = KeySchedule(CipherSuite.AES_128_GCM_SHA256)
    ks.server_flight(bytes.fromhex(
        "8bd4054fb55b9d63fdfbacf9f04b9f0d35e6d63f537563efd46272900f89492d"), b"x" * 10, 5,
        None, False)
    assert ks.handshake_secret.hex() == (
        "1dc826e93606aa6fdc0aadc12f741b01046aa6b99f691ed221a9f0ca043fbeac")
    assert ks.master_secret.hex() == (
        "18df06843d13a08bf2a449844c5f8a478001bc4d4c627984d5a41da8d0402919")


def test_native_server_key_schedule_rejects_bad_arguments() -> None:
    need_native()
    ext = EXT
    d = bytes(32)
    with pytest.raises(ValueError):
        ext.tls_server_flight(0x1301, d, d, b"abc", 4, None, True)  # sh_len past the end
    with pytest.raises(ValueError):
        ext.tls_server_flight(0x1301, d, d, b"abc", -1, None, True)
    with pytest.raises(ValueError):
        ext.tls_server_flight(0x1302, d, d, b"abc", 1, None, True)  # derived: SHA-256 length
    with pytest.raises(TypeError):
        ext.tls_server_flight(0x1301, d, d, b"abc", 1, 5, True)  # sign not callable
    with pytest.raises(TypeError):
        ext.tls_server_flight(0x1301, d, d, b"abc", 1, lambda h: "text", True)  # not bytes


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
def test_protector_for_secret_seals_like_the_protector_of_derived_keys(
    engine: bool, suite: CipherSuite, version: int
) -> None:
    # PacketProtector.for_secret (one C call with the extension: packet_key_context) is
    # PacketProtector(derive_packet_keys(...)): the same keys and the same packets
    secret = os.urandom(suite_hash_len(suite))
    fast = keys.PacketProtector.for_secret(suite, secret, version)
    ref = keys.PacketProtector(derive_packet_keys(suite, secret, version))
    assert fast.keys == ref.keys
    header = bytes([0xC3]) + b"\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x00\x40\x30" + \
        b"\x00\x00\x00\x05"
    payload = os.urandom(40)
    sealed = fast.seal(header, payload, 5)
    assert sealed == ref.seal(header, payload, 5)
    assert ref.open(sealed, len(header) - 4, 4)[1:] == (payload, 5)
    assert fast.next_generation().seal(header, payload, 6) == \
        ref.next_generation().seal(header, payload, 6)
    with pytest.raises(KeyError):
        keys.PacketProtector.for_secret(suite, secret, 0x0A0A0A0A)


@pytest.mark.parametrize("suite", SUITES)
def test_native_packet_key_context(suite: CipherSuite) -> None:
    need_native()
    ext = EXT
    secret = os.urandom(suite_hash_len(suite))
    for v2, version in ((False, QUIC_V1), (True, QUIC_V2)):
        kc = ext.packet_key_context(int(suite), secret, v2)
        ref = derive_packet_keys(suite, secret, version)
        assert kc.hp_key == ref.hp_key and kc.secret == secret
        assert kc.iv == int.from_bytes(ref.iv, "big")
        hp = os.urandom(len(ref.hp_key))
        assert ext.packet_key_context(int(suite), secret, v2, hp).hp_key == hp
    with pytest.raises(ValueError, match="header protection key"):
        ext.packet_key_context(int(suite), secret, False, b"short")
    with pytest.raises(ValueError, match="secret"):
        ext.packet_key_context(int(suite), secret[:-1], False)
    with pytest.raises(ValueError):
        ext.packet_key_context(0x1304, secret, False)
