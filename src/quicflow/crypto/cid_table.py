"""The cid -> keys table shared by the offload engines (software and native).

``CidTableEngine`` holds one dict per direction (sealers, openers) mapping a connection
ID to its table entry; aliases share one entry. An engine supplies how an entry is
built (``_new_state``) and how a key update changes it (``_key_update``), plus its own
``seal`` / ``open`` / ``open_run`` over ``_sealers`` / ``_openers``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from .suites import CipherSuite

S = TypeVar("S")


class CidTableEngine(Generic[S]):
    """Table programming and counters common to the offload engines; ``S`` is the entry."""

    __slots__ = ("_sealers", "_openers", "sealed", "seal_calls", "opened", "open_failures")

    def __init__(self) -> None:
        self._sealers: dict[bytes, S] = {}
        self._openers: dict[bytes, S] = {}
        self.sealed = 0  # packets sealed by seal() and seal_stream_run()
        self.seal_calls = 0  # calls of seal() and seal_stream_run()
        self.opened = 0
        self.open_failures = 0

    def _table(self, opener: bool) -> dict[bytes, S]:
        return self._openers if opener else self._sealers

    # -- engine hooks -----------------------------------------------------------------

    def _new_state(
        self,
        suite: CipherSuite,
        secret: bytes,
        key_phase: int,
        largest_pn: int,
        hp_key: bytes | None,
        version: int = 1,
    ) -> S:
        """A new table entry for the keys of ``secret``."""
        raise NotImplementedError

    def _key_update(self, state: S) -> None:
        """Switch ``state`` to its next-generation keys, flip its key phase and start the
        new phase after its largest pn."""
        raise NotImplementedError

    # -- programming the table -------------------------------------------------------

    def install(
        self,
        cid: bytes,
        suite: CipherSuite,
        secret: bytes,
        *,
        opener: bool,
        key_phase: int = 0,
        largest_pn: int = -1,
        hp_key: bytes | None = None,
        version: int = 1,
    ) -> S:
        """Program ``cid`` with the keys of ``secret`` (replaces an existing entry);
        ``version`` picks the HKDF labels (QUIC v1 or v2) of its keys and key updates.
        Returns the new entry (what ``key_state`` gives for ``cid`` from now on)."""
        state = self._new_state(suite, secret, key_phase, largest_pn, hp_key, version)
        (self._openers if opener else self._sealers)[bytes(cid)] = state
        return state

    def alias(self, new_cid: bytes, existing_cid: bytes, *, opener: bool) -> None:
        """Make ``new_cid`` share the entry of ``existing_cid`` (KeyError if unknown)."""
        table = self._openers if opener else self._sealers
        table[bytes(new_cid)] = table[bytes(existing_cid)]

    def update(self, cid: bytes, *, opener: bool) -> None:
        """Key update: switch to the next-generation keys and flip the key phase."""
        self._key_update(self._table(opener)[bytes(cid)])

    def remove(self, cid: bytes, *, opener: bool) -> None:
        """Forget ``cid`` only (its aliases keep the shared entry)."""
        (self._openers if opener else self._sealers).pop(bytes(cid), None)

    def remove_connection(self, opener_cids: Iterable[bytes], sealer_cid: bytes) -> None:
        """A connection ended: forget its entries in one step, the openers of
        ``opener_cids`` (its own CIDs) and the sealer of ``sealer_cid`` (all ``bytes``)."""
        openers = self._openers
        for cid in opener_cids:
            openers.pop(cid, None)
        self._sealers.pop(sealer_cid, None)

    def key_state(self, cid: bytes, *, opener: bool) -> S:
        """The live table entry of ``cid`` (for snapshots); KeyError if unknown."""
        return self._table(opener)[bytes(cid)]

    def __contains__(self, cid: object) -> bool:
        return cid in self._openers or cid in self._sealers
