"""Session resumption and 0-RTT in our TLS client and server, in memory (RFC 8446 §4.2.9-
§4.2.11, §4.6.1; RFC 9001 §4.6): tickets sealed with the ticket key, the PSK binder, the
early traffic secret both sides derive, what the server refuses, and hypothesis for the
new parsers."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.suites import CipherSuite
from quicflow.tls import (
    PrivateKey,
    TlsAlert,
    TlsConfig,
    TlsSession,
    certificate_pem,
    generate_ca,
    issue_certificate,
)
from quicflow.tls.messages import CLIENT_HELLO
from quicflow.tls.tickets import (
    NewSessionTicket,
    SessionTicket,
    SessionTicketCache,
    StrikeRegister,
    TicketContents,
    decode_new_session_ticket,
    encode_new_session_ticket,
    encode_offered_psks,
    parse_offered_psks,
    ticket_sealer,
)

Pki = tuple[x509.Certificate, x509.Certificate, PrivateKey]
KEY = b"k" * 32
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def pki() -> Pki:
    ca, ca_key = generate_ca("quicflow resumption test CA")
    cert, key = issue_certificate(ca, ca_key, ["localhost"])
    return ca, cert, key


def pair(pki: Pki, ticket: SessionTicket | None = None, *, key: bytes = KEY,
         early: bool = True, server_early: bool = True, hook: bool = True,
         groups: list[str] | None = None, server_groups: list[str] | None = None,
         ) -> tuple[TlsSession, TlsSession]:
    ca, cert, pkey = pki
    client = TlsSession(TlsConfig(
        is_client=True, alpn_protocols=["perf"], server_name="localhost",
        cadata=certificate_pem(ca), session_ticket=ticket, early_data=early,
        groups=groups or ["x25519", "secp256r1"]), b"client-tp")
    server = TlsSession(TlsConfig(
        is_client=False, alpn_protocols=["perf"], certificate_chain=[cert], private_key=pkey,
        ticket_sealer=ticket_sealer(key), early_data=server_early,
        groups=server_groups or ["x25519", "secp256r1"]), b"server-tp")
    server.on_early_data(lambda t: hook)
    return client, server


def run(client: TlsSession, server: TlsSession, now: float = T0) -> dict[str, list[bytes]]:
    """Run the handshake (and the ticket) to the end; returns the secrets by side."""
    client.set_wall_time(now)
    server.set_wall_time(now)
    client.start()
    secrets: dict[str, list[bytes]] = {}
    while True:
        moved = False
        for name, src, dst in (("c", client, server), ("s", server, client)):
            for epoch, is_send, _, secret in src.pop_secrets():
                secrets.setdefault(f"{name}{int(epoch)}{'s' if is_send else 'r'}", []).append(
                    secret)
            for epoch, data in src.pop_output():
                moved = True
                dst.receive(epoch, data)
        if not moved:
            return secrets


def first_ticket(pki: Pki, **kw: object) -> SessionTicket:
    client, server = pair(pki, **kw)  # type: ignore[arg-type]
    run(client, server)
    assert client.handshake_complete and not client.session_resumed
    tickets = client.pop_tickets()
    assert len(tickets) == 1
    return tickets[0]


def test_ticket_resumes_with_early_data(pki: Pki) -> None:
    ticket = first_ticket(pki)
    assert ticket.max_early_data == 0xFFFFFFFF and ticket.transport_parameters == b"server-tp"
    assert ticket.server_name == "localhost" and ticket.alpn == "perf"
    client, server = pair(pki, ticket)
    secrets = run(client, server, T0 + 5)
    assert client.session_resumed and server.session_resumed
    assert client.early_data_status is True and server.early_data_status is True
    # both derived the same client_early_traffic_secret (0-RTT keys) and 1-RTT secrets
    assert secrets["c1s"] == secrets["s1r"]
    assert secrets["c3s"] == secrets["s3r"] and secrets["s3s"] == secrets["c3r"]
    assert client.peer_certificates == []  # no certificate in a resumed handshake
    # the resumed connection gets a ticket of its own
    assert len(client.pop_tickets()) == 1


def test_ticket_survives_a_stored_round_trip(pki: Pki) -> None:
    ticket = first_ticket(pki)
    again = SessionTicket.from_bytes(ticket.to_bytes())
    assert again == ticket
    with pytest.raises(ValueError):
        SessionTicket.from_bytes(ticket.to_bytes()[:-3])


def test_server_rejects_early_data_but_resumes(pki: Pki) -> None:
    ticket = first_ticket(pki)
    client, server = pair(pki, ticket, hook=False)
    secrets = run(client, server, T0 + 1)
    assert client.session_resumed and server.session_resumed
    assert client.early_data_status is False and server.early_data_status is False
    assert "c1s" in secrets and "s1r" not in secrets  # the server installed no 0-RTT keys
    assert client.handshake_complete and server.handshake_complete


def test_no_early_data_offered(pki: Pki) -> None:
    ticket = first_ticket(pki)
    client, server = pair(pki, ticket, early=False)
    secrets = run(client, server, T0 + 1)
    assert client.session_resumed and client.early_data_status is None
    assert "c1s" not in secrets


def test_ticket_without_early_data_when_the_server_disallows(pki: Pki) -> None:
    ticket = first_ticket(pki, server_early=False)
    assert ticket.max_early_data == 0
    client, server = pair(pki, ticket)
    secrets = run(client, server, T0 + 1)
    assert client.session_resumed and client.early_data_status is None and "c1s" not in secrets


def test_other_key_or_expired_or_stale_age_means_full_handshake(pki: Pki) -> None:
    ticket = first_ticket(pki)
    client, server = pair(pki, ticket, key=b"another key")
    run(client, server, T0 + 1)
    assert client.handshake_complete and not client.session_resumed
    assert client.peer_certificates  # a full handshake: the certificate came
    assert client.early_data_status is False
    # a ticket past its lifetime is not even offered
    client, server = pair(pki, ticket)
    run(client, server, T0 + 86400 + 10)
    assert client.handshake_complete and not client.session_resumed
    assert client.early_data_status is None
    # the client's ticket age disagrees with the server's by more than the window: the
    # session resumes, its 0-RTT is refused (RFC 8446 §8.3)
    skewed = dataclasses.replace(ticket, received_at=ticket.received_at + 30)
    client, server = pair(pki, skewed)
    run(client, server, T0 + 40)
    assert client.session_resumed and client.early_data_status is False


def test_bad_binder_is_fatal(pki: Pki) -> None:
    ticket = first_ticket(pki)
    client, server = pair(pki, ticket)
    client.set_wall_time(T0 + 1)
    server.set_wall_time(T0 + 1)
    client.start()
    [(epoch, hello)] = client.pop_output()
    assert hello[0] == CLIENT_HELLO
    tampered = hello[:-1] + bytes([hello[-1] ^ 1])  # the binder is the last byte
    with pytest.raises(TlsAlert) as info:
        server.receive(epoch, tampered)
    assert info.value.description == 51  # decrypt_error


def test_hello_retry_request_rejects_early_data(pki: Pki) -> None:
    # the client's first key share is one the server does not take: HRR, then the PSK
    # is offered again with a new binder, without early data (RFC 8446 §4.2.10)
    ticket = first_ticket(pki)
    client, server = pair(pki, ticket, groups=["x25519", "secp256r1"],
                          server_groups=["secp256r1"])
    secrets = run(client, server, T0 + 1)
    assert client.handshake_complete and server.handshake_complete
    assert client.session_resumed and server.session_resumed
    assert client.early_data_status is False and server.early_data_status is None
    assert "s1r" not in secrets


def test_psk_suite_must_be_offered(pki: Pki) -> None:
    ticket = first_ticket(pki)
    assert ticket.suite == CipherSuite.AES_128_GCM_SHA256
    ca, cert, pkey = pki
    client = TlsSession(TlsConfig(
        is_client=True, alpn_protocols=["perf"], server_name="localhost",
        cadata=certificate_pem(ca), session_ticket=ticket,
        cipher_suites=[CipherSuite.AES_256_GCM_SHA384]), b"c")
    server = pair(pki)[1]
    run(client, server, T0 + 1)
    assert client.handshake_complete and not client.session_resumed


def test_new_session_ticket_rejects_other_early_data_sizes(pki: Pki) -> None:
    client, server = pair(pki)
    run(client, server)
    client.pop_tickets()
    bad = encode_new_session_ticket(NewSessionTicket(100, 1, b"\x01", b"t" * 40, 1024))
    with pytest.raises(TlsAlert) as info:
        client.receive(Epoch.ONE_RTT, bad)
    assert info.value.quic_error_code == 0x0A  # PROTOCOL_VIOLATION (RFC 9001 §4.6.1)


def test_strike_register_admits_once_and_forgets() -> None:
    reg = StrikeRegister(window=10.0, max_entries=2)
    assert reg.admit(b"a", 100.0)
    assert not reg.admit(b"a", 101.0)  # a replay
    assert reg.admit(b"b", 101.0)
    assert not reg.admit(b"c", 102.0)  # full: refused, never grows
    assert len(reg) == 2 and reg.refused_full == 1 and reg.refused_replay == 1
    assert reg.admit(b"c", 121.0)  # a and b expired after 2 windows
    assert len(reg) == 1


def test_ticket_cache_hands_out_each_ticket_once(pki: Pki) -> None:
    ticket = first_ticket(pki)
    cache = SessionTicketCache(per_server=2)
    cache.put("localhost:4433", ticket)
    assert cache.take("localhost:4433") is ticket
    assert cache.take("localhost:4433") is None


def test_sealed_ticket_round_trip_and_tamper() -> None:
    sealer = ticket_sealer(KEY)
    contents = TicketContents(T0, 3600, 7, 0xFFFFFFFF, 0x1301, b"p" * 32, "h3", "example.com",
                              b"tp")
    blob = sealer.seal(contents)
    opened = sealer.open(blob, T0 + 10)
    assert opened is not None and opened.ticket_id == blob[:12]  # the anti-replay key
    assert dataclasses.replace(opened, ticket_id=b"") == contents
    assert len(blob) < 160  # small: clients have little room in a ClientHello
    assert sealer.open(blob, T0 + 3601) is None  # expired
    assert sealer.open(blob[:-1] + bytes([blob[-1] ^ 1]), T0) is None
    assert ticket_sealer(b"other").open(blob, T0) is None


# ---------------------------------------------------------------- parsers (hypothesis)


@given(st.binary(max_size=300))
def test_new_session_ticket_parser_never_crashes(data: bytes) -> None:
    try:
        decode_new_session_ticket(data)
    except TlsAlert as exc:
        assert exc.description in (47, 50)  # illegal_parameter / decode_error


@given(st.integers(0, 7 * 86400), st.integers(0, 2**32 - 1), st.binary(max_size=255),
       st.binary(min_size=1, max_size=500), st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_new_session_ticket_round_trip(lifetime: int, age_add: int, nonce: bytes,
                                       ticket: bytes, early: int | None) -> None:
    nst = NewSessionTicket(lifetime, age_add, nonce, ticket, early)
    assert decode_new_session_ticket(encode_new_session_ticket(nst)[4:]) == nst


@given(st.binary(max_size=300))
def test_pre_shared_key_parser_never_crashes(data: bytes) -> None:
    try:
        parse_offered_psks(data)
    except TlsAlert as exc:
        assert exc.description in (47, 50)


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=100), st.integers(0, 2**32 - 1)),
                min_size=1, max_size=4),
       st.data())
def test_pre_shared_key_round_trip(identities: list[tuple[bytes, int]], data: st.DataObject
                                   ) -> None:
    binders = [data.draw(st.binary(min_size=32, max_size=48)) for _ in identities]
    encoded = encode_offered_psks(identities, binders)
    offered = parse_offered_psks(encoded)
    assert offered.identities == identities and offered.binders == binders
    assert offered.binders_len == 2 + sum(1 + len(b) for b in binders)


@given(st.binary(max_size=64))
def test_stored_ticket_parser_raises_only_value_error(data: bytes) -> None:
    try:
        SessionTicket.from_bytes(data)
    except ValueError:
        pass


def test_every_ticket_has_its_own_random_age_add_and_nonce(pki: Pki) -> None:
    # age_add and the sealing nonce (the ticket's anti-replay id) come from the same OS
    # draw as the ServerHello random: fresh per handshake, never shared between tickets
    tickets = [first_ticket(pki) for _ in range(4)]
    assert len({t.age_add for t in tickets}) == 4
    assert len({t.ticket[:12] for t in tickets}) == 4
    assert len({t.psk for t in tickets}) == 4
