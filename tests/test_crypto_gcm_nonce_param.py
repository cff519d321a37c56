"""The native engine's AES-GCM per-packet set-up through OpenSSL 3 parameters.

The C engine sets each packet's AES-GCM nonce (and, to open, the tag) with one
EVP_CIPHER_CTX_set_params call and reads a seal's tag with a prepared parameter, instead
of a cipher re-init and two ctrl calls (native.h, kc_aead_nonce). These tests check that
both ways give the bytes of the Python engine, the reference, and that a wrong tag still
fails, is counted and leaves the context fit for the next packet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from quicflow.crypto import CipherSuite, SoftwareOffloadEngine, native, suite_hash_len
from quicflow.crypto.native import NativeOffloadEngine
from tests.support.prereq import require

CID = bytes.fromhex("8394c8f03e515708")


@pytest.fixture(autouse=True)
def _native() -> None:
    require(
        native.available(), f"native crypto extension not built ({native.unavailable_reason()})"
    )


def _ext() -> object:
    from quicflow.crypto import _native  # type: ignore[attr-defined]

    return _native


@pytest.fixture(params=[True, False], ids=["param", "init"])
def path(request: pytest.FixtureRequest) -> Iterator[bool]:
    ext = _ext()
    before = ext._gcm_nonce_param(request.param)  # type: ignore[attr-defined]
    yield request.param
    ext._gcm_nonce_param(before)  # type: ignore[attr-defined]


def test_openssl3_takes_the_gcm_nonce_as_a_parameter() -> None:
    ext = _ext()
    require(
        ext.OPENSSL_VERSION.startswith("OpenSSL 3"),  # type: ignore[attr-defined]
        "OpenSSL 3 (the parameter path) needed",
    )
    assert ext.GCM_NONCE_PARAM == 1  # type: ignore[attr-defined]


def _datagram(
    sizes: list[int], start: int
) -> tuple[bytearray, list[tuple[int, int, int, int, bytes]]]:
    buf = bytearray()
    descs = []
    for i, size in enumerate(sizes):
        pn = start + i
        header = bytes((0x41,)) + CID + (pn & 0xFFFF).to_bytes(2, "big")
        descs.append((len(buf), len(header), size, pn, CID))
        buf += header + os.urandom(size) + bytes(16)
    return buf, descs


@pytest.mark.parametrize("suite", list(CipherSuite))
def test_both_paths_seal_and_open_like_python(path: bool, suite: CipherSuite) -> None:
    secret = bytes(range(suite_hash_len(suite)))
    sizes = [4, 17, 1150, 300, 1150, 64, 1150, 5]
    buf, descs = _datagram(sizes, 1000)
    sw, nat = SoftwareOffloadEngine(), NativeOffloadEngine()
    for engine in (sw, nat):
        engine.install(CID, suite, secret, opener=False)
    sealed_sw, sealed_nat = bytearray(buf), bytearray(buf)
    sw.seal(sealed_sw, descs)
    nat.seal(sealed_nat, descs)
    assert sealed_nat == sealed_sw

    # a wrong tag on the fourth packet: it fails and is counted, the rest open
    bad = descs[3]
    sealed_sw[bad[0] + bad[1] + bad[2] + 7] ^= 0x40
    opens = [(off, hl + pl + 16, cid) for off, hl, pl, _pn, cid in descs]
    rx_sw, rx_nat = SoftwareOffloadEngine(), NativeOffloadEngine()
    for engine in (rx_sw, rx_nat):
        engine.install(CID, suite, secret, opener=True, largest_pn=999)
    res_sw = rx_sw.open(bytes(sealed_sw), opens)
    res_nat = rx_nat.open(bytes(sealed_sw), opens)
    assert res_nat == res_sw
    assert [r is None for r in res_nat] == [i == 3 for i in range(len(sizes))]
    assert [r.payload for r in res_nat if r] == [
        bytes(buf[off + hl : off + hl + pl])
        for i, (off, hl, pl, _pn, _c) in enumerate(descs)
        if i != 3
    ]
    assert (rx_nat.opened, rx_nat.open_failures) == (rx_sw.opened, rx_sw.open_failures) == (7, 1)
