"""TLS 1.3 handshake messages and extensions as bytes (RFC 8446 §4).

Only what QUIC uses: no record layer, no ChangeCipherSpec, no EndOfEarlyData.
Every decoding failure raises ``TlsAlert(DECODE_ERROR)``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quicflow.crypto.extension import EXT, python_forced

from .alerts import DECODE_ERROR, ILLEGAL_PARAMETER, UNSUPPORTED_EXTENSION, TlsAlert

T = TypeVar("T")

# handshake message types
CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
END_OF_EARLY_DATA = 5
ENCRYPTED_EXTENSIONS = 8
CERTIFICATE = 11
CERTIFICATE_REQUEST = 13
CERTIFICATE_VERIFY = 15
FINISHED = 20
KEY_UPDATE = 24
MESSAGE_HASH = 254

# extension types
EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43
EXT_COOKIE = 44
EXT_PSK_KEY_EXCHANGE_MODES = 45
EXT_KEY_SHARE = 51
EXT_QUIC_TRANSPORT_PARAMETERS = 0x39

TLS13 = 0x0304
LEGACY_VERSION = 0x0303

# SHA-256("HelloRetryRequest"), RFC 8446 §4.1.3
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

# named groups
GROUP_SECP256R1 = 0x0017
GROUP_X25519 = 0x001D
GROUP_IDS: dict[str, int] = {"secp256r1": GROUP_SECP256R1, "x25519": GROUP_X25519}

# signature schemes
SIG_ECDSA_SECP256R1_SHA256 = 0x0403
SIG_RSA_PSS_RSAE_SHA256 = 0x0804
SIG_RSA_PSS_RSAE_SHA384 = 0x0805
SIG_RSA_PSS_RSAE_SHA512 = 0x0806
SIG_ED25519 = 0x0807

Extensions = list[tuple[int, bytes]]


class Reader:
    """Bounds-checked reader over one message body."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def _take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.end:
            raise _truncated()
        self.pos = start + n
        return start

    def u8(self) -> int:
        start = self.pos
        if start >= self.end:
            raise _truncated()
        self.pos = start + 1
        return self.data[start]

    def u16(self) -> int:
        start = self.pos
        if start + 2 > self.end:
            raise _truncated()
        self.pos = start + 2
        data = self.data
        return (data[start] << 8) | data[start + 1]

    def u24(self) -> int:
        start = self._take(3)
        return int.from_bytes(self.data[start : start + 3], "big")

    def raw(self, n: int) -> bytes:
        start = self.pos
        if n < 0 or start + n > self.end:
            raise _truncated()
        self.pos = start + n
        return self.data[start : start + n]

    def _length(self, len_bytes: int) -> int:
        """A ``len_bytes``-long length field; returns the position after it and the
        length (``self.pos`` moves past the field and the bytes it counts)."""
        start = self.pos
        data = self.data
        if start + len_bytes > self.end:
            raise _truncated()
        if len_bytes == 1:
            n = data[start]
        elif len_bytes == 2:
            n = (data[start] << 8) | data[start + 1]
        else:
            n = int.from_bytes(data[start : start + len_bytes], "big")
        start += len_bytes
        if start + n > self.end:
            raise _truncated()
        self.pos = start + n
        return n

    def vec(self, len_bytes: int) -> bytes:
        n = self._length(len_bytes)
        return self.data[self.pos - n : self.pos]

    def sub(self, len_bytes: int) -> Reader:
        n = self._length(len_bytes)
        return Reader(self.data, self.pos - n, self.pos)

    def rest(self) -> bytes:
        return self.raw(self.end - self.pos)

    def at_end(self) -> bool:
        return self.pos >= self.end

    def done(self) -> None:
        if self.pos != self.end:
            raise TlsAlert(DECODE_ERROR, "trailing bytes in handshake message")

    def items(self, func: Callable[[Reader], T]) -> list[T]:
        out: list[T] = []
        while self.pos < self.end:
            out.append(func(self))
        return out


def _truncated() -> TlsAlert:
    return TlsAlert(DECODE_ERROR, "truncated handshake message")


def _u16_vector_stop(data: bytes, end: int) -> int:
    """Where the vector with a 2-byte length at the start of data ends (checked <= end)."""
    if end < 2:
        raise _truncated()
    stop = 2 + ((data[0] << 8) | data[1])
    if stop > end:
        raise _truncated()
    return stop


def _trailing() -> TlsAlert:
    return TlsAlert(DECODE_ERROR, "trailing bytes in handshake message")


_U16 = struct.Struct("!H")
_EXT_HEAD = struct.Struct("!HH")


def _u16_array(data: bytes, pos: int, end: int, len_bytes: int) -> tuple[list[int], int]:
    """A vector of u16 values with a ``len_bytes`` length at ``data[pos:end]``: (values,
    position after it). One pass, no per-item call."""
    if pos + len_bytes > end:
        raise _truncated()
    n = data[pos] if len_bytes == 1 else (data[pos] << 8) | data[pos + 1]
    pos += len_bytes
    stop = pos + n
    if stop > end or n & 1:
        raise _truncated()
    unpack = _U16_ARRAYS.get(n)
    if unpack is None:
        unpack = struct.Struct(f"!{n >> 1}H").unpack_from
        if len(_U16_ARRAYS) < 128:
            _U16_ARRAYS[n] = unpack
    return list(unpack(data, pos)), stop


#: unpack_from of n/2 big-endian u16 values, by n (a handful of list sizes recur)
_U16_ARRAYS: dict[int, Callable[[bytes, int], tuple[int, ...]]] = {}


def _parse_extensions(data: bytes, pos: int, end: int) -> tuple[dict[int, bytes], int]:
    """The extensions block at ``data[pos:end]``: (type -> body, position after it).
    Duplicates are illegal (RFC 8446 §4.2)."""
    if pos + 2 > end:
        raise _truncated()
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise _truncated()
    out: dict[int, bytes] = {}
    for ext_type, body in _typed_entries(data, pos + 2, stop):
        if ext_type in out:
            raise TlsAlert(ILLEGAL_PARAMETER, f"duplicate extension {ext_type}")
        out[ext_type] = body
    return out, stop


def _typed_entries(data: bytes, pos: int, stop: int) -> Iterator[tuple[int, bytes]]:
    """The (u16 type, u16-length body) entries at ``data[pos:stop]``: extensions, key
    shares."""
    unpack = _EXT_HEAD.unpack_from
    while pos < stop:
        if pos + 4 > stop:
            raise _truncated()
        kind, length = unpack(data, pos)
        pos += 4
        nxt = pos + length
        if nxt > stop:
            raise _truncated()
        yield kind, data[pos:nxt]
        pos = nxt


def vec(len_bytes: int, data: bytes) -> bytes:
    n = len(data)
    if n >> (8 * len_bytes):
        raise ValueError("vector too long")
    return n.to_bytes(len_bytes, "big") + data


def u16_list(values: Iterable[int], len_bytes: int = 2) -> bytes:
    return vec(len_bytes, b"".join(struct.pack("!H", v) for v in values))


def handshake(msg_type: int, body: bytes) -> bytes:
    """Wrap a body into a handshake message (type, 24-bit length)."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def encode_extensions(extensions: Extensions) -> bytes:
    parts = [b""]
    total = 0
    pack = _EXT_HEAD.pack
    for ext_type, data in extensions:
        size = len(data)
        if size > 0xFFFF:
            raise ValueError("vector too long")
        parts.append(pack(ext_type, size))
        parts.append(data)
        total += 4 + size
    if total > 0xFFFF:
        raise ValueError("vector too long")
    parts[0] = _U16.pack(total)
    return b"".join(parts)


def decode_extensions(r: Reader) -> dict[int, bytes]:
    """Read an extensions block; duplicates are illegal (RFC 8446 §4.2)."""
    out, r.pos = _parse_extensions(r.data, r.pos, r.end)
    return out


# ---------------------------------------------------------------- ClientHello


#: offers of a ClientHello parsed in C: indexes of the extension bodies' values, as the
#: parse_* functions give them (None: that extension is absent)
OFFER_VERSIONS, OFFER_SIGNATURES, OFFER_GROUPS, OFFER_SHARES, OFFER_ALPN, OFFER_SNI, \
    OFFER_PSK_MODES = range(7)


@dataclass(slots=True)
class ClientHello:
    random: bytes
    session_id: bytes
    cipher_suites: list[int]
    extensions: Extensions = field(default_factory=list)
    # decoded only (for lookup); encoding uses ``extensions``
    ext_map: dict[int, bytes] = field(default_factory=dict)
    #: decoded by the C parser only: the bodies of the extensions a server reads, already
    #: parsed (indexed by OFFER_*; each one well formed), or None (parse them on use)
    offers: tuple[Any, ...] | None = field(default=None, compare=False)


def encode_client_hello(hello: ClientHello) -> bytes:
    body = (
        struct.pack("!H", LEGACY_VERSION)
        + hello.random
        + vec(1, hello.session_id)
        + u16_list(hello.cipher_suites)
        + vec(1, b"\x00")
        + encode_extensions(hello.extensions)
    )
    return handshake(CLIENT_HELLO, body)


#: the C parser of a ClientHello's common case, or None (not built, or Python forced)
NATIVE_CLIENT_HELLO: Any = (
    getattr(EXT, "parse_client_hello", None) if EXT is not None and not python_forced()
    else None
)


def decode_client_hello(body: bytes) -> ClientHello:
    """A ClientHello body. Its common case is parsed in C (with ``offers``); anything
    else, every error included, here (the reference: the same fields or alert)."""
    native = NATIVE_CLIENT_HELLO
    if native is not None:
        parsed = native(body)
        if parsed is not None:
            return ClientHello(*parsed)
    return decode_client_hello_py(body)


def decode_client_hello_py(body: bytes) -> ClientHello:
    """``decode_client_hello`` in Python alone (no ``offers``)."""
    # one pass over the body: legacy_version (ignored in TLS 1.3), random, session id,
    # cipher suites, compression methods, extensions
    end = len(body)
    if end < 35:
        raise _truncated()
    random = body[2:34]
    pos = 35 + body[34]
    if pos > end:
        raise _truncated()
    session_id = body[35:pos]
    if len(session_id) > 32:  # RFC 8446 §6: an out-of-range length is a decode_error
        raise TlsAlert(DECODE_ERROR, "legacy_session_id longer than 32 bytes")
    suites, pos = _u16_array(body, pos, end, 2)
    if not suites:  # cipher_suites<2..2^16-2>
        raise TlsAlert(DECODE_ERROR, "empty cipher_suites")
    if pos >= end or pos + 1 + body[pos] > end:
        raise _truncated()
    compression = body[pos + 1 : pos + 1 + body[pos]]
    if compression != b"\x00":
        raise TlsAlert(ILLEGAL_PARAMETER, "legacy_compression_methods must be [null]")
    ext_map, pos = _parse_extensions(body, pos + 2, end)
    if pos != end:
        raise _trailing()
    return ClientHello(random, session_id, suites, list(ext_map.items()), ext_map)


# ---------------------------------------------------------------- ServerHello


@dataclass(slots=True)
class ServerHello:
    random: bytes
    session_id: bytes
    cipher_suite: int
    extensions: Extensions = field(default_factory=list)
    ext_map: dict[int, bytes] = field(default_factory=dict)

    @property
    def is_retry_request(self) -> bool:
        return self.random == HRR_RANDOM


def encode_server_hello(hello: ServerHello) -> bytes:
    session_id = hello.session_id
    if len(hello.random) != 32 or len(session_id) > 255:
        raise ValueError("bad ServerHello random or session id")
    extensions = encode_extensions(hello.extensions)
    return b"".join((
        _SH_HEAD.pack((SERVER_HELLO << 24) | (38 + len(session_id) + len(extensions)),
                      LEGACY_VERSION),
        hello.random, bytes((len(session_id),)), session_id,
        _SUITE_AND_COMPRESSION.pack(hello.cipher_suite, 0), extensions,
    ))


#: type and 24-bit length (one u32), legacy_version
_SH_HEAD = struct.Struct("!IH")
_SUITE_AND_COMPRESSION = struct.Struct("!HB")


def decode_server_hello(body: bytes) -> ServerHello:
    end = len(body)
    if end < 35:
        raise _truncated()
    random = body[2:34]
    pos = 35 + body[34]
    if pos + 3 > end:
        raise _truncated()
    session_id = body[35:pos]
    suite = (body[pos] << 8) | body[pos + 1]
    if body[pos + 2] != 0:
        raise TlsAlert(ILLEGAL_PARAMETER, "legacy_compression_method must be 0")
    ext_map, pos = _parse_extensions(body, pos + 3, end)
    if pos != end:
        raise _trailing()
    return ServerHello(random, session_id, suite, list(ext_map.items()), ext_map)


# ---------------------------------------------------------------- other messages


def encode_encrypted_extensions(extensions: Extensions) -> bytes:
    return handshake(ENCRYPTED_EXTENSIONS, encode_extensions(extensions))


def decode_encrypted_extensions(body: bytes) -> dict[int, bytes]:
    ext_map, pos = _parse_extensions(body, 0, len(body))
    if pos != len(body):
        raise _trailing()
    return ext_map


def encode_certificate(context: bytes, cert_ders: list[bytes]) -> bytes:
    entries = b"".join(vec(3, der) + vec(2, b"") for der in cert_ders)
    return handshake(CERTIFICATE, vec(1, context) + vec(3, entries))


def decode_certificate(body: bytes, entry_extensions: list[int] | None = None
                       ) -> tuple[bytes, list[bytes]]:
    """Returns (certificate_request_context, DER certificates); the types of the
    certificate entries' extensions are appended to ``entry_extensions`` when given."""
    end = len(body)
    if end < 1 or 1 + body[0] > end:
        raise _truncated()
    pos = 1 + body[0]
    context = body[1:pos]
    if pos + 3 > end:
        raise _truncated()
    stop = pos + 3 + int.from_bytes(body[pos : pos + 3], "big")
    if stop > end:
        raise _truncated()
    pos += 3
    ders: list[bytes] = []
    while pos < stop:
        if pos + 3 > stop:
            raise _truncated()
        nxt = pos + 3 + int.from_bytes(body[pos : pos + 3], "big")
        if nxt > stop:
            raise _truncated()
        if nxt == pos + 3:
            raise TlsAlert(DECODE_ERROR, "empty certificate entry")
        der = body[pos + 3 : nxt]
        entry_ext, pos = _parse_extensions(body, nxt, stop)  # per-certificate extensions
        if entry_ext and entry_extensions is not None:
            entry_extensions.extend(entry_ext)
        ders.append(der)
    if stop != end:
        raise _trailing()
    return context, ders


def decode_peer_certificate(body: bytes, who: str) -> tuple[bytes, list[bytes]]:
    """``decode_certificate`` for the peer's Certificate (``who``: "server" or "client"):
    its entries' extensions answer requests of ours (RFC 8446 §4.4.2), and we make none,
    so any is unsupported_extension (§4.2)."""
    entry_extensions: list[int] = []
    context, ders = decode_certificate(body, entry_extensions)
    if entry_extensions:
        raise TlsAlert(UNSUPPORTED_EXTENSION,
                       f"{who} certificate entry extensions {entry_extensions} never requested")
    return context, ders


def encode_certificate_request(context: bytes, extensions: Extensions) -> bytes:
    return handshake(CERTIFICATE_REQUEST, vec(1, context) + encode_extensions(extensions))


def decode_certificate_request(body: bytes) -> tuple[bytes, dict[int, bytes]]:
    """Returns (certificate_request_context, extensions)."""
    r = Reader(body)
    context = r.vec(1)
    ext_map = decode_extensions(r)
    r.done()
    return context, ext_map


_CV_HEAD = struct.Struct("!IHH")


def encode_certificate_verify(algorithm: int, signature: bytes) -> bytes:
    n = len(signature)
    if n > 0xFFFF:
        raise ValueError("vector too long")
    return _CV_HEAD.pack((CERTIFICATE_VERIFY << 24) | (4 + n), algorithm, n) + signature


def _u16_and_vector(data: bytes) -> tuple[int, bytes]:
    """A 16-bit value followed by a 16-bit-length vector that ends the data."""
    end = len(data)
    if end < 4:
        raise _truncated()
    value, n = _EXT_HEAD.unpack_from(data, 0)
    if 4 + n > end:
        raise _truncated()
    if 4 + n != end:
        raise _trailing()
    return value, data[4:]


def decode_certificate_verify(body: bytes) -> tuple[int, bytes]:
    """(signature algorithm, signature)."""
    return _u16_and_vector(body)


def encode_finished(verify_data: bytes) -> bytes:
    return handshake(FINISHED, verify_data)


# ---------------------------------------------------------------- extension bodies


def ext_supported_versions_client(versions: list[int]) -> bytes:
    return u16_list(versions, 1)


def parse_supported_versions_client(data: bytes) -> list[int]:
    out, pos = _u16_array(data, 0, len(data), 1)
    if pos != len(data):
        raise _trailing()
    if not out:  # versions<2..254> (RFC 8446 §4.2.1, §6: out of range)
        raise TlsAlert(DECODE_ERROR, "empty supported_versions")
    return out


def parse_u16(data: bytes) -> int:
    if len(data) < 2:
        raise _truncated()
    if len(data) != 2:
        raise _trailing()
    return (data[0] << 8) | data[1]


def parse_u16_list(data: bytes) -> list[int]:
    """A u16 list with a 2-byte length that may not be empty: signature_algorithms
    <2..2^16-2>, named_group_list <2..2^16-1> (RFC 8446 §4.2.3, §4.2.7; §6: an
    out-of-range length is a decode_error)."""
    out, pos = _u16_array(data, 0, len(data), 2)
    if pos != len(data):
        raise _trailing()
    if not out:
        raise TlsAlert(DECODE_ERROR, "empty list")
    return out


def ext_key_share_client(shares: list[tuple[int, bytes]]) -> bytes:
    return vec(2, b"".join(struct.pack("!H", g) + vec(2, k) for g, k in shares))


def parse_key_share_client(data: bytes) -> list[tuple[int, bytes]]:
    end = len(data)
    stop = _u16_vector_stop(data, end)
    out = list(_typed_entries(data, 2, stop))
    if stop != end:
        raise _trailing()
    for _, key in out:
        if not key:  # key_exchange<1..2^16-1> (RFC 8446 §4.2.8)
            raise TlsAlert(DECODE_ERROR, "empty key_exchange")
    return out


def ext_key_share_server(group: int, key: bytes) -> bytes:
    return struct.pack("!H", group) + vec(2, key)


def parse_key_share_server(data: bytes) -> tuple[int, bytes]:
    """(group, key exchange)."""
    return _u16_and_vector(data)


def ext_server_name(host: str) -> bytes:
    name = host.encode("ascii")
    return vec(2, b"\x00" + vec(2, name))


def parse_server_name(data: bytes) -> str | None:
    """The first host_name of a server_name extension (RFC 6066 §3), in one pass."""
    end = len(data)
    stop = _u16_vector_stop(data, end)
    host: str | None = None
    pos = 2
    while pos < stop:
        name_type = data[pos]
        if pos + 3 > stop:
            raise _truncated()
        n = (data[pos + 1] << 8) | data[pos + 2]
        pos += 3
        if pos + n > stop:
            raise _truncated()
        if name_type == 0 and host is None:
            try:
                host = data[pos : pos + n].decode("ascii")
            except UnicodeDecodeError as exc:
                raise TlsAlert(DECODE_ERROR, "server_name is not ASCII") from exc
        pos += n
    if stop != end:
        raise _trailing()
    return host


def ext_alpn(protocols: list[str]) -> bytes:
    return vec(2, b"".join(vec(1, p.encode()) for p in protocols))


def parse_alpn(data: bytes) -> list[str]:
    end = len(data)
    stop = _u16_vector_stop(data, end)
    out: list[str] = []
    pos = 2
    while pos < stop:
        nxt = pos + 1 + data[pos]
        if nxt > stop:
            raise _truncated()
        if nxt == pos + 1:
            raise TlsAlert(DECODE_ERROR, "empty ALPN protocol name")
        out.append(data[pos + 1 : nxt].decode("latin-1"))
        pos = nxt
    if stop != end:
        raise _trailing()
    if not out:
        raise TlsAlert(DECODE_ERROR, "empty ALPN list")
    return out


def ext_cookie(cookie: bytes) -> bytes:
    return vec(2, cookie)


def parse_cookie(data: bytes) -> bytes:
    r = Reader(data)
    cookie = r.vec(2)
    r.done()
    if not cookie:
        raise TlsAlert(DECODE_ERROR, "empty cookie")
    return cookie
