"""Crypto offload: 1-RTT packet protection programmed with a cid -> keys table.

The engine works like a NIC would: the connection installs its 1-RTT secrets per
connection ID, then hands over whole batches of short-header packets to seal in place
or to open. ``SoftwareOffloadEngine`` is the pure-Python reference implementation; any
other engine must produce bit-identical output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cryptography.exceptions import InvalidTag

from ..wire.varint import encode_varint
from .aead import Aead, decode_packet_number, make_aead
from .cid_table import CidTableEngine
from .header_protection import SAMPLE_LEN, HeaderProtection, make_header_protection
from .keys import derive_hp_key, derive_key_iv, next_generation_secret
from .suites import AEAD_TAG_LEN, CipherSuite

Buffer = bytes | bytearray | memoryview


class OpenResult(NamedTuple):
    """One opened packet: ``header`` is the unprotected short header."""

    pn: int
    header: bytes
    payload: bytes
    key_phase: int
    phase_changed: bool


RunEntry = tuple[Any, ...]
"""An ``open_run`` entry, one of (in packet order):

- ``(0, first_pn, count, stream_id, offset, data, fin)``: ``count`` >= 1 packets with
  consecutive pns, each exactly one STREAM frame (+ PADDING) of ``stream_id``, contiguous
  in offset, FIN only on the last; ``data`` is their data concatenated.
- ``(1, pn, payload, phase_changed)``: any other opened packet (or one that opened with a
  key-phase change).
- ``(2, index)``: descriptor ``index`` failed to open.
- ``(3, pn)``: a packet that opened with its reserved header bits set (RFC 9000 §17.3.1:
  a connection error of type PROTOCOL_VIOLATION).
"""

STREAM_DATA_MAX = (1 << 62) - 1
_VARINT_MASK = (0x3F, 0x3FFF, 0, 0x3FFFFFFF, 0, 0, 0, 0x3FFFFFFFFFFFFFFF)
_from_bytes = int.from_bytes


def single_stream_frame(payload: bytes) -> tuple[int, int, int, int, bool] | None:
    """``(stream_id, offset, data_start, data_end, fin)`` when ``payload`` is exactly one
    STREAM frame (types 0x08-0x0f) followed only by PADDING; ``None`` otherwise.

    Strict and safe on arbitrary bytes: truncated varints, a length past the end, trailing
    non-zero bytes or ``offset + length > 2**62 - 1`` give ``None`` (the general frame
    parser then raises the right error).
    """
    n = len(payload)
    if n < 2:
        return None
    ftype = payload[0]
    if ftype & 0xF8 != 0x08:
        return None
    size = 1 << (payload[1] >> 6)
    pos = 1 + size
    if pos > n:
        return None
    sid = _from_bytes(payload[1:pos], "big") & _VARINT_MASK[size - 1]
    offset = 0
    if ftype & 0x04:
        if pos >= n:
            return None
        size = 1 << (payload[pos] >> 6)
        if pos + size > n:
            return None
        offset = _from_bytes(payload[pos : pos + size], "big") & _VARINT_MASK[size - 1]
        pos += size
    if ftype & 0x02:
        if pos >= n:
            return None
        size = 1 << (payload[pos] >> 6)
        if pos + size > n:
            return None
        end = pos + size + (_from_bytes(payload[pos : pos + size], "big") & _VARINT_MASK[size - 1])
        pos += size
        if end > n:
            return None
        if end < n and payload.count(0, end) != n - end:
            return None  # more frames follow: general path
    else:
        end = n
    if offset + (end - pos) > STREAM_DATA_MAX:
        return None
    return sid, offset, pos, end, bool(ftype & 0x01)


def stream_run_count(
    pn: int,
    pn_len: int,
    stream_id: int,
    data_len: int,
    start: int,
    end: int,
    offset: int,
    off_len: int,
    data_cap: int,
    count: int,
) -> int:
    """How many packets ``seal_stream_run`` builds; ``ValueError`` on invalid arguments.

    The checks every engine makes (the native one in C, with the same messages).
    """
    if not 1 <= pn_len <= 4:
        raise ValueError("pn_len must be 1..4")
    if off_len not in (1, 2, 4, 8):
        raise ValueError("off_len must be 1, 2, 4 or 8")
    if not 0 < data_cap <= 0x3FFF:
        raise ValueError("data_cap must be 1..16383")
    if count < 0:
        raise ValueError("count must not be negative")
    if not 0 <= start <= end <= data_len:
        raise ValueError("need 0 <= start <= end <= len(data)")
    if not 0 <= stream_id <= STREAM_DATA_MAX:
        raise ValueError("stream_id must be 0..2**62-1")
    if offset < 0 or offset + (end - start) >= 1 << (8 * off_len - 2):
        raise ValueError("stream offsets do not fit in off_len bytes")
    n = min(count, -(-(end - start) // data_cap))
    if n and not 0 <= pn <= STREAM_DATA_MAX - n + 1:
        raise ValueError("packet numbers must be 0..2**62-1")
    return n


def coalesce_run(results: Sequence[OpenResult | None]) -> list[RunEntry]:
    """Turn ``open()`` results into ``open_run`` entries (the reference coalescing)."""
    entries: list[RunEntry] = []
    append = entries.append
    # the run being built: first_pn, last_pn, sid, offset, next offset, chunks
    first = last = sid = start_offset = next_offset = 0
    chunks: list[bytes] = []
    active = False
    for index, result in enumerate(results):
        if result is None:
            if active:
                append((0, first, last - first + 1, sid, start_offset, b"".join(chunks), False))
                active = False
            append((2, index))
            continue
        if result.header[0] & 0x18:  # reserved bits set (RFC 9000 §17.3.1)
            if active:
                append((0, first, last - first + 1, sid, start_offset, b"".join(chunks), False))
                active = False
            append((3, result.pn))
            continue
        payload = result.payload
        parsed = None if result.phase_changed else single_stream_frame(payload)
        if parsed is None:
            if active:
                append((0, first, last - first + 1, sid, start_offset, b"".join(chunks), False))
                active = False
            append((1, result.pn, payload, result.phase_changed))
            continue
        psid, poffset, pstart, pend, fin = parsed
        pn = result.pn
        if not (active and pn == last + 1 and psid == sid and poffset == next_offset):
            if active:
                append((0, first, last - first + 1, sid, start_offset, b"".join(chunks), False))
            first = pn
            sid = psid
            start_offset = poffset
            chunks = []
            active = True
        last = pn
        chunks.append(payload[pstart:pend])
        next_offset = poffset + pend - pstart
        if fin:
            append((0, first, last - first + 1, sid, start_offset, b"".join(chunks), True))
            active = False
    if active:
        append((0, first, last - first + 1, sid, start_offset, b"".join(chunks), False))
    return entries


class OffloadEngine(Protocol):
    """The contract every offload engine (software, native, NIC) implements."""

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
    ) -> Any:
        """Program ``cid`` with the keys of ``secret``; returns the new entry (as
        ``key_state`` gives it)."""
        ...

    def alias(self, new_cid: bytes, existing_cid: bytes, *, opener: bool) -> None: ...

    def update(self, cid: bytes, *, opener: bool) -> None: ...

    def remove(self, cid: bytes, *, opener: bool) -> None: ...

    def remove_connection(self, opener_cids: Iterable[bytes], sealer_cid: bytes) -> None:
        """Forget an ended connection's openers (its CIDs) and its sealer at once."""
        ...

    def key_state(self, cid: bytes, *, opener: bool) -> Any:
        """The live table entry of ``cid``: ``key_phase``, ``current.secret``, ``hp_key``,
        ``largest_pn``, ``phase_start_pn``, ``previous`` (KeyError if unknown)."""
        ...

    def seal(self, buf: bytearray, packets: Sequence[tuple[int, int, int, int, bytes]]) -> None: ...

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
    ) -> int: ...

    def open(
        self, buf: Buffer, packets: Sequence[tuple[int, int, bytes]]
    ) -> list[OpenResult | None]: ...

    def open_run(
        self, buf: Buffer, packets: Sequence[tuple[int, int, bytes]]
    ) -> list[RunEntry]: ...


@dataclass(slots=True)
class PhaseKeys:
    """Keys of one key phase generation: its secret, AEAD object and IV as an int."""

    secret: bytes
    aead: Aead
    iv: int


@dataclass(slots=True, eq=False)
class CidKeyState:
    """One table entry, shared by all aliases of a connection (one direction)."""

    suite: CipherSuite
    hp_key: bytes
    hp: HeaderProtection
    key_phase: int
    current: PhaseKeys
    next: PhaseKeys
    previous: PhaseKeys | None
    largest_pn: int
    phase_start_pn: int  # first pn of the current phase (opener side)
    version: int = 1  # QUIC version: its HKDF labels


def _phase_keys(suite: CipherSuite, secret: bytes, version: int = 1) -> PhaseKeys:
    key, iv = derive_key_iv(suite, secret, version)
    return PhaseKeys(
        secret=bytes(secret), aead=make_aead(suite, key), iv=int.from_bytes(iv, "big")
    )


def _rotate(state: CidKeyState) -> None:
    """Move to the next key phase: current -> previous, next -> current."""
    state.previous = state.current
    state.current = state.next
    state.next = _phase_keys(
        state.suite,
        next_generation_secret(state.suite, state.current.secret, state.version),
        state.version,
    )
    state.key_phase ^= 1


def new_key_state(
    suite: CipherSuite,
    secret: bytes,
    *,
    key_phase: int = 0,
    largest_pn: int = -1,
    hp_key: bytes | None = None,
    version: int = 1,
) -> CidKeyState:
    """Build a table entry; ``hp_key`` is needed when ``secret`` is not the first generation."""
    suite = CipherSuite(suite)
    secret = bytes(secret)
    hp = derive_hp_key(suite, secret, version) if hp_key is None else bytes(hp_key)
    return CidKeyState(
        suite=suite,
        hp_key=hp,
        hp=make_header_protection(suite, hp),
        key_phase=key_phase & 1,
        current=_phase_keys(suite, secret, version),
        next=_phase_keys(suite, next_generation_secret(suite, secret, version), version),
        previous=None,
        largest_pn=largest_pn,
        phase_start_pn=largest_pn + 1,
        version=version,
    )


class SoftwareOffloadEngine(CidTableEngine[CidKeyState]):
    """Reference engine on ``cryptography``; sealing is in place in the batch buffer."""

    __slots__ = ()

    def _new_state(
        self,
        suite: CipherSuite,
        secret: bytes,
        key_phase: int,
        largest_pn: int,
        hp_key: bytes | None,
        version: int = 1,
    ) -> CidKeyState:
        return new_key_state(
            suite, secret, key_phase=key_phase, largest_pn=largest_pn, hp_key=hp_key,
            version=version,
        )

    def _key_update(self, state: CidKeyState) -> None:
        _rotate(state)
        state.phase_start_pn = state.largest_pn + 1

    # -- batches --------------------------------------------------------------------

    def seal(self, buf: bytearray, packets: Sequence[tuple[int, int, int, int, bytes]]) -> None:
        """Seal short-header packets in place: ``(offset, header_len, payload_len, pn, cid)``.

        ``buf[offset:offset+header_len]`` is the plaintext header, the payload follows,
        then 16 free bytes for the tag. Unknown cid -> ``KeyError``.
        """
        sealers = self._sealers
        last_cid: bytes | None = None
        state: CidKeyState | None = None
        with memoryview(buf) as view:
            for offset, header_len, payload_len, pn, cid in packets:
                if cid is not last_cid:
                    state = sealers[cid]
                    last_cid = cid
                assert state is not None
                first = (buf[offset] & 0xFB) | (state.key_phase << 2)
                buf[offset] = first
                pn_len = (first & 3) + 1
                body = offset + header_len
                end = body + payload_len + AEAD_TAG_LEN
                pn_offset = body - pn_len
                sample_at = pn_offset + 4
                if sample_at + SAMPLE_LEN > end or end > len(buf):
                    raise ValueError("packet too short for header protection, or overruns buf")
                keys = state.current
                nonce = (keys.iv ^ pn).to_bytes(12, "big")
                header = bytes(view[offset:body])
                if _HAS_ENCRYPT_INTO:
                    keys.aead.encrypt_into(
                        nonce, view[body : end - AEAD_TAG_LEN], header, view[body:end]
                    )
                else:  # pragma: no cover - cryptography < 46
                    plain = view[body : end - AEAD_TAG_LEN]
                    buf[body:end] = keys.aead.encrypt(nonce, plain, header)
                mask = state.hp.mask(view[sample_at : sample_at + SAMPLE_LEN])
                buf[offset] = first ^ (mask[0] & 0x1F)
                for i in range(pn_len):
                    buf[pn_offset + i] ^= mask[1 + i]
                if pn > state.largest_pn:
                    state.largest_pn = pn
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
        """Append up to ``count`` sealed one-STREAM-frame packets of ``data[start:end]``.

        ``cid`` is the sealer's table key; ``dcid`` (default: ``cid``) is the destination
        CID written into every header. The reference: plaintext packets as ``build_bulk``
        built them, then one ``seal``. See ``docs/INTERFACES.md`` (crypto) for the
        layout. Returns the packets built.
        """
        if cid not in self._sealers:
            raise KeyError(cid)
        if dcid is None:
            dcid = cid
        elif type(dcid) is not bytes:
            raise TypeError("dcid must be bytes")
        n = stream_run_count(
            pn, pn_len, stream_id, len(data), start, end, offset, off_len, data_cap, count
        )
        if n == 0:
            return 0
        head = bytes((0x40 | (pn_len - 1),)) + dcid
        header_len = len(head) + pn_len
        sid_bytes = encode_varint(stream_id)
        off_prefix = (0, 0x4000, 0, 0x80000000, 0, 0, 0, 0xC000000000000000)[off_len - 1]
        frame_head = 1 + len(sid_bytes) + off_len + 2
        pn_mask = (1 << (8 * pn_len)) - 1
        packets: list[tuple[int, int, int, int, bytes]] = []
        pos = start
        with memoryview(data) as view:
            for _ in range(n):
                length = min(end - pos, data_cap)
                packet_start = len(buf)
                buf += head
                buf += (pn & pn_mask).to_bytes(pn_len, "big")
                buf.append(0x0E | (fin and pos + length == end))
                buf += sid_bytes
                buf += (off_prefix | (offset + pos - start)).to_bytes(off_len, "big")
                buf += (0x4000 | length).to_bytes(2, "big")
                buf += view[pos : pos + length]
                pad = 4 - pn_len - frame_head - length
                if pad > 0:
                    buf += bytes(pad)
                buf += bytes(AEAD_TAG_LEN)
                packets.append(
                    (packet_start, header_len, len(buf) - packet_start - header_len - AEAD_TAG_LEN,
                     pn, cid)
                )
                pn += 1
                pos += length
        self.seal(buf, packets)
        return n

    def open(
        self, buf: Buffer, packets: Sequence[tuple[int, int, bytes]]
    ) -> list[OpenResult | None]:
        """Open short-header packets ``(offset, length, cid)``; ``None`` for each failure."""
        openers = self._openers
        results: list[OpenResult | None] = []
        append = results.append
        opened = 0
        failures = 0
        with memoryview(buf) as view:
            for offset, length, cid in packets:
                state = openers.get(cid)
                if state is None:
                    failures += 1
                    append(None)
                    continue
                result = self._open_one(state, view, offset, offset + length, len(cid))
                if result is None:
                    failures += 1
                else:
                    opened += 1
                append(result)
        self.opened += opened
        self.open_failures += failures
        return results

    def open_run(self, buf: Buffer, packets: Sequence[tuple[int, int, bytes]]) -> list[RunEntry]:
        """Open a run like ``open()`` and coalesce its STREAM data (see ``RunEntry``)."""
        return coalesce_run(self.open(buf, packets))

    @staticmethod
    def _open_one(
        state: CidKeyState, view: memoryview, offset: int, end: int, cid_len: int
    ) -> OpenResult | None:
        pn_offset = offset + 1 + cid_len
        sample_at = pn_offset + 4
        if end > len(view) or sample_at + SAMPLE_LEN > end or view[offset] & 0x80:
            return None
        mask = state.hp.mask(view[sample_at : sample_at + SAMPLE_LEN])
        first = view[offset] ^ (mask[0] & 0x1F)
        pn_len = (first & 3) + 1
        body = pn_offset + pn_len
        header = bytearray(view[offset:body])
        header[0] = first
        truncated = 0
        for i in range(1 + cid_len, 1 + cid_len + pn_len):
            byte = header[i] ^ mask[i - cid_len]
            header[i] = byte
            truncated = (truncated << 8) | byte
        pn = decode_packet_number(truncated, pn_len << 3, state.largest_pn)
        phase = (first >> 2) & 1
        plain_header = bytes(header)
        if phase == state.key_phase:
            keys = state.current
            rotate = False
        elif state.previous is not None and pn < state.phase_start_pn:
            keys = state.previous
            rotate = False
        else:
            keys = state.next
            rotate = True
        try:
            payload = keys.aead.decrypt(
                (keys.iv ^ pn).to_bytes(12, "big"), view[body:end], plain_header
            )
        except InvalidTag:
            return None
        if rotate:
            _rotate(state)
            state.phase_start_pn = pn
        if pn > state.largest_pn:
            state.largest_pn = pn
        return OpenResult(pn, plain_header, payload, phase, rotate)


_HAS_ENCRYPT_INTO = hasattr(make_aead(CipherSuite.AES_128_GCM_SHA256, bytes(16)), "encrypt_into")
