"""Malformed input only ever raises TlsAlert."""

from __future__ import annotations

from functools import cache

from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.tls import (
    PrivateKey,
    TlsAlert,
    TlsConfig,
    TlsSession,
    certificate_pem,
    generate_self_signed,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def cert() -> tuple[x509.Certificate, PrivateKey]:
    return generate_self_signed(["localhost"])


def server() -> TlsSession:
    c, k = cert()
    cfg = TlsConfig(is_client=False, alpn_protocols=["perf"], certificate_chain=[c], private_key=k)
    return TlsSession(cfg, b"stp")


def client() -> TlsSession:
    cfg = TlsConfig(
        is_client=True,
        alpn_protocols=["perf"],
        server_name="localhost",
        cadata=certificate_pem(cert()[0]),
    )
    session = TlsSession(cfg, b"ctp")
    session.start()
    return session


@cache
def recorded() -> tuple[bytes, bytes, bytes]:
    """A real (ClientHello, ServerHello, server handshake flight)."""
    c, s = client(), server()
    ((_, ch),) = c.pop_output()
    s.receive(Epoch.INITIAL, ch)
    (_, sh), (_, flight) = s.pop_output()
    return ch, sh, flight


def feed(session: TlsSession, epoch: Epoch, data: bytes) -> None:
    try:
        session.receive(epoch, data)
    except TlsAlert:
        pass  # the only acceptable failure


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_to_server(data: bytes) -> None:
    feed(server(), Epoch.INITIAL, data)


@FUZZ
@given(st.binary(max_size=300))
def test_random_message_bodies_to_server(body: bytes) -> None:
    """Well-framed ClientHello messages with random bodies reach the parser."""
    feed(server(), Epoch.INITIAL, b"\x01" + len(body).to_bytes(3, "big") + body)


@FUZZ
@given(st.data())
def test_mutated_client_hello(data: st.DataObject) -> None:
    ch = bytearray(recorded()[0])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(ch) - 1))
        ch[pos] = data.draw(st.integers(0, 255))
    feed(server(), Epoch.INITIAL, bytes(ch))


@FUZZ
@given(st.data())
def test_mutated_server_flight(data: st.DataObject) -> None:
    _, sh, flight = recorded()
    which = data.draw(st.sampled_from(["sh", "flight"]))
    target = bytearray(sh if which == "sh" else flight)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(target) - 1))
        target[pos] = data.draw(st.integers(0, 255))
    session = client()
    session.pop_output()
    # the recorded flight belongs to another client's key share: after ServerHello the
    # flight cannot verify, which must also surface as a TlsAlert
    feed(session, Epoch.INITIAL, bytes(target) if which == "sh" else sh)
    feed(session, Epoch.HANDSHAKE, bytes(target) if which == "flight" else flight)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(list(Epoch)))
def test_random_bytes_to_client_any_epoch(data: bytes, epoch: Epoch) -> None:
    feed(client(), epoch, data)
