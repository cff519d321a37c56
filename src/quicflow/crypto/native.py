"""Native crypto offload engine: the ``OffloadEngine`` contract on OpenSSL's libcrypto.

``NativeOffloadEngine`` keeps the cid table as Python dicts of ``CidState`` objects (C,
shared by aliases) holding ``KeyContext`` objects (C: one key generation with its
EVP_CIPHER_CTX objects built once). ``seal``, ``seal_stream_run``, ``open`` and
``open_run`` are one C call per batch. The
output is bit-identical to ``SoftwareOffloadEngine``, the reference and fallback.

``available()`` tells whether the extension loaded; ``best_engine()`` returns the native
engine when it did (``QUICFLOW_ENGINE=python`` forces the pure-Python one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .cid_table import CidTableEngine
from .extension import ENGINE_ENV, EXT, IMPORT_ERROR, python_forced
from .keys import LABELS, QUIC_V2
from .offload import Buffer, OffloadEngine, OpenResult, RunEntry, SoftwareOffloadEngine
from .suites import CipherSuite

__all__ = ["ENGINE_ENV", "NativeOffloadEngine", "available", "best_engine",
           "openssl_version", "unavailable_reason"]

_ext: Any = EXT  # None when not built (no compiler / no libssl-dev / QUICFLOW_NO_NATIVE)
_IMPORT_ERROR: str | None = IMPORT_ERROR


def available() -> bool:
    """True when the C extension ``quicflow.crypto._native`` is importable."""
    return _ext is not None


def unavailable_reason() -> str | None:
    """Why the extension did not load (``None`` when it did)."""
    return _IMPORT_ERROR


def openssl_version() -> str | None:
    """The OpenSSL version the extension runs on (``None`` when not available)."""
    return None if _ext is None else str(_ext.OPENSSL_VERSION)


class NativePhaseKeys(Protocol):
    """What a ``KeyContext`` exposes (like ``offload.PhaseKeys``)."""

    @property
    def secret(self) -> bytes: ...

    @property
    def iv(self) -> int: ...

    @property
    def hp_key(self) -> bytes: ...


class NativeKeyState(Protocol):
    """The live table entry (``CidState``), read-only view like ``offload.CidKeyState``."""

    @property
    def suite(self) -> CipherSuite: ...

    @property
    def hp_key(self) -> bytes: ...

    @property
    def key_phase(self) -> int: ...

    @property
    def current(self) -> NativePhaseKeys: ...

    @property
    def next(self) -> NativePhaseKeys: ...

    @property
    def previous(self) -> NativePhaseKeys | None: ...

    @property
    def largest_pn(self) -> int: ...

    @property
    def phase_start_pn(self) -> int: ...


class NativeOffloadEngine(CidTableEngine[NativeKeyState]):
    """``OffloadEngine`` on the C extension; bit-identical to ``SoftwareOffloadEngine``.

    Differences, on invalid input only: packet numbers must be below 2**62 (seal raises
    ``OverflowError``), ``largest_pn`` at install must be in -1 .. 2**62-1, and a seal
    descriptor whose header cannot hold the first byte and the pn raises ``ValueError``.
    ``key_state`` returns the live C entry (read-only attributes), not a ``CidKeyState``.
    """

    __slots__ = ()

    def __init__(self) -> None:
        if _ext is None:
            raise RuntimeError(f"native crypto extension not available: {_IMPORT_ERROR}")
        super().__init__()

    def _new_state(
        self,
        suite: CipherSuite,
        secret: bytes,
        key_phase: int,
        largest_pn: int,
        hp_key: bytes | None,
        version: int = 1,
    ) -> NativeKeyState:
        if type(suite) is not CipherSuite:
            suite = CipherSuite(suite)
        LABELS[version]  # an unknown version fails here as in the software engine (KeyError)
        v2 = version == QUIC_V2
        # this generation's key, iv and hp key (three HMACs, the same labels as
        # derive_key_iv & co.) in a KeyContext: one C call; the next generation's keys
        # (key updates) are made in C from the secret when first needed, so a short
        # connection never makes them. (A given hp_key of the wrong length: ValueError.)
        current = _ext.packet_key_context(suite, bytes(secret), v2,
                                          None if hp_key is None else bytes(hp_key))
        state: NativeKeyState = _ext.CidState(suite, current.hp_key, key_phase & 1, current,
                                              None, largest_pn, v2)
        return state

    def _key_update(self, state: NativeKeyState) -> None:
        _ext.CidState.update(state)  # rotates and sets phase_start_pn, in C

    # -- batches --------------------------------------------------------------------

    def seal(self, buf: bytearray, packets: Sequence[tuple[int, int, int, int, bytes]]) -> None:
        """Seal short-header packets in place: ``(offset, header_len, payload_len, pn, cid)``."""
        _ext.seal(self._sealers, buf, packets)
        self.sealed += len(packets)
        self.seal_calls += 1

    def seal_stream_run(
        self,
        buf: bytearray,
        cid: bytes,
        pn: int,
        pn_len: int,
        stream_id: int,
        data: Buffer,
        start: int,
        end: int,
        offset: int,
        off_len: int,
        data_cap: int,
        count: int,
        fin: bool,
        dcid: bytes | None = None,
    ) -> int:
        """Append up to ``count`` sealed one-STREAM-frame packets of ``data[start:end]``
        (one C call: headers, frames, data copy and sealing); returns the packets built.
        ``cid`` is the sealer's table key, ``dcid`` (default ``cid``) the header's DCID."""
        built: int = _ext.seal_stream_run(
            self._sealers, buf, cid, pn, pn_len, stream_id, data, start, end, offset,
            off_len, data_cap, count, fin, dcid,
        )
        self.sealed += built
        self.seal_calls += 1
        return built

    def open(
        self, buf: Buffer, packets: Sequence[tuple[int, int, bytes]]
    ) -> list[OpenResult | None]:
        """Open short-header packets ``(offset, length, cid)``; ``None`` for each failure."""
        results: list[OpenResult | None]
        results, failures = _ext.open(self._openers, buf, packets, OpenResult)
        self.opened += len(results) - failures
        self.open_failures += failures
        return results

    def open_run(self, buf: Buffer, packets: Sequence[tuple[int, int, bytes]]) -> list[RunEntry]:
        """Open a run like ``open()`` and coalesce its STREAM data (see ``RunEntry``)."""
        entries: list[RunEntry]
        entries, failures = _ext.open_run(self._openers, buf, packets)
        self.opened += len(packets) - failures
        self.open_failures += failures
        return entries


def best_engine() -> OffloadEngine:
    """A ``NativeOffloadEngine`` when the extension loaded, else ``SoftwareOffloadEngine``.

    ``QUICFLOW_ENGINE=python`` forces the pure-Python engine.
    """
    if python_forced():
        return SoftwareOffloadEngine()
    if _ext is not None:
        return NativeOffloadEngine()
    return SoftwareOffloadEngine()
