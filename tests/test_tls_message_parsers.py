"""The one-pass TLS message parsers give exactly what a field-by-field ``Reader`` parse
gives: the same values for well-formed input, the same alert (code and text) for
malformed input. The reference parsers below are the straightforward ``Reader`` form."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.tls.alerts import DECODE_ERROR, ILLEGAL_PARAMETER, TlsAlert
from quicflow.tls.messages import (
    ClientHello,
    Reader,
    ServerHello,
    decode_certificate,
    decode_certificate_verify,
    decode_client_hello,
    decode_encrypted_extensions,
    decode_server_hello,
    encode_certificate,
    encode_client_hello,
    encode_extensions,
    encode_server_hello,
    parse_alpn,
    parse_key_share_client,
    parse_key_share_server,
    parse_supported_versions_client,
    parse_u16,
    parse_u16_list,
)

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------- reference parsers


def ref_extensions(r: Reader) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    ext = r.sub(2)
    while not ext.at_end():
        ext_type = ext.u16()
        data = ext.vec(2)
        if ext_type in out:
            raise TlsAlert(ILLEGAL_PARAMETER, f"duplicate extension {ext_type}")
        out[ext_type] = data
    return out


def ref_client_hello(body: bytes) -> ClientHello:
    r = Reader(body)
    r.u16()
    random = r.raw(32)
    session_id = r.vec(1)
    if len(session_id) > 32:
        raise TlsAlert(DECODE_ERROR, "legacy_session_id longer than 32 bytes")
    suites = r.sub(2).items(Reader.u16)
    if not suites:
        raise TlsAlert(DECODE_ERROR, "empty cipher_suites")
    if r.vec(1) != b"\x00":
        raise TlsAlert(ILLEGAL_PARAMETER, "legacy_compression_methods must be [null]")
    ext_map = ref_extensions(r)
    r.done()
    return ClientHello(random, session_id, suites, list(ext_map.items()), ext_map)


def ref_server_hello(body: bytes) -> ServerHello:
    r = Reader(body)
    r.u16()
    random = r.raw(32)
    session_id = r.vec(1)
    suite = r.u16()
    if r.u8() != 0:
        raise TlsAlert(ILLEGAL_PARAMETER, "legacy_compression_method must be 0")
    ext_map = ref_extensions(r)
    r.done()
    return ServerHello(random, session_id, suite, list(ext_map.items()), ext_map)


def ref_encrypted_extensions(body: bytes) -> dict[int, bytes]:
    r = Reader(body)
    out = ref_extensions(r)
    r.done()
    return out


def ref_certificate_verify(body: bytes) -> tuple[int, bytes]:
    r = Reader(body)
    algorithm = r.u16()
    signature = r.vec(2)
    r.done()
    return algorithm, signature


def ref_certificate(body: bytes) -> tuple[bytes, list[bytes]]:
    r = Reader(body)
    context = r.vec(1)
    entries = r.sub(3)
    ders: list[bytes] = []
    while not entries.at_end():
        der = entries.vec(3)
        if not der:
            raise TlsAlert(DECODE_ERROR, "empty certificate entry")
        ref_extensions(entries)
        ders.append(der)
    r.done()
    return context, ders


def ref_u16_vector(len_bytes: int, empty: str) -> Callable[[bytes], list[int]]:
    def parse(data: bytes) -> list[int]:
        r = Reader(data)
        out = r.sub(len_bytes).items(Reader.u16)
        r.done()
        if not out:
            raise TlsAlert(DECODE_ERROR, empty)
        return out
    return parse


def ref_u16(data: bytes) -> int:
    r = Reader(data)
    value = r.u16()
    r.done()
    return value


def _entry(r: Reader) -> tuple[int, bytes]:
    return r.u16(), r.vec(2)


def ref_key_share_client(data: bytes) -> list[tuple[int, bytes]]:
    r = Reader(data)
    out = r.sub(2).items(_entry)
    r.done()
    if any(not key for _, key in out):
        raise TlsAlert(DECODE_ERROR, "empty key_exchange")
    return out


def ref_key_share_server(data: bytes) -> tuple[int, bytes]:
    r = Reader(data)
    entry = _entry(r)
    r.done()
    return entry


def ref_alpn(data: bytes) -> list[str]:
    r = Reader(data)
    protos = r.sub(2)
    out: list[str] = []
    while not protos.at_end():
        raw = protos.vec(1)
        if not raw:
            raise TlsAlert(DECODE_ERROR, "empty ALPN protocol name")
        out.append(raw.decode("latin-1"))
    r.done()
    if not out:
        raise TlsAlert(DECODE_ERROR, "empty ALPN list")
    return out


PAIRS: list[tuple[Callable[[bytes], Any], Callable[[bytes], Any]]] = [
    (decode_client_hello, ref_client_hello),
    (decode_server_hello, ref_server_hello),
    (decode_encrypted_extensions, ref_encrypted_extensions),
    (decode_certificate_verify, ref_certificate_verify),
    (decode_certificate, ref_certificate),
    (parse_supported_versions_client, ref_u16_vector(1, "empty supported_versions")),
    (parse_u16_list, ref_u16_vector(2, "empty list")),
    (parse_u16, ref_u16),
    (parse_key_share_client, ref_key_share_client),
    (parse_key_share_server, ref_key_share_server),
    (parse_alpn, ref_alpn),
]


def outcome(parse: Callable[[bytes], Any], data: bytes) -> Any:
    try:
        return ("ok", parse(data))
    except TlsAlert as alert:
        return ("alert", alert.description, alert.message)


def same_everywhere(data: bytes) -> None:
    for fast, ref in PAIRS:
        assert outcome(fast, data) == outcome(ref, data), fast.__name__


# ----------------------------------------------------------------- inputs

extensions = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6)


@st.composite
def hello_bodies(draw: st.DrawFn) -> bytes:
    """ClientHello/ServerHello-shaped bodies (valid, then maybe cut, grown or bit-flipped)."""
    if draw(st.booleans()):
        hello = ClientHello(draw(st.binary(min_size=32, max_size=32)),
                            draw(st.binary(max_size=34)),
                            draw(st.lists(st.integers(0, 0xFFFF), max_size=5)),
                            draw(extensions))
        data = bytearray(encode_client_hello(hello)[4:])
    else:
        sh = ServerHello(draw(st.binary(min_size=32, max_size=32)), draw(st.binary(max_size=34)),
                         draw(st.integers(0, 0xFFFF)), draw(extensions))
        data = bytearray(encode_server_hello(sh)[4:])
    return bytes(mutate(draw, data))


def mutate(draw: st.DrawFn, data: bytearray) -> bytearray:
    action = draw(st.sampled_from(["keep", "cut", "grow", "flip"]))
    if action == "cut" and data:
        del data[draw(st.integers(0, len(data) - 1)):]
    elif action == "grow":
        data += draw(st.binary(min_size=1, max_size=4))
    elif action == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return data


@st.composite
def extension_bodies(draw: st.DrawFn) -> bytes:
    """Extension-body-shaped inputs: u16 vectors, key shares, ALPN lists, extensions."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        items = draw(st.lists(st.integers(0, 0xFFFF), max_size=8))
        width = draw(st.sampled_from([1, 2]))
        raw = b"".join(struct.pack("!H", v) for v in items)
        data = len(raw).to_bytes(width, "big") + raw
    elif kind == 1:
        shares = draw(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=33)),
                               max_size=3))
        raw = b"".join(struct.pack("!HH", g, len(k)) + k for g, k in shares)
        data = len(raw).to_bytes(2, "big") + raw
    elif kind == 2:
        names = draw(st.lists(st.binary(max_size=6), max_size=4))
        raw = b"".join(bytes((len(n),)) + n for n in names)
        data = len(raw).to_bytes(2, "big") + raw
    elif kind == 3:
        data = encode_extensions(draw(extensions))
    else:
        data = draw(st.binary(max_size=12))
    return bytes(mutate(draw, bytearray(data)))


@st.composite
def certificate_bodies(draw: st.DrawFn) -> bytes:
    """Certificate-message bodies (contexts, entries with extensions), maybe mutated."""
    context = draw(st.binary(max_size=4))
    ders = draw(st.lists(st.binary(min_size=0, max_size=30), max_size=3))
    entries = b"".join(len(d).to_bytes(3, "big") + d + encode_extensions(draw(extensions))
                       for d in ders)
    data = bytes((len(context),)) + context + len(entries).to_bytes(3, "big") + entries
    if draw(st.booleans()) and ders and all(ders):
        data = encode_certificate(context, ders)[4:]
    return bytes(mutate(draw, bytearray(data)))


@SETTINGS
@given(certificate_bodies())
def test_certificate_parser_matches_the_reader_parse(data: bytes) -> None:
    same_everywhere(data)


@SETTINGS
@given(hello_bodies())
def test_hello_parsers_match_the_reader_parse(data: bytes) -> None:
    same_everywhere(data)


@SETTINGS
@given(extension_bodies())
def test_extension_parsers_match_the_reader_parse(data: bytes) -> None:
    same_everywhere(data)


def test_duplicate_extension_is_illegal_parameter() -> None:
    body = encode_extensions([(16, b"ab"), (16, b"cd")])
    for parse in (decode_encrypted_extensions, ref_encrypted_extensions):
        assert outcome(parse, body) == ("alert", ILLEGAL_PARAMETER, "duplicate extension 16")


def test_encoded_hellos_round_trip() -> None:
    hello = ClientHello(bytes(range(32)), b"", [0x1301, 0x1302], [(43, b"\x02\x03\x04"),
                                                                   (0x39, b"tp")])
    decoded = decode_client_hello(encode_client_hello(hello)[4:])
    assert (decoded.random, decoded.cipher_suites, decoded.extensions) == (
        hello.random, hello.cipher_suites, hello.extensions)
    sh = ServerHello(bytes(32), b"\x01" * 8, 0x1303, [(43, b"\x03\x04")])
    raw = encode_server_hello(sh)
    assert raw[0] == 2 and int.from_bytes(raw[1:4], "big") == len(raw) - 4
    back = decode_server_hello(raw[4:])
    assert (back.session_id, back.cipher_suite, back.extensions) == (
        sh.session_id, sh.cipher_suite, sh.extensions)
