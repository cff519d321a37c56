"""The TLS server's per-handshake fast paths give what the general code gives: the
ServerHello packed in one go, the key share made without the generic type checks, the
running transcript hash."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.crypto.suites import CipherSuite
from quicflow.tls.alerts import ILLEGAL_PARAMETER, TlsAlert
from quicflow.tls.config import TlsConfig
from quicflow.tls.core import HandshakeCore
from quicflow.tls.keyschedule import transcript_hash
from quicflow.tls.keyshare import generate_key, public_bytes, server_share, shared_secret
from quicflow.tls.messages import (
    EXT_KEY_SHARE,
    EXT_PRE_SHARED_KEY,
    EXT_SUPPORTED_VERSIONS,
    GROUP_SECP256R1,
    GROUP_X25519,
    ServerHello,
    decode_server_hello,
    encode_server_hello,
    ext_key_share_server,
)
from quicflow.tls.server import server_hello_bytes


@given(random=st.binary(min_size=32, max_size=32),
       suite=st.sampled_from([0x1301, 0x1302, 0x1303]),
       group=st.sampled_from([GROUP_X25519, GROUP_SECP256R1]),
       share=st.binary(min_size=1, max_size=97), psk=st.booleans())
def test_server_hello_bytes_match_the_encoder(random: bytes, suite: int, group: int,
                                              share: bytes, psk: bool) -> None:
    ext = [(EXT_SUPPORTED_VERSIONS, b"\x03\x04"),
           (EXT_KEY_SHARE, ext_key_share_server(group, share))]
    if psk:
        ext.append((EXT_PRE_SHARED_KEY, b"\x00\x00"))
    expected = encode_server_hello(ServerHello(random, b"", suite, ext))
    got = server_hello_bytes(random, suite, group, share, psk)
    assert got == expected
    assert decode_server_hello(got[4:]).ext_map[EXT_KEY_SHARE][4:] == share


@pytest.mark.parametrize("group", [GROUP_X25519, GROUP_SECP256R1])
def test_server_share_agrees_with_the_client(group: int) -> None:
    client = generate_key(group)
    ours, shared = server_share(group, public_bytes(client))
    assert shared == shared_secret(client, ours)
    again, _ = server_share(group, public_bytes(client))
    assert again != ours  # a fresh key every handshake (forward secrecy)


@pytest.mark.parametrize("group, share", [
    (GROUP_X25519, bytes(31)), (GROUP_X25519, bytes(33)),
    (GROUP_X25519, bytes(32)),  # the all-zero point: no shared secret (low order)
    (GROUP_SECP256R1, b"\x04" + bytes(64)), (GROUP_SECP256R1, bytes(65)),
])
def test_bad_shares_are_illegal_parameter(group: int, share: bytes) -> None:
    with pytest.raises(TlsAlert) as info:
        server_share(group, share)
    assert info.value.description == ILLEGAL_PARAMETER


@pytest.mark.parametrize("suite", [CipherSuite.AES_128_GCM_SHA256,
                                   CipherSuite.AES_256_GCM_SHA384])
def test_running_transcript_hash(suite: CipherSuite) -> None:
    core = HandshakeCore(TlsConfig(is_client=True, alpn_protocols=["x"]), b"")
    core.suite = suite
    pieces = [os.urandom(n) for n in (300, 0, 90, 1200, 36, 52)]
    for piece in pieces:
        core.transcript += piece
        assert core.thash() == transcript_hash(suite, bytes(core.transcript))
        assert core.thash() == transcript_hash(suite, bytes(core.transcript))
    core.transcript = bytearray(b"after a HelloRetryRequest")  # a new transcript object
    assert core.thash() == transcript_hash(suite, b"after a HelloRetryRequest")
    other = CipherSuite.AES_256_GCM_SHA384 if suite != CipherSuite.AES_256_GCM_SHA384 \
        else CipherSuite.AES_128_GCM_SHA256
    core.suite = other
    assert core.thash() == transcript_hash(other, b"after a HelloRetryRequest")


def _reference_server_name(data: bytes) -> str | None:
    """parse_server_name as it was, over the bounds-checked Reader."""
    from quicflow.tls.messages import DECODE_ERROR, Reader

    r = Reader(data)
    names = r.sub(2)
    host: str | None = None
    while not names.at_end():
        name_type = names.u8()
        name = names.vec(2)
        if name_type == 0 and host is None:
            try:
                host = name.decode("ascii")
            except UnicodeDecodeError as exc:
                raise TlsAlert(DECODE_ERROR, "server_name is not ASCII") from exc
    r.done()
    return host


def _reference_psk_modes(data: bytes) -> list[int]:
    from quicflow.tls.messages import DECODE_ERROR, Reader

    r = Reader(data)
    modes = list(r.vec(1))
    r.done()
    if not modes:
        raise TlsAlert(DECODE_ERROR, "empty psk_key_exchange_modes")
    return modes


def _outcome(parse: object, data: bytes) -> object:
    try:
        return ("ok", parse(data))  # type: ignore[operator]
    except TlsAlert as alert:
        return ("alert", alert.description, alert.message)


def _server_name_ext(draw: st.DrawFn) -> bytes:
    entries = b""
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.binary(max_size=20) | st.text("abc.-", max_size=20).map(str.encode))
        entries += bytes([draw(st.sampled_from([0, 0, 1]))]) + len(name).to_bytes(2, "big")
        entries += name
    body = len(entries).to_bytes(2, "big") + entries
    cut = draw(st.integers(0, len(body) + 2))
    return (body + draw(st.binary(max_size=2)))[:cut]


@given(st.composite(_server_name_ext)() | st.binary(max_size=40))
def test_server_name_parser_matches_the_reader(data: bytes) -> None:
    from quicflow.tls.messages import parse_server_name

    assert _outcome(parse_server_name, data) == _outcome(_reference_server_name, data)


@given(st.binary(max_size=6))
def test_psk_modes_parser_matches_the_reader(data: bytes) -> None:
    from quicflow.tls.tickets import parse_psk_modes

    assert _outcome(parse_psk_modes, data) == _outcome(_reference_psk_modes, data)


@given(lifetime=st.integers(0, 604800), age_add=st.integers(0, 0xFFFFFFFF),
       ticket=st.binary(min_size=1, max_size=400), early=st.booleans())
def test_new_session_ticket_bytes_match_the_encoder(lifetime: int, age_add: int,
                                                    ticket: bytes, early: bool) -> None:
    from quicflow.tls.server import new_session_ticket_bytes
    from quicflow.tls.tickets import (
        QUIC_MAX_EARLY_DATA,
        NewSessionTicket,
        decode_new_session_ticket,
        encode_new_session_ticket,
    )

    nst = NewSessionTicket(lifetime, age_add, b"\x00", ticket,
                           QUIC_MAX_EARLY_DATA if early else None)
    got = new_session_ticket_bytes(lifetime, age_add, ticket, early)
    assert got == encode_new_session_ticket(nst)
    assert decode_new_session_ticket(got[4:]) == nst
