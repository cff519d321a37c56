"""A server's keys and its 0-RTT record, handed to a same-host successor.

Session tickets, Retry and NEW_TOKEN tokens are sealed with keys of the server's
configuration, and stateless reset tokens are derived from one; without them a successor
(a restart, an upgrade) would refuse every client's resumption, 0-RTT and tokens, and
could not reset the connection IDs its predecessor issued. So the old process puts its
keys in the handoff's header and, once it has stopped, the tickets whose 0-RTT it
accepted in the trailer; the successor adopts the keys where its configuration left them
unset (``Endpoint.adopt_secrets``) and remembers the tickets (``StrikeRegister.merge``),
so a 0-RTT ClientHello the old process accepted cannot be replayed to it.

Both go sealed (AES-256-GCM) with the key the successor sent in its HELLO, like the
snapshots: only that successor can read them.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..tls.shared_strikes import SharedStrikeRegister
from ..tls.tickets import StrikeRegister

if TYPE_CHECKING:
    from ..endpoint.endpoint import Endpoint

_AAD = b"quicflow-handoff-secrets-1"
_NONCE = 12


class SecretsError(ValueError):
    """A sealed secrets record that does not open (wrong key, tampered) or parse."""


def _seal(record: dict[str, Any], key: bytes) -> str:
    nonce = os.urandom(_NONCE)
    return (nonce + AESGCM(key).encrypt(nonce, json.dumps(record).encode(), _AAD)).hex()


def _open(sealed: str, key: bytes) -> dict[str, Any]:
    try:
        data = bytes.fromhex(sealed)
        record = json.loads(AESGCM(key).decrypt(data[:_NONCE], data[_NONCE:], _AAD))
    except (ValueError, InvalidTag) as exc:
        raise SecretsError(f"the predecessor's keys do not open: {exc!r}") from None
    if not isinstance(record, dict):
        raise SecretsError("the predecessor's keys are not a record")
    return record


def seal_secrets(endpoint: Endpoint, key: bytes) -> str:
    """The endpoint's keys, sealed for the successor (hex, for the JSON header)."""
    return _seal({name: value.hex() for name, value in endpoint.secrets().items()}, key)


def adopt_secrets(endpoint: Endpoint, sealed: str, key: bytes) -> list[str]:
    """Adopt the keys of ``seal_secrets`` where ``endpoint`` made its own; the names."""
    record = _open(sealed, key)
    try:
        keys = {str(name): bytes.fromhex(value) for name, value in record.items()}
    except (TypeError, ValueError, AttributeError):
        raise SecretsError("the predecessor's keys are malformed") from None
    return endpoint.adopt_secrets(keys)


def seal_strikes(endpoint: Endpoint, key: bytes) -> str | None:
    """The ids of the tickets whose 0-RTT the endpoint accepted, still remembered, sealed
    for the successor (None: the endpoint keeps no such record)."""
    register = endpoint.configuration.strike_register
    if not isinstance(register, (StrikeRegister, SharedStrikeRegister)):
        return None
    return _seal({"strikes": [[k.hex(), expiry] for k, expiry in register.export()]}, key)


def merge_strikes(endpoint: Endpoint, sealed: str | None, key: bytes, wall_time: float
                  ) -> int:
    """Remember the predecessor's accepted tickets (``seal_strikes``); how many. A
    record that is missing (``None``), does not open or does not parse closes the
    register to 0-RTT until any ticket the predecessor admitted has expired instead."""
    register = endpoint.configuration.strike_register
    if not isinstance(register, (StrikeRegister, SharedStrikeRegister)):
        return 0
    try:
        if sealed is None:
            raise SecretsError("no 0-RTT record from the predecessor")
        entries = _open(sealed, key).get("strikes")
        if not isinstance(entries, list):
            raise SecretsError("no ticket list in the predecessor's 0-RTT record")
        pairs = [(bytes.fromhex(k), float(expiry)) for k, expiry in entries]
    except (SecretsError, TypeError, ValueError):
        register.refuse_until(wall_time + 2 * register.window)
        return 0
    return register.merge(pairs, wall_time)


__all__ = ["SecretsError", "adopt_secrets", "merge_strikes", "seal_secrets", "seal_strikes"]
