"""Session tickets, resumption PSKs and 0-RTT (RFC 8446 §4.2.9-§4.2.11, §4.6.1, §8;
RFC 9001 §4.6).

The server keeps nothing per ticket: a ticket is the resumption state sealed
(AES-256-GCM) under a key derived from the configured ``ticket_key``, so every worker
and every host given the same key resumes the sessions any of them began. Layout:
``nonce (12) | AEAD(contents)`` with the contents of :class:`TicketContents`.

The client keeps :class:`SessionTicket` objects (plain data, ``to_bytes``/``from_bytes``
to store them) in a :class:`SessionTicketCache`, one server at a time, each used once.

Anti-replay (RFC 8446 §8): 0-RTT is accepted at most once per ticket by one server
process: a :class:`StrikeRegister` remembers the ids of tickets whose early data was
accepted for ``2 * window`` seconds, and a ClientHello whose ticket age (as the client
reports it) differs from the age the server computes by more than ``window`` is refused
0-RTT (so a replay older than that is refused without the register). The register is
bounded; when full, 0-RTT is refused (the handshake goes on in 1-RTT). It lives in
the process's memory; the workers of one server share a
:class:`~quicflow.tls.shared_strikes.SharedStrikeRegister` instead. Another host or a
restart has its own, so a ClientHello replayed there within ``window`` seconds can have
its 0-RTT data accepted once more. Resumption itself (without early data) is not limited.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from quicflow.crypto.hkdf import hkdf_expand, hkdf_extract
from quicflow.wire.errors import WireError
from quicflow.wire.tparams import (
    TransportParameters,
    decode_transport_parameters,
    encode_transport_parameters,
)

from .alerts import DECODE_ERROR, ILLEGAL_PARAMETER, TlsAlert
from .messages import EXT_EARLY_DATA, NEW_SESSION_TICKET, Reader, decode_extensions, handshake, vec

#: psk_key_exchange_modes: (EC)DHE with the PSK (the only mode offered and accepted)
PSK_DHE_KE = 1
#: RFC 9001 §4.6.1: the only max_early_data_size a QUIC ticket may carry
QUIC_MAX_EARLY_DATA = 0xFFFFFFFF
#: RFC 8446 §4.6.1: no ticket lives longer than seven days
MAX_TICKET_LIFETIME = 7 * 86400

_NONCE_LEN = 12
#: the associated data every ticket is sealed with
TICKET_AAD = b"quicflow ticket"
_FORMAT = 1


# ---------------------------------------------------------------- wire formats


@dataclass(slots=True)
class NewSessionTicket:
    lifetime: int
    age_add: int
    nonce: bytes
    ticket: bytes
    max_early_data: int | None = None


def encode_new_session_ticket(nst: NewSessionTicket) -> bytes:
    extensions = b""
    if nst.max_early_data is not None:
        extensions = struct.pack("!HH", EXT_EARLY_DATA, 4) + struct.pack("!I", nst.max_early_data)
    body = (struct.pack("!II", nst.lifetime, nst.age_add) + vec(1, nst.nonce)
            + vec(2, nst.ticket) + vec(2, extensions))
    return handshake(NEW_SESSION_TICKET, body)


def decode_new_session_ticket(body: bytes) -> NewSessionTicket:
    r = Reader(body)
    lifetime = int.from_bytes(r.raw(4), "big")
    age_add = int.from_bytes(r.raw(4), "big")
    nonce = r.vec(1)
    ticket = r.vec(2)
    ext = decode_extensions(r)
    r.done()
    if not ticket:
        raise TlsAlert(DECODE_ERROR, "NewSessionTicket with an empty ticket")
    if lifetime > MAX_TICKET_LIFETIME:
        raise TlsAlert(ILLEGAL_PARAMETER, "ticket lifetime over seven days")
    max_early: int | None = None
    if EXT_EARLY_DATA in ext:
        max_early = parse_u32(ext[EXT_EARLY_DATA])
    return NewSessionTicket(lifetime, age_add, nonce, ticket, max_early)


def parse_u32(data: bytes) -> int:
    r = Reader(data)
    value = int.from_bytes(r.raw(4), "big")
    r.done()
    return value


def parse_empty(data: bytes) -> None:
    if data:
        raise TlsAlert(DECODE_ERROR, "extension must be empty")


def encode_psk_modes(modes: list[int]) -> bytes:
    return vec(1, bytes(modes))


def parse_psk_modes(data: bytes) -> list[int]:
    end = len(data)
    if not end or 1 + data[0] > end:
        raise TlsAlert(DECODE_ERROR, "truncated handshake message")
    if 1 + data[0] != end:
        raise TlsAlert(DECODE_ERROR, "trailing bytes in handshake message")
    if end == 1:
        raise TlsAlert(DECODE_ERROR, "empty psk_key_exchange_modes")
    return list(data[1:])


@dataclass(slots=True)
class OfferedPsks:
    """A ClientHello's pre_shared_key: (identity, obfuscated age) pairs and their binders;
    ``binders_len`` is the size of the binders list with its length (what the binder's
    transcript leaves out)."""

    identities: list[tuple[bytes, int]]
    binders: list[bytes]
    binders_len: int


def encode_offered_psks(identities: list[tuple[bytes, int]], binders: list[bytes]) -> bytes:
    ids = b"".join(vec(2, ident) + struct.pack("!I", age) for ident, age in identities)
    return vec(2, ids) + vec(2, b"".join(vec(1, b) for b in binders))


def parse_offered_psks(data: bytes) -> OfferedPsks:
    r = Reader(data)
    ids_r = r.sub(2)
    identities: list[tuple[bytes, int]] = []
    while not ids_r.at_end():
        ident = ids_r.vec(2)
        age = int.from_bytes(ids_r.raw(4), "big")
        if not ident:
            raise TlsAlert(DECODE_ERROR, "empty PSK identity")
        identities.append((ident, age))
    start = r.pos
    binders_r = r.sub(2)
    binders: list[bytes] = []
    while not binders_r.at_end():
        binder = binders_r.vec(1)
        if len(binder) < 32:
            raise TlsAlert(DECODE_ERROR, "PSK binder shorter than 32 bytes")
        binders.append(binder)
    r.done()
    if not identities or len(identities) != len(binders):
        raise TlsAlert(ILLEGAL_PARAMETER, "pre_shared_key: identities and binders differ")
    return OfferedPsks(identities, binders, r.pos - start)


def parse_selected_identity(data: bytes) -> int:
    r = Reader(data)
    value = r.u16()
    r.done()
    return value


# ---------------------------------------------------------------- remembered parameters

#: the limits a client remembers for 0-RTT and a server accepting 0-RTT must not lower
#: (RFC 9000 §7.4.1, RFC 9221 §3)
REMEMBERED = (
    "active_connection_id_limit",
    "initial_max_data",
    "initial_max_stream_data_bidi_local",
    "initial_max_stream_data_bidi_remote",
    "initial_max_stream_data_uni",
    "initial_max_streams_bidi",
    "initial_max_streams_uni",
    "max_datagram_frame_size",
)


def remembered_parameters(raw: bytes) -> TransportParameters | None:
    """The remembered limits of a server's transport parameters (others at defaults);
    None for bytes that do not decode."""
    try:
        full = decode_transport_parameters(raw, from_server=True)
    except WireError:
        return None
    out = TransportParameters()
    for name in REMEMBERED:
        setattr(out, name, getattr(full, name))
    return out


def compact_parameters(raw: bytes) -> bytes:
    """Only the remembered limits of ``raw``, encoded (what a ticket carries: small, so
    a ClientHello with it still fits what clients allow)."""
    params = remembered_parameters(raw)
    return encode_transport_parameters(params) if params is not None else b""


# ---------------------------------------------------------------- server: sealed tickets


_TICKET_HEAD = struct.Struct("!BQIIIH")


def encode_ticket(issued_at: float, lifetime: int, age_add: int, max_early_data: int,
                  suite: int, psk: bytes, alpn: str, server_name: str,
                  transport_parameters: bytes) -> bytes:
    """The plaintext of a ticket (``TicketContents.encode``) from its fields."""
    alpn_b = alpn.encode()
    sni_b = server_name.encode()
    if len(psk) > 0xFF or len(alpn_b) > 0xFF or len(sni_b) > 0xFF or \
            len(transport_parameters) > 0xFFFF:
        raise ValueError("vector too long")
    return b"".join((
        _TICKET_HEAD.pack(_FORMAT, int(issued_at * 1000), lifetime, age_add, max_early_data,
                          suite),
        bytes((len(psk),)), psk, bytes((len(alpn_b),)), alpn_b, bytes((len(sni_b),)), sni_b,
        len(transport_parameters).to_bytes(2, "big"), transport_parameters,
    ))


@dataclass(slots=True)
class TicketContents:
    """What a ticket carries (sealed): enough to resume and to judge 0-RTT."""

    issued_at: float  # wall-clock seconds
    lifetime: int  # seconds
    age_add: int
    max_early_data: int
    suite: int
    psk: bytes
    alpn: str
    server_name: str
    transport_parameters: bytes  # the server's remembered limits (RFC 9000 §7.4.1)
    ticket_id: bytes = b""  # the ticket's random AEAD nonce: the anti-replay key

    def encode(self) -> bytes:
        return encode_ticket(self.issued_at, self.lifetime, self.age_add, self.max_early_data,
                             self.suite, self.psk, self.alpn, self.server_name,
                             self.transport_parameters)

    @classmethod
    def decode(cls, data: bytes) -> TicketContents:
        r = Reader(data)
        if r.u8() != _FORMAT:
            raise TlsAlert(DECODE_ERROR, "unknown ticket format")
        issued, lifetime, age_add, max_early, suite = struct.unpack("!QIIIH", r.raw(22))
        psk = r.vec(1)
        alpn = r.vec(1).decode()
        sni = r.vec(1).decode()
        tp = r.vec(2)
        r.done()
        return cls(issued / 1000, lifetime, age_add, max_early, suite, psk, alpn, sni, tp)


@dataclass(slots=True, eq=False)
class TicketSealer:
    """Seals and opens session tickets with one configured key (any length; the
    sealing key is derived from it, apart from the token key's)."""

    key: bytes
    _aead: AESGCM | None = field(default=None, repr=False)
    #: the derived AES-256-GCM key (for the C engine's ticket_message)
    aead_key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        h = hashes.SHA256()
        prk = hkdf_extract(h, b"quicflow session tickets", self.key)
        self.aead_key = hkdf_expand(h, prk, b"ticket key", 32)
        self._aead = AESGCM(self.aead_key)

    def seal(self, contents: TicketContents) -> bytes:
        return self.seal_plaintext(contents.encode())

    def seal_plaintext(self, plaintext: bytes, nonce: bytes = b"") -> bytes:
        """A ticket of ``encode_ticket``'s bytes (what ``seal`` seals), under ``nonce``
        (12 fresh random bytes; drawn here when not given)."""
        assert self._aead is not None
        if len(nonce) != _NONCE_LEN:
            nonce = os.urandom(_NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, TICKET_AAD)

    def open(self, ticket: bytes, wall_time: float) -> TicketContents | None:
        """The contents of a ticket that is ours and not expired; None otherwise
        (another key, tampered, garbage, expired)."""
        assert self._aead is not None
        if len(ticket) < _NONCE_LEN + 16 + 24:
            return None
        try:
            plain = self._aead.decrypt(ticket[:_NONCE_LEN], ticket[_NONCE_LEN:], TICKET_AAD)
            contents = TicketContents.decode(plain)
        except Exception:  # InvalidTag, or a format we do not know: not a ticket of ours
            return None
        contents.ticket_id = ticket[:_NONCE_LEN]
        if not contents.issued_at - 1.0 <= wall_time <= contents.issued_at + contents.lifetime:
            return None
        return contents


_SEALERS: dict[bytes, TicketSealer] = {}


def ticket_sealer(key: bytes) -> TicketSealer:
    """The sealer of ``key`` (derived once per key and process)."""
    sealer = _SEALERS.get(key)
    if sealer is None:
        if len(_SEALERS) >= 16:
            _SEALERS.clear()
        sealer = _SEALERS[key] = TicketSealer(key)
    return sealer


def new_ticket_key() -> bytes:
    """A fresh random key for ``Configuration.ticket_key``."""
    return os.urandom(32)


@dataclass(slots=True, eq=False)
class StrikeRegister:
    """Ids of tickets whose 0-RTT data one server process accepted, each kept for
    ``2 * window`` seconds, at most ``max_entries`` (see the module's notes)."""

    window: float = 10.0
    max_entries: int = 100_000
    seen: dict[bytes, float] = field(default_factory=dict)
    order: deque[tuple[float, bytes]] = field(default_factory=deque)
    refused_full: int = 0
    refused_replay: int = 0
    #: no 0-RTT at all before this wall-clock time (``refuse_until``)
    closed_until: float = 0.0

    def admit(self, key: bytes, wall_time: float) -> bool:
        """True the first time ``key`` comes (it is then remembered), False for a
        replay, when the register is full or while it is closed."""
        if wall_time < self.closed_until:
            self.refused_replay += 1  # (what it may be: the ids it was to have are unknown)
            return False
        order, seen = self.order, self.seen
        while order and order[0][0] <= wall_time:
            expiry, old = order.popleft()
            if seen.get(old) == expiry:
                del seen[old]
        if key in seen:
            self.refused_replay += 1
            return False
        if len(seen) >= self.max_entries:
            self.refused_full += 1
            return False
        expiry = wall_time + 2 * self.window
        seen[key] = expiry
        order.append((expiry, key))
        return True

    def __len__(self) -> int:
        return len(self.seen)

    def export(self) -> list[tuple[bytes, float]]:
        """The remembered ids with their expiry (wall-clock seconds), oldest first."""
        seen = self.seen
        return [(key, expiry) for expiry, key in self.order if seen.get(key) == expiry]

    def refuse_until(self, wall_time: float) -> None:
        """Accept no 0-RTT before ``wall_time`` (a successor that could not learn which
        tickets its predecessor admitted waits until those would have expired)."""
        self.closed_until = max(self.closed_until, wall_time)

    def merge(self, entries: list[tuple[bytes, float]], wall_time: float) -> int:
        """Remember ids another process admitted (a takeover's predecessor), so their
        0-RTT is refused here too until they expire; at most ``max_entries`` in all.
        Returns how many were added."""
        added = 0
        seen, order = self.seen, self.order
        for key, expiry in sorted(entries, key=lambda e: e[1]):
            if expiry <= wall_time or key in seen or len(seen) >= self.max_entries:
                continue
            expiry = min(expiry, wall_time + 2 * self.window)
            seen[key] = expiry
            order.append((expiry, key))
            added += 1
        if added:  # expiry order, which ``admit`` relies on to drop the oldest first
            self.order = deque(sorted(order))
        return added


# ---------------------------------------------------------------- client: kept tickets


@dataclass(slots=True)
class SessionTicket:
    """A ticket as a client keeps it: what it needs to offer the PSK and send 0-RTT."""

    ticket: bytes
    psk: bytes
    suite: int
    alpn: str
    server_name: str
    age_add: int
    lifetime: int
    received_at: float  # wall-clock seconds
    max_early_data: int
    transport_parameters: bytes  # the server's, remembered for 0-RTT (RFC 9000 §7.4.1)

    def usable(self, wall_time: float) -> bool:
        return self.received_at - 1.0 <= wall_time < self.received_at + self.lifetime

    def obfuscated_age(self, wall_time: float) -> int:
        age_ms = max(0, int((wall_time - self.received_at) * 1000))
        return (age_ms + self.age_add) & 0xFFFFFFFF

    def to_bytes(self) -> bytes:
        """A byte string to store the ticket with (see :meth:`from_bytes`)."""
        return (
            struct.pack("!BHIIdI", _FORMAT, self.suite, self.age_add, self.lifetime,
                        self.received_at, self.max_early_data)
            + vec(2, self.ticket) + vec(1, self.psk) + vec(1, self.alpn.encode())
            + vec(1, self.server_name.encode()) + vec(2, self.transport_parameters)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionTicket:
        """Raises ``ValueError`` for bytes that are not a stored ticket."""
        try:
            r = Reader(data)
            fmt, suite, age_add, lifetime, received, max_early = struct.unpack(
                "!BHIIdI", r.raw(23))
            if fmt != _FORMAT:
                raise ValueError("unknown stored ticket format")
            ticket = r.vec(2)
            psk = r.vec(1)
            alpn = r.vec(1).decode()
            sni = r.vec(1).decode()
            tp = r.vec(2)
            r.done()
        except (TlsAlert, UnicodeDecodeError) as exc:
            raise ValueError(f"not a stored session ticket: {exc}") from None
        return cls(ticket, psk, suite, alpn, sni, age_add, lifetime, received, max_early, tp)


@dataclass(slots=True, eq=False)
class SessionTicketCache:
    """A client's session tickets per server (``"host:port"``), newest last; each
    ticket is handed out once (RFC 8446 §4.6.1 and Appendix C.4 ask clients not to
    reuse one). At most ``max_servers`` servers and ``per_server`` tickets each."""

    max_servers: int = 256
    per_server: int = 2
    tickets: OrderedDict[str, list[SessionTicket]] = field(default_factory=OrderedDict)

    def put(self, server: str, ticket: SessionTicket) -> None:
        entry = self.tickets.setdefault(server, [])
        self.tickets.move_to_end(server)
        entry.append(ticket)
        del entry[: -self.per_server]
        while len(self.tickets) > self.max_servers:
            self.tickets.popitem(last=False)

    def take(self, server: str) -> SessionTicket | None:
        """The newest ticket for ``server`` (removed from the cache), or None."""
        entry = self.tickets.get(server)
        if not entry:
            return None
        ticket = entry.pop()
        if not entry:
            del self.tickets[server]
        return ticket

    def __len__(self) -> int:
        return sum(len(v) for v in self.tickets.values())
