"""The TLS server's per-handshake fast paths give what the general code gives: the
ServerHello and EncryptedExtensions packed in one go, the key share made without the
generic type checks, the running transcript hash, the ticket plaintext written from its
fields, the signer bound to the key once."""

from __future__ import annotations

import os
import struct
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
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
from tests.support.prereq import require


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


@given(alpn=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                   max_size=20),
       tp=st.binary(max_size=600), early=st.booleans())
def test_encrypted_extensions_bytes_match_the_encoder(alpn: str, tp: bytes,
                                                      early: bool) -> None:
    import struct

    from quicflow.tls.messages import (
        EXT_ALPN,
        EXT_EARLY_DATA,
        EXT_QUIC_TRANSPORT_PARAMETERS,
        decode_encrypted_extensions,
        encode_encrypted_extensions,
        ext_alpn,
        parse_alpn,
    )
    from quicflow.tls.server import encrypted_extensions_bytes

    ext = [(EXT_ALPN, ext_alpn([alpn])), (EXT_QUIC_TRANSPORT_PARAMETERS, tp)]
    if early:
        ext.append((EXT_EARLY_DATA, b""))
    body = ext_alpn([alpn])
    got = encrypted_extensions_bytes(struct.pack("!HH", EXT_ALPN, len(body)) + body, tp,
                                     early)
    assert got == encode_encrypted_extensions(ext)
    decoded = decode_encrypted_extensions(got[4:])
    assert parse_alpn(decoded[EXT_ALPN]) == [alpn]
    assert decoded[EXT_QUIC_TRANSPORT_PARAMETERS] == tp
    assert (EXT_EARLY_DATA in decoded) == early


@given(issued_at=st.floats(0, 4e9), lifetime=st.integers(1, 604800),
       age_add=st.integers(0, 0xFFFFFFFF), early=st.booleans(),
       suite=st.sampled_from([0x1301, 0x1302, 0x1303]), psk=st.binary(max_size=48),
       alpn=st.text(max_size=20), sni=st.text(max_size=40), tp=st.binary(max_size=300))
def test_ticket_plaintext_round_trips(issued_at: float, lifetime: int, age_add: int,
                                      early: bool, suite: int, psk: bytes, alpn: str,
                                      sni: str, tp: bytes) -> None:
    from quicflow.tls.tickets import TicketContents, encode_ticket

    max_early = 0xFFFFFFFF if early else 0
    plain = encode_ticket(issued_at, lifetime, age_add, max_early, suite, psk, alpn, sni, tp)
    got = TicketContents.decode(plain)
    assert (got.lifetime, got.age_add, got.max_early_data, got.suite, got.psk, got.alpn,
            got.server_name, got.transport_parameters) == (
        lifetime, age_add, max_early, suite, psk, alpn, sni, tp)
    assert got.issued_at == int(issued_at * 1000) / 1000
    assert TicketContents(issued_at, lifetime, age_add, max_early, suite, psk, alpn, sni,
                          tp).encode() == plain


@pytest.mark.parametrize("key_type", ["ec", "ed25519", "rsa"])
def test_signer_for_key_signs_like_sign(key_type: str) -> None:
    from quicflow.tls.alerts import HANDSHAKE_FAILURE
    from quicflow.tls.certs import generate_self_signed
    from quicflow.tls.verify import (
        SERVER_CONTEXT,
        certificate_verify_content,
        signature_algorithms_for_key,
        signer_for_key,
        verify_signature,
    )

    cert, key = generate_self_signed(["localhost"], key_type)  # type: ignore[arg-type]
    signer = signer_for_key(key)
    content = certificate_verify_content(SERVER_CONTEXT, os.urandom(32))
    for scheme in signature_algorithms_for_key(key):
        signature = signer(scheme, content)
        if key_type == "ed25519":  # (deterministic: the very bytes of sign())
            from quicflow.tls.verify import sign
            assert signature == sign(key, scheme, content)
        verify_signature(cert, scheme, signature, content)  # raises if it does not verify
    with pytest.raises(TlsAlert) as err:
        signer(0x0807 if key_type != "ed25519" else 0x0403, content)
    assert err.value.description == HANDSHAKE_FAILURE


@given(algorithm=st.integers(0, 0xFFFF), signature=st.binary(max_size=600))
def test_certificate_verify_packed_in_one_go(algorithm: int, signature: bytes) -> None:
    import struct

    from quicflow.tls.messages import (
        CERTIFICATE_VERIFY,
        decode_certificate_verify,
        encode_certificate_verify,
        handshake,
        vec,
    )

    got = encode_certificate_verify(algorithm, signature)
    assert got == handshake(CERTIFICATE_VERIFY, struct.pack("!H", algorithm)
                            + vec(2, signature))
    assert decode_certificate_verify(got[4:]) == (algorithm, signature)


def test_server_hello_randoms_come_from_batched_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each handshake's ServerHello random (and ticket entropy) is fresh and distinct,
    read from the kernel in batches (crypto/randoms.py): 130 handshakes, 3 reads."""
    from quicflow.crypto import randoms
    from quicflow.tls.certs import generate_self_signed
    from quicflow.tls.messages import SERVER_HELLO, decode_server_hello
    from quicflow.tls.session import TlsSession
    from quicflow.tls.tickets import ticket_sealer

    reads: list[int] = []
    real = os.urandom

    def counted(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(randoms, "os", SimpleNamespace(urandom=counted))  # (its reads only)
    monkeypatch.setattr(randoms, "_SPARE", {})
    cert, key = generate_self_signed(["localhost"])
    server_cfg = TlsConfig(is_client=False, alpn_protocols=["perf"], certificate_chain=[cert],
                           private_key=key, ticket_sealer=ticket_sealer(bytes(32)))
    client_cfg = TlsConfig(is_client=True, alpn_protocols=["perf"], verify_peer=False)
    randoms_seen = set()
    for _ in range(130):
        client, server = TlsSession(client_cfg, b"c"), TlsSession(server_cfg, b"s")
        client.start()
        for epoch, data in client.pop_output():
            server.receive(epoch, data)
        (_, first), *_ = server.pop_output()
        assert first[0] == SERVER_HELLO
        randoms_seen.add(decode_server_hello(first[4:]).random)
    assert len(randoms_seen) == 130
    assert reads == [48 * randoms.RANDOM_BATCH] * 3  # (a client taking tickets: 48 bytes)


def _server_outcome(pieces: list[bytes]) -> tuple[object, ...]:
    """A fresh server session fed ``pieces`` in Initial: its alert (description and
    message) or its output and secrets."""
    from quicflow.crypto.epoch import Epoch
    from quicflow.tls.certs import generate_self_signed
    from quicflow.tls.session import TlsSession

    if not _CERT_KEY:
        _CERT_KEY.append(generate_self_signed(["localhost"]))
    cert, key = _CERT_KEY[0]
    server = TlsSession(TlsConfig(is_client=False, alpn_protocols=["perf"],
                                  certificate_chain=[cert], private_key=key), b"s")
    try:
        for piece in pieces:
            server.receive(Epoch.INITIAL, piece)
    except TlsAlert as alert:
        return ("alert", alert.description, alert.message)
    return ("ok", len(server.pop_output()), len(server.pop_secrets()))


_CERT_KEY: list[tuple[Any, Any]] = []  # (one certificate for the whole module)


@given(messages=st.lists(st.tuples(st.sampled_from([1, 2, 8, 11, 20, 99]),
                                   st.binary(max_size=40)), min_size=1, max_size=3),
       data=st.data())
def test_whole_messages_and_byte_pieces_end_alike(messages: list[tuple[int, bytes]],
                                                  data: st.DataObject) -> None:
    """A message arriving whole (handled without buffering) ends as the same bytes
    arriving a byte at a time or cut anywhere (buffered): the same alert or output."""
    stream = b"".join(bytes([t]) + len(b).to_bytes(3, "big") + b for t, b in messages)
    whole = [bytes([t]) + len(b).to_bytes(3, "big") + b for t, b in messages]
    cut = data.draw(st.integers(0, len(stream)))
    expected = _server_outcome([stream[i : i + 1] for i in range(len(stream))])
    assert _server_outcome(whole) == expected
    assert _server_outcome([stream[:cut], stream[cut:]]) == expected


def test_an_oversized_message_is_refused_whole_or_in_pieces() -> None:
    from quicflow.tls.core import MAX_MESSAGE_LEN

    body = bytes(MAX_MESSAGE_LEN + 1)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    for pieces in ([message], [message[:4]], [message[:2], message[2:]]):
        outcome = _server_outcome(pieces)
        assert outcome[:2] == ("alert", 50)  # decode_error
        assert "too long" in str(outcome[2])


def _python_ticket_message(sealer: Any, nonce: bytes, fields: tuple[Any, ...]) -> bytes:
    from quicflow.tls.server import new_session_ticket_bytes
    from quicflow.tls.tickets import encode_ticket

    issued_at, lifetime, age_add, max_early, suite, psk, alpn, sni, tp = fields
    plaintext = encode_ticket(issued_at, lifetime, age_add, max_early, suite, psk, alpn, sni,
                              tp)
    return new_session_ticket_bytes(lifetime, age_add, sealer.seal_plaintext(plaintext, nonce),
                                     bool(max_early))


@settings(max_examples=150)
@given(keys=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=3),
       tickets=st.lists(st.tuples(
           st.integers(0, 2), st.binary(min_size=12, max_size=12),
           st.floats(0, 4e9, allow_nan=False), st.integers(0, 2**32 + 1),
           st.integers(0, 2**32 - 1), st.sampled_from([0, 0xFFFFFFFF]),
           st.sampled_from([0x1301, 0x1302, 0x1303]), st.binary(max_size=260),
           st.text(max_size=8), st.text(max_size=300), st.binary(max_size=80)),
           min_size=1, max_size=4))
def test_ticket_message_in_c_is_the_python_steps(keys: list[bytes],
                                                 tickets: list[tuple[Any, ...]]) -> None:
    """The C NewSessionTicket (sealed ticket included) is byte for byte what
    encode_ticket, seal_plaintext and new_session_ticket_bytes give, for sealers taking
    turns (the C side keeps the last key's AES schedule); where a field does not fit it
    returns None and the Python steps raise."""
    from quicflow.crypto.extension import EXT
    from quicflow.tls.tickets import TICKET_AAD, decode_new_session_ticket, ticket_sealer

    require(EXT is not None, "native crypto extension not built")
    sealers = [ticket_sealer(k) for k in keys]
    for which, nonce, *fields in tickets:
        sealer = sealers[which % len(sealers)]
        issued_at, lifetime, age_add, max_early, suite, psk, alpn, sni, tp = fields
        got = EXT.ticket_message(sealer.aead_key, nonce, TICKET_AAD, int(issued_at * 1000),
                                 lifetime, age_add, max_early, suite, psk, alpn, sni, tp)
        try:
            expected = _python_ticket_message(sealer, nonce, tuple(fields))
        except (ValueError, struct.error):
            assert got is None
            continue
        assert got == expected
        n = int.from_bytes(got[14:16], "big")  # (after type, length, lifetime, age_add, nonce)
        opened = sealer.open(got[16 : 16 + n], int(issued_at * 1000) / 1000)
        assert opened is not None and (opened.psk, opened.alpn, opened.server_name,
                                       opened.transport_parameters) == (psk, alpn, sni, tp)
        if lifetime <= 7 * 86400:
            assert decode_new_session_ticket(got[4:]).max_early_data == (max_early or None)
