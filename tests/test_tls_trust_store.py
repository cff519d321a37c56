"""Trust anchors are loaded once per CA file (as it is) or CA data, not per handshake:
the system bundle alone is ~150 certificates to parse (about 2 ms) for every connection
a verifying client made. A CA file that changes is read again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography import x509

from quicflow.tls import verify
from quicflow.tls.alerts import UNKNOWN_CA, TlsAlert
from quicflow.tls.certs import certificate_pem, generate_self_signed


def test_anchors_are_loaded_once_and_a_changed_ca_file_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_a, _ = generate_self_signed(["localhost"])
    cert_b, _ = generate_self_signed(["localhost"])
    loads: list[int] = []
    real = x509.load_pem_x509_certificates

    def counting(data: bytes) -> list[x509.Certificate]:
        loads.append(len(data))
        return real(data)

    monkeypatch.setattr(x509, "load_pem_x509_certificates", counting)
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(certificate_pem(cert_a))
    for _ in range(3):  # three handshakes' worth of verification
        verify.verify_chain([cert_a], "localhost", str(cafile), None)
    assert len(loads) == 1
    pem_a = certificate_pem(cert_a)
    for _ in range(2):
        verify.verify_chain([cert_a], "localhost", None, pem_a)
    assert len(loads) == 2  # the CA data is its own key

    cafile.write_bytes(certificate_pem(cert_b) + b"\n")  # another CA (and size)
    os.utime(cafile, ns=(1, 1))
    with pytest.raises(TlsAlert) as raised:
        verify.verify_chain([cert_a], "localhost", str(cafile), None)
    assert raised.value.description == UNKNOWN_CA, raised.value
    assert len(loads) == 3
    verify.verify_chain([cert_b], "localhost", str(cafile), None)  # the new anchor
    assert len(loads) == 3


def test_a_missing_ca_file_fails_every_time(tmp_path: Path) -> None:
    cert, _ = generate_self_signed(["localhost"])
    for _ in range(2):
        with pytest.raises(TlsAlert) as raised:
            verify.verify_chain([cert], "localhost", str(tmp_path / "absent.pem"), None)
        assert "cannot load trust anchors" in str(raised.value)
