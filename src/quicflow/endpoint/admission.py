"""What a server does with packets of connections it does not have: address validation
with Retry and tokens (RFC 9000 §8.1), the bound on half-open connections, and
stateless resets (§10.3).

Policy (``Configuration.retry``):

- ``"never"``: no Retry; an Initial without a valid token opens a half-open connection.
- ``"always"``: every Initial without a valid token gets a Retry.
- ``"load"`` (the default): a Retry once ``retry_threshold`` connections have not
  validated their address; below that, no extra round trip.

Independently of Retry, at most ``max_half_open`` connections may be waiting for their
address to be validated (each holds TLS state and about 50 KB); Initials beyond that are
dropped and counted (``dropped_half_open``). A connection leaves the half-open set when
the client's address is validated (a Handshake packet, a valid token) or it ends; its
lifetime until then is ``half_open_timeout`` of silence, not the full idle timeout.

A valid Retry token validates the address and carries the original DCID; an invalid one
closes with INVALID_TOKEN (§8.1.2). A NEW_TOKEN token that does not check (expired,
another server's key, another address) counts as no token (§8.1.3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..crypto.stateless_reset import stateless_reset_token
from ..transport.config import Configuration
from ..wire.packet import PacketHeader
from . import stateless
from .tokens import NEW_TOKEN, RETRY_TOKEN, TokenSealer, token_kind

Address = tuple[Any, ...]
Replies = list[tuple[bytes, Address]]


@dataclass(slots=True)
class AdmissionCounters:
    retries_sent: int = 0
    retry_tokens_accepted: int = 0
    new_tokens_accepted: int = 0
    new_tokens_sealed: int = 0  # NEW_TOKEN tokens made (when first sent, not per connection)
    invalid_retry_tokens: int = 0  # answered with INVALID_TOKEN
    invalid_new_tokens: int = 0  # ignored (treated as no token)
    dropped_half_open: int = 0  # Initials dropped by the half-open bound
    stateless_resets_sent: int = 0
    stateless_resets_limited: int = 0  # not sent: rate limit
    stateless_resets_too_small: int = 0  # not sent: the packet was too small


@dataclass(slots=True, frozen=True)
class Admit:
    """Open a connection: its original DCID (from a Retry token, or the client's DCID),
    the Retry's SCID if there was one, and whether the address is validated."""

    original_dcid: bytes
    retry_scid: bytes | None
    validated: bool


def _key(value: bytes | None) -> bytes:
    return value if value is not None else os.urandom(32)


@dataclass(slots=True, eq=False)
class Admission:
    configuration: Configuration
    sealer: TokenSealer = field(init=False)
    reset_key: bytes = field(init=False)
    half_open: dict[int, Any] = field(default_factory=dict)  # id(conn) -> Connection
    counters: AdmissionCounters = field(default_factory=AdmissionCounters)
    _reset_allowance: float = 0.0
    _reset_time: float | None = None  # (a full second's allowance at first)

    def __post_init__(self) -> None:
        self.sealer = TokenSealer(_key(self.configuration.token_key))
        self.reset_key = _key(self.configuration.reset_key)

    def use_keys(self, configuration: Configuration) -> None:
        """Seal and open tokens and derive reset tokens with ``configuration``'s keys from
        now on (a takeover's successor adopting its predecessor's); the half-open
        handshakes and the counters stay."""
        self.configuration = configuration
        self.__post_init__()

    # ------------------------------------------------------------ Initials

    def admit(
        self, hdr: PacketHeader, address: Address, wall: float,
        new_cid: Callable[[], bytes], replies: Replies,
    ) -> Admit | None:
        """Decide on an Initial for no known connection; None means no connection
        (a Retry or close may have been queued in ``replies``, a counter moved)."""
        cfg = self.configuration
        c = self.counters
        if hdr.token:
            kind = token_kind(hdr.token)
            lifetime = cfg.retry_token_lifetime if kind == RETRY_TOKEN else cfg.new_token_lifetime
            opened = self.sealer.open(hdr.token, address, wall, lifetime)
            if kind == RETRY_TOKEN or (opened is not None and opened[0] == RETRY_TOKEN):
                if opened is None or opened[2] != hdr.dcid:  # (the Retry's SCID)
                    c.invalid_retry_tokens += 1
                    close = stateless.invalid_token_close(hdr.scid, hdr.dcid, new_cid(),
                                                          hdr.version)
                    replies.append((close, address))
                    return None
                c.retry_tokens_accepted += 1
                return Admit(opened[1], hdr.dcid, True)
            if opened is not None and opened[0] == NEW_TOKEN:
                c.new_tokens_accepted += 1
                return Admit(hdr.dcid, None, True)
            c.invalid_new_tokens += 1
        half_open = len(self.half_open)
        if cfg.retry == "always" or (cfg.retry == "load" and half_open >= cfg.retry_threshold):
            scid = new_cid()
            token = self.sealer.seal(RETRY_TOKEN, address, hdr.dcid, wall, scid)
            retry = stateless.retry_packet(hdr.scid, hdr.dcid, scid, token, hdr.version)
            replies.append((retry, address))
            c.retries_sent += 1
            return None
        if half_open >= cfg.max_half_open:
            c.dropped_half_open += 1
            return None
        return Admit(hdr.dcid, None, False)

    def issues_new_tokens(self) -> bool:
        """Whether connections get a NEW_TOKEN token (new_token_lifetime > 0)."""
        return self.configuration.new_token_lifetime > 0

    def new_token(self, address: Address, wall: float) -> bytes:
        """A NEW_TOKEN token for a client at ``address`` (b"" when they are off)."""
        if self.configuration.new_token_lifetime <= 0:
            return b""
        self.counters.new_tokens_sealed += 1
        return self.sealer.seal(NEW_TOKEN, address, b"", wall)

    # ------------------------------------------------------------ half-open set

    def track(self, conn: Any) -> None:
        if not conn.address_validated:
            self.half_open[id(conn)] = conn

    def update(self, conn: Any) -> None:
        """After packets of ``conn`` were processed: validated or ended leaves the set."""
        if conn.address_validated or conn.terminated:
            self.half_open.pop(id(conn), None)

    def forget(self, conn: Any) -> None:
        self.half_open.pop(id(conn), None)

    # ------------------------------------------------------------ stateless reset

    def reset_for(self, data: bytes, cid_len: int, now: float) -> bytes | None:
        """A stateless reset for a short-header packet of an unknown connection, unless
        the rate limit or the packet's size forbids one."""
        c = self.counters
        if len(data) <= stateless.MIN_RESET_SIZE or len(data) < 1 + cid_len:
            c.stateless_resets_too_small += 1
            return None
        rate = self.configuration.stateless_reset_rate
        elapsed = 1.0 if self._reset_time is None else max(0.0, now - self._reset_time)
        self._reset_allowance = min(rate, self._reset_allowance + elapsed * rate)
        self._reset_time = now
        if self._reset_allowance < 1.0:
            c.stateless_resets_limited += 1
            return None
        self._reset_allowance -= 1.0
        token = stateless_reset_token(self.reset_key, bytes(data[1 : 1 + cid_len]))
        packet = stateless.stateless_reset(token, len(data))
        if packet is None:
            c.stateless_resets_too_small += 1
            return None
        c.stateless_resets_sent += 1
        return packet
