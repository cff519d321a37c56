"""Our TLS client against our TLS server, in memory."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.suites import CipherSuite
from quicflow.tls import (
    PrivateKey,
    TlsAlert,
    TlsConfig,
    TlsSession,
    certificate_pem,
    generate_ca,
    generate_self_signed,
    issue_certificate,
)

CLIENT_TP = b"\x01\x02client-tp"
SERVER_TP = b"\x03\x04server-tp"


@pytest.fixture(scope="module")
def ec_cert() -> tuple[x509.Certificate, PrivateKey]:
    return generate_self_signed(["localhost", "127.0.0.1"], "ec")


def make_pair(
    cert: x509.Certificate,
    key: PrivateKey,
    *,
    chain: list[x509.Certificate] | None = None,
    cadata: bytes | None = None,
    server_name: str = "localhost",
    client_kw: dict[str, object] | None = None,
    server_kw: dict[str, object] | None = None,
) -> tuple[TlsSession, TlsSession]:
    client_cfg = TlsConfig(
        is_client=True,
        alpn_protocols=["perf", "hq-interop"],
        server_name=server_name,
        cadata=cadata if cadata is not None else certificate_pem(cert),
        **(client_kw or {}),  # type: ignore[arg-type]
    )
    server_cfg = TlsConfig(
        is_client=False,
        alpn_protocols=["hq-interop", "perf"],
        certificate_chain=chain or [cert],
        private_key=key,
        **(server_kw or {}),  # type: ignore[arg-type]
    )
    return TlsSession(client_cfg, CLIENT_TP), TlsSession(server_cfg, SERVER_TP)


def shuttle(a: TlsSession, b: TlsSession, *, chunk: int | None = None) -> int:
    """Move output both ways until quiet; returns the number of flights moved."""
    flights = 0
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for epoch, data in src.pop_output():
                moved = True
                if chunk is None:
                    dst.receive(epoch, data)
                else:
                    for i in range(0, len(data), chunk):
                        dst.receive(epoch, data[i : i + chunk])
            if moved:
                flights += 1
        if not moved:
            return flights


def handshake(client: TlsSession, server: TlsSession, chunk: int | None = None) -> None:
    client.start()
    server.start()
    shuttle(client, server, chunk=chunk)


def secret_map(session: TlsSession) -> dict[tuple[Epoch, bool], tuple[CipherSuite, bytes]]:
    return {(e, send): (suite, secret) for e, send, suite, secret in session.pop_secrets()}


def check_complete(client: TlsSession, server: TlsSession, suite: CipherSuite) -> None:
    assert client.handshake_complete and server.handshake_complete
    assert client.alpn_protocol == server.alpn_protocol == "hq-interop"
    assert client.peer_transport_parameters == SERVER_TP
    assert server.peer_transport_parameters == CLIENT_TP
    assert client.cipher_suite == server.cipher_suite == suite
    cs, ss = secret_map(client), secret_map(server)
    assert len(cs) == len(ss) == 4
    for epoch in (Epoch.HANDSHAKE, Epoch.ONE_RTT):
        assert cs[(epoch, True)] == ss[(epoch, False)]
        assert cs[(epoch, False)] == ss[(epoch, True)]
        assert cs[(epoch, True)][1] != cs[(epoch, False)][1]
        assert len(cs[(epoch, True)][1]) == (48 if suite == CipherSuite.AES_256_GCM_SHA384 else 32)
        assert cs[(epoch, True)][0] == suite


@pytest.mark.parametrize("suite", list(CipherSuite))
def test_each_cipher_suite(
    ec_cert: tuple[x509.Certificate, PrivateKey], suite: CipherSuite
) -> None:
    client, server = make_pair(*ec_cert, client_kw={"cipher_suites": [suite]})
    handshake(client, server)
    check_complete(client, server, suite)
    assert client.peer_certificates == [ec_cert[0]]
    # the DER kept is the certificate as sent (what a connection stores and snapshots)
    assert client.peer_certificate_ders == [ec_cert[0].public_bytes(Encoding.DER)]
    assert server.peer_certificate_ders == []


def test_server_preference_wins(ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = make_pair(
        *ec_cert,
        client_kw={
            "cipher_suites": [CipherSuite.AES_128_GCM_SHA256, CipherSuite.AES_256_GCM_SHA384]
        },
        server_kw={
            "cipher_suites": [CipherSuite.CHACHA20_POLY1305_SHA256, CipherSuite.AES_256_GCM_SHA384]
        },
    )
    handshake(client, server)
    check_complete(client, server, CipherSuite.AES_256_GCM_SHA384)


@pytest.mark.parametrize("group", ["x25519", "secp256r1"])
def test_each_group(ec_cert: tuple[x509.Certificate, PrivateKey], group: str) -> None:
    client, server = make_pair(
        *ec_cert, client_kw={"groups": [group]}, server_kw={"groups": [group]}
    )
    handshake(client, server)
    check_complete(client, server, CipherSuite.AES_128_GCM_SHA256)


@pytest.mark.parametrize("key_type", ["ec", "ed25519", "rsa"])
def test_each_certificate_key_type(key_type: str) -> None:
    cert, key = generate_self_signed(["localhost"], key_type)  # type: ignore[arg-type]
    client, server = make_pair(cert, key)
    handshake(client, server)
    check_complete(client, server, CipherSuite.AES_128_GCM_SHA256)


def test_ca_issued_chain_with_intermediate_order() -> None:
    ca, ca_key = generate_ca()
    leaf, key = issue_certificate(ca, ca_key, ["example.test"], "rsa")
    client, server = make_pair(leaf, key, cadata=certificate_pem(ca), server_name="example.test")
    handshake(client, server)
    check_complete(client, server, CipherSuite.AES_128_GCM_SHA256)


def test_ip_address_server_name(ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = make_pair(*ec_cert, server_name="127.0.0.1")
    handshake(client, server)
    check_complete(client, server, CipherSuite.AES_128_GCM_SHA256)


def test_hello_retry_request(ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = make_pair(
        *ec_cert,
        client_kw={"groups": ["x25519", "secp256r1"]},
        server_kw={"groups": ["secp256r1"]},
    )
    client.start()
    ((epoch, ch1),) = client.pop_output()
    server.receive(epoch, ch1)
    ((epoch, hrr),) = server.pop_output()
    assert epoch == Epoch.INITIAL
    assert hrr[6:38] == bytes.fromhex(
        "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c"
    )
    assert server.pop_secrets() == []
    client.receive(epoch, hrr)
    ((epoch, ch2),) = client.pop_output()
    assert epoch == Epoch.INITIAL and ch2 != ch1
    server.receive(epoch, ch2)
    shuttle(client, server)
    check_complete(client, server, CipherSuite.AES_128_GCM_SHA256)


def test_byte_by_byte_delivery(ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = make_pair(*ec_cert)
    handshake(client, server, chunk=1)
    check_complete(client, server, CipherSuite.AES_128_GCM_SHA256)


def test_output_epochs_and_secret_timing(ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client2, server2 = make_pair(*ec_cert)
    client2.start()
    out = client2.pop_output()
    assert [e for e, _ in out] == [Epoch.INITIAL]
    assert client2.pop_secrets() == []
    for epoch, data in out:
        server2.receive(epoch, data)
    server_out = server2.pop_output()
    assert [e for e, _ in server_out] == [Epoch.INITIAL, Epoch.HANDSHAKE]
    # server: handshake secrets and (as RFC 9001 allows) 1-RTT secrets before client Finished
    assert [(e, s) for e, s, _, _ in server2.pop_secrets()] == [
        (Epoch.HANDSHAKE, False),
        (Epoch.HANDSHAKE, True),
        (Epoch.ONE_RTT, False),
        (Epoch.ONE_RTT, True),
    ]
    assert not server2.handshake_complete
    client2.receive(*server_out[0])
    assert [(e, s) for e, s, _, _ in client2.pop_secrets()] == [
        (Epoch.HANDSHAKE, True),
        (Epoch.HANDSHAKE, False),
    ]
    assert not client2.handshake_complete
    client2.receive(*server_out[1])
    assert client2.handshake_complete
    assert [(e, s) for e, s, _, _ in client2.pop_secrets()] == [
        (Epoch.ONE_RTT, True),
        (Epoch.ONE_RTT, False),
    ]
    ((epoch, fin),) = client2.pop_output()
    assert epoch == Epoch.HANDSHAKE
    server2.receive(epoch, fin)
    assert server2.handshake_complete


def test_keylog(tmp_path: object, ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "keys.log"
    client, server = make_pair(*ec_cert, client_kw={"keylog_file": str(path)})
    handshake(client, server)
    lines = path.read_text().splitlines()
    labels = [line.split()[0] for line in lines]
    assert labels == [
        "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        "SERVER_HANDSHAKE_TRAFFIC_SECRET",
        "CLIENT_TRAFFIC_SECRET_0",
        "SERVER_TRAFFIC_SECRET_0",
    ]
    secrets = secret_map(client)
    assert lines[0].split()[2] == secrets[(Epoch.HANDSHAKE, True)][1].hex()
    assert lines[3].split()[2] == secrets[(Epoch.ONE_RTT, False)][1].hex()
    assert len({line.split()[1] for line in lines}) == 1  # one client random


def test_verify_peer_false_accepts_unknown_certificate(
    ec_cert: tuple[x509.Certificate, PrivateKey],
) -> None:
    other, _ = generate_self_signed(["elsewhere"])
    client, server = make_pair(
        *ec_cert,
        cadata=certificate_pem(other),
        server_name="wrong.example",
        client_kw={"verify_peer": False},
    )
    handshake(client, server)
    check_complete(client, server, CipherSuite.AES_128_GCM_SHA256)


def test_server_name_seen_by_server(ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    client, server = make_pair(*ec_cert)
    handshake(client, server)
    assert server.server_name == "localhost"


def test_config_requires_alpn() -> None:
    with pytest.raises(ValueError, match="alpn"):
        TlsSession(TlsConfig(is_client=True, server_name="x"), b"")


def test_error_in_handshake_is_sticky(ec_cert: tuple[x509.Certificate, PrivateKey]) -> None:
    _, server = make_pair(*ec_cert)
    with pytest.raises(TlsAlert) as first:
        server.receive(Epoch.INITIAL, b"\x01\x00\x00\x02\x03\x03")
    assert first.value.description == 50
    with pytest.raises(TlsAlert):
        server.receive(Epoch.INITIAL, b"")
