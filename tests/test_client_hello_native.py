"""The C engine's ClientHello parser (``parse_client_hello``, used by
tls/messages.decode_client_hello) against the Python reference (``decode_client_hello_py``
and the extension parsers a server calls).

For any bytes the C parser either returns None (the reference runs: it decodes the rare
case or raises its alert) or exactly the reference's fields, with ``offers`` equal to
what ``parse_supported_versions_client``, ``parse_u16_list``, ``parse_key_share_client``,
``parse_alpn``, ``parse_server_name`` and ``parse_psk_modes`` return for the bodies
present. Whenever the reference raises anywhere (message or one of those bodies), the C
parser returns None. Well-formed hellos as clients send them are taken by C.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto import native
from quicflow.crypto.extension import python_forced
from quicflow.tls import TlsConfig
from quicflow.tls.alerts import TlsAlert
from quicflow.tls.client import ClientHandshake
from quicflow.tls.messages import (
    EXT_ALPN,
    EXT_KEY_SHARE,
    EXT_PSK_KEY_EXCHANGE_MODES,
    EXT_SERVER_NAME,
    EXT_SIGNATURE_ALGORITHMS,
    EXT_SUPPORTED_GROUPS,
    EXT_SUPPORTED_VERSIONS,
    ClientHello,
    decode_client_hello,
    decode_client_hello_py,
    parse_alpn,
    parse_key_share_client,
    parse_server_name,
    parse_supported_versions_client,
    parse_u16_list,
)
from quicflow.tls.tickets import parse_psk_modes
from tests.support.prereq import require

#: the extensions whose bodies the C parser parses, in OFFER_* order, and their parsers
_PARSED: list[tuple[int, Any]] = [
    (EXT_SUPPORTED_VERSIONS, parse_supported_versions_client),
    (EXT_SIGNATURE_ALGORITHMS, parse_u16_list),
    (EXT_SUPPORTED_GROUPS, parse_u16_list),
    (EXT_KEY_SHARE, parse_key_share_client),
    (EXT_ALPN, parse_alpn),
    (EXT_SERVER_NAME, parse_server_name),
    (EXT_PSK_KEY_EXCHANGE_MODES, parse_psk_modes),
]


@pytest.fixture(autouse=True)
def _need_native() -> None:
    require(native.available(), f"native crypto extension not built "
            f"({native.unavailable_reason()})")


def _reference(body: bytes) -> tuple[ClientHello, tuple[Any, ...]] | None:
    """The reference's hello and offers, or None when it raises anywhere."""
    try:
        hello = decode_client_hello_py(body)
        offers = tuple(parse(hello.ext_map[t]) if t in hello.ext_map else None
                       for t, parse in _PARSED)
    except TlsAlert:
        return None
    return hello, offers


def _agree(body: bytes) -> bool:
    """C and the reference agree on ``body``; True when C took it."""
    fast = native._ext.parse_client_hello(body)
    expected = _reference(body)
    if fast is None:
        return False
    assert expected is not None, "C took a hello the reference rejects"
    hello, offers = expected
    assert fast[:5] == (hello.random, hello.session_id, hello.cipher_suites,
                        hello.extensions, hello.ext_map)
    assert fast[5] == offers
    assert [type(v) for v in fast[:5]] == [bytes, bytes, list, list, dict]
    decoded = decode_client_hello(body)  # (the C result through the public function)
    # (QUICFLOW_ENGINE=python: the public function is the reference, no parsed offers)
    assert decoded == hello and decoded.offers == (None if python_forced() else offers)
    return True


def _vec(len_bytes: int, data: bytes) -> bytes:
    return len(data).to_bytes(len_bytes, "big") + data


def _body(random: bytes, sid: bytes, suites: list[int], exts: list[tuple[int, bytes]],
          compression: bytes = b"\x01\x00") -> bytes:
    ext_block = b"".join(struct.pack("!HH", t, len(b)) + b for t, b in exts)
    return (b"\x03\x03" + random + _vec(1, sid) + _vec(2, b"".join(
        struct.pack("!H", s) for s in suites)) + compression + _vec(2, ext_block))


def _real_hello(alpn: list[str], server_name: str | None) -> bytes:
    hs = ClientHandshake(TlsConfig(is_client=True, alpn_protocols=alpn,
                                   server_name=server_name, verify_peer=False), b"\x0f\x00")
    hs.start()
    (_, data), = hs.output
    return bytes(data[4:])


u16 = st.integers(0, 0xFFFF)
names = st.binary(min_size=1, max_size=12)
# well-formed bodies of the parsed extensions
good_bodies: dict[int, st.SearchStrategy[bytes]] = {
    EXT_SUPPORTED_VERSIONS: st.lists(u16, max_size=6).map(
        lambda v: _vec(1, b"".join(struct.pack("!H", x) for x in v))),
    EXT_SIGNATURE_ALGORITHMS: st.lists(u16, max_size=8).map(
        lambda v: _vec(2, b"".join(struct.pack("!H", x) for x in v))),
    EXT_SUPPORTED_GROUPS: st.lists(u16, max_size=6).map(
        lambda v: _vec(2, b"".join(struct.pack("!H", x) for x in v))),
    EXT_KEY_SHARE: st.lists(st.tuples(u16, st.binary(max_size=40)), max_size=3).map(
        lambda v: _vec(2, b"".join(struct.pack("!H", g) + _vec(2, k) for g, k in v))),
    EXT_ALPN: st.lists(names, min_size=1, max_size=4).map(
        lambda v: _vec(2, b"".join(_vec(1, n) for n in v))),
    EXT_SERVER_NAME: st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=12)),
                              max_size=3).map(
        lambda v: _vec(2, b"".join(bytes([t]) + _vec(2, n) for t, n in v))),
    EXT_PSK_KEY_EXCHANGE_MODES: st.binary(min_size=1, max_size=4).map(lambda v: _vec(1, v)),
}


@st.composite
def hellos(draw: st.DrawFn) -> bytes:
    types = draw(st.lists(st.sampled_from([*good_bodies, 57, 41, 42, 0x1A1A]),
                          unique=True, max_size=10))
    exts = []
    for t in types:
        if t in good_bodies and draw(st.integers(0, 5)):
            exts.append((t, draw(good_bodies[t])))
        else:  # any bytes: well formed or not
            exts.append((t, draw(st.binary(max_size=20))))
    return _body(draw(st.binary(min_size=32, max_size=32)),
                 draw(st.binary(max_size=draw(st.sampled_from([0, 8, 32, 33])))),
                 draw(st.lists(u16, max_size=5)), exts)


def test_real_client_hellos_are_taken_by_c() -> None:
    for alpn, name in ((["h3"], "example.test"), (["perf", "h3"], None),
                       (["hq-interop"], "localhost")):
        body = _real_hello(alpn, name)
        assert _agree(body)
        # the public function gives C's parsed offers (none when the engine is forced off)
        assert (decode_client_hello(body).offers is None) == python_forced()


@settings(max_examples=400)
@given(hellos())
def test_generated_hellos_agree(body: bytes) -> None:
    _agree(body)


@settings(max_examples=300)
@given(hellos(), st.data())
def test_truncated_spliced_and_flipped_hellos_agree(body: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(body)))
    _agree(body[:cut])
    _agree(body + data.draw(st.binary(min_size=1, max_size=4)))
    if body:
        i = data.draw(st.integers(0, len(body) - 1))
        bit = 1 << data.draw(st.integers(0, 7))
        _agree(body[:i] + bytes([body[i] ^ bit]) + body[i + 1:])


@settings(max_examples=200)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_agree(body: bytes) -> None:
    _agree(body)


@pytest.mark.parametrize("ext_type, body", [
    (EXT_SERVER_NAME, _vec(2, b"\x00" + _vec(2, "é.test".encode()))),  # not ASCII: alert
    (EXT_ALPN, _vec(2, b"\x00")),  # an empty protocol name
    (EXT_ALPN, _vec(2, b"")),  # an empty list
    (EXT_PSK_KEY_EXCHANGE_MODES, b"\x00"),  # empty modes
    (EXT_SUPPORTED_VERSIONS, b"\x03\x03\x04\x00"),  # an odd length
    (EXT_KEY_SHARE, _vec(2, b"\x00\x1d\x00\x05ab")),  # a key running past the list
])
def test_malformed_bodies_go_to_python(ext_type: int, body: bytes) -> None:
    raw = _body(bytes(32), b"", [0x1301], [(ext_type, body)])
    assert native._ext.parse_client_hello(raw) is None
    assert _reference(raw) is None
    assert decode_client_hello(raw).offers is None  # (the message itself parses)


def test_rare_messages_go_to_python_with_the_same_alerts() -> None:
    dup = _body(bytes(32), b"", [0x1301], [(57, b""), (57, b"")])
    long_sid = _body(bytes(32), bytes(33), [0x1301], [])
    deflate = _body(bytes(32), b"", [0x1301], [], compression=b"\x02\x00\x01")
    no_suites = _body(bytes(32), b"", [], [])
    for raw, code in ((dup, 47), (long_sid, 50), (no_suites, 50), (deflate, 47),
                      (b"\x03", 50)):
        assert native._ext.parse_client_hello(raw) is None
        with pytest.raises(TlsAlert) as caught:
            decode_client_hello(raw)
        assert caught.value.description == code
    many = _body(bytes(32), b"", [0x1301], [(1000 + i, b"") for i in range(65)])
    assert native._ext.parse_client_hello(many) is None  # (past the C parser's cap)
    assert len(decode_client_hello(many).extensions) == 65
