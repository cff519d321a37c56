"""Snapshot and restore of a running connection (DESIGN.md, "Connectivity migration").

``snapshot_connection`` captures every plain-data field of an established
:class:`~quicflow.transport.connection.Connection` (paths, CIDs, 1-RTT secrets and key
phase, packet number spaces, streams with their buffers, flow control, RTT, congestion
and pacing state, peer transport parameters, deadlines) plus an opaque application state
blob, into a versioned, self-describing document (see :mod:`.codec`; never pickle).
``restore_connection`` rebuilds the connection in another process, programs the offload
engine, declares every packet that was in flight lost (QUIC retransmits frames, so their
frames are queued again) and shifts every absolute time by the capture-to-restore delay.

The blob holds secrets: seal it (``seal_snapshot``, AES-256-GCM) before it rests or
travels anywhere outside the process.

Not captured: the runtime fields (``tls``, packet protectors, ``engine``) and pending
events (drain ``pop_events()`` first; after a restore, streams with data or an end to
read get a ``StreamReadable`` event again), and the Configuration's
``certificate_chain``/``private_key`` (not needed after the handshake; pass the new
process's ``configuration`` to ``restore_connection`` to keep them).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..crypto.epoch import Epoch
from ..crypto.offload import OffloadEngine
from ..crypto.suites import CipherSuite
from ..wire.tparams import PreferredAddress, TransportParameters
from .codec import Codec, SnapshotError
from .config import Configuration
from .congestion import CongestionControl, Pacer
from .connection import Connection, ConnectionCounters, new_seal_key
from .events import StreamReadable
from .rangeset import RangeSet
from .recovery import LossDetection, PnSpace, SentPacket, SpaceState
from .rtt import RttEstimator
from .snapshot_check import check_rangeset, check_recv_stream, check_send_stream, check_tree
from .state import CLOSING, FlowControl, LocalCid, PacketSpace, PeerCid, StreamLimits
from .streams import RecvStream, SendStream, Stream

__all__ = [
    "FORMAT",
    "VERSION",
    "SnapshotError",
    "open_snapshot",
    "restore_connection",
    "seal_snapshot",
    "snapshot_connection",
    "new_snapshot_key",
    "shift_times",
    "snapshot_info",
]

FORMAT = "quicflow-connection-snapshot"
VERSION = 1
#: Authenticated data bound to every sealed snapshot.
SEAL_AAD = b"quicflow-snapshot-v1"
SEAL_KEY_LEN = 32
_NONCE_LEN = 12

#: Fields of a Connection that are runtime objects, rebuilt on restore.
RUNTIME_FIELDS = frozenset(
    {"tls", "send_protectors", "recv_protectors", "engine", "events", "seal_key", "cid_issuer"}
)
#: Configuration fields holding ``cryptography`` key objects, not captured.
CONFIG_SECRET_FIELDS = frozenset(
    {"certificate_chain", "private_key", "token_key", "reset_key", "token_cache"}
)

#: Absolute times (float seconds of the process's monotonic clock), per class, that are
#: shifted by (restore time - capture time). None and infinity stay as they are; the
#: ``last_update_time`` fields use 0.0 for "never" and stay 0.0.
TIME_FIELDS: dict[type[Any], tuple[str, ...]] = {
    Connection: ("now_created", "idle_deadline", "close_deadline", "pacer_deadline",
                 "_now_hint", "key_update_allowed_at", "close_started", "close_resend_at"),
    PacketSpace: ("largest_received_time", "ack_deadline"),
    FlowControl: ("last_update_time",),
    RecvStream: ("last_update_time",),
    LossDetection: ("first_rtt_sample_time", "timer_anchor"),
    SpaceState: ("loss_time", "last_ack_eliciting_time"),
    SentPacket: ("time_sent",),
    CongestionControl: ("recovery_start_time", "cubic_t_epoch"),
    Pacer: ("last_time",),
}
_ZERO_MEANS_NEVER = frozenset({"last_update_time"})

CLASSES: tuple[type[Any], ...] = (
    Connection,
    ConnectionCounters,
    Configuration,
    PacketSpace,
    LocalCid,
    PeerCid,
    FlowControl,
    StreamLimits,
    RangeSet,
    SendStream,
    RecvStream,
    Stream,
    Pacer,
    CongestionControl,
    RttEstimator,
    LossDetection,
    SpaceState,
    SentPacket,
    TransportParameters,
    PreferredAddress,
)
ENUMS = (Epoch, CipherSuite, PnSpace)

CODEC = Codec(
    format_name=FORMAT,
    version=VERSION,
    classes=CLASSES,
    enums=ENUMS,
    exclude={Connection: RUNTIME_FIELDS, Configuration: CONFIG_SECRET_FIELDS},
)


# ---------------------------------------------------------------------- capture


def snapshot_connection(conn: Connection, now: float, app_state: bytes = b"") -> bytes:
    """Capture an established connection (handshake confirmed, not closing) at ``now``.

    ``app_state`` is the application's own per-connection state, returned as is by
    :func:`restore_connection`. The result holds secrets: seal it before it leaves.
    """
    if conn.terminated or conn.state >= CLOSING:
        raise SnapshotError("cannot snapshot a closing or closed connection")
    if not conn.handshake_complete or not conn.handshake_confirmed:
        raise SnapshotError("cannot snapshot a connection before its handshake is confirmed")
    if not conn.one_rtt_ready or not conn.one_rtt_send_secret or not conn.one_rtt_recv_secret:
        raise SnapshotError("cannot snapshot a connection without 1-RTT keys")
    if not conn.spaces[0].discarded or not conn.spaces[1].discarded:
        raise SnapshotError("cannot snapshot while Initial/Handshake keys are in use")
    if not isinstance(app_state, (bytes, bytearray, memoryview)):
        raise TypeError("app_state must be bytes")
    if not math.isfinite(now):
        raise ValueError("now must be a finite time")
    header = {
        "created": float(now),
        "role": "client" if conn.is_client else "server",
        "alpn": conn.alpn_protocol,
    }
    body = {"connection": conn, "app_state": bytes(app_state)}
    return CODEC.encode(header, body)


def snapshot_info(blob: bytes) -> dict[str, Any]:
    """The header of a snapshot (format, version, created, role, alpn), validated."""
    header, _ = CODEC.decode(blob)
    return header


# ---------------------------------------------------------------------- restore


def restore_connection(
    blob: bytes,
    *,
    engine: OffloadEngine,
    now: float,
    configuration: Configuration | None = None,
    seal_key: bytes | None = None,
) -> tuple[Connection, bytes]:
    """Rebuild a captured connection at ``now``; returns ``(connection, app_state)``.

    The connection's 1-RTT keys are installed in ``engine`` under all its CIDs, every
    packet that was in flight is declared lost (its frames are queued again) and all
    deadlines are moved by ``now - capture time``. ``configuration`` (e.g. the new
    endpoint's, with its certificates) replaces the captured one when given; otherwise
    the captured configuration comes back without certificate chain and private key.
    ``seal_key`` is the sealer's key in ``engine`` (default: a fresh process-unique
    key from ``new_seal_key``; the captured one may be in use here).

    To receive datagrams, the endpoint must know the connection's CIDs
    (``conn.host_cid_list()``); ``conn.cid_changes`` lists them as added, so an
    endpoint's CID bookkeeping registers them too.
    """
    header, body = CODEC.decode(blob)
    created = header.get("created")
    if type(created) is not float or not math.isfinite(created):
        raise SnapshotError("snapshot header lacks a valid capture time")
    if type(body) is not dict or set(body) != {"connection", "app_state"}:
        raise SnapshotError("snapshot body is not a connection snapshot")
    conn, app_state = body["connection"], body["app_state"]
    if type(conn) is not Connection or type(app_state) is not bytes:
        raise SnapshotError("snapshot body is not a connection snapshot")
    validate_connection_tree(conn)
    try:
        return _rebuild(conn, app_state, engine, now, created, configuration, seal_key)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError,
            OverflowError) as exc:  # well-typed but inconsistent state
        raise SnapshotError(f"snapshot state is inconsistent: {exc}") from None


def validate_connection_tree(conn: Connection) -> None:
    """Every field of every captured object holds a value of its annotated type
    (:mod:`.snapshot_check`); raises :class:`SnapshotError` otherwise."""
    check_tree(conn, CLASSES, {Connection: RUNTIME_FIELDS, Configuration: CONFIG_SECRET_FIELDS})
    for index, space in enumerate(conn.spaces):
        check_rangeset(space.received.starts, space.received.ends, f"spaces[{index}].received")
        check_recv_stream(space.crypto_recv, f"spaces[{index}].crypto_recv")
        check_send_stream(space.crypto_send, f"spaces[{index}].crypto_send")
    for stream_id, stream in conn.streams.items():
        if stream.stream_id != stream_id:
            raise SnapshotError(f"snapshot stream {stream_id} is filed under another id")
        if stream.recv is not None:
            check_recv_stream(stream.recv, f"stream {stream_id} recv")
        if stream.send is not None:
            check_send_stream(stream.send, f"stream {stream_id} send")


def _rebuild(
    conn: Connection,
    app_state: bytes,
    engine: OffloadEngine,
    now: float,
    created: float,
    configuration: Configuration | None,
    seal_key: bytes | None,
) -> tuple[Connection, bytes]:
    from .receive import program_engine
    from .recovery_glue import on_lost_packets

    # runtime objects
    conn.tls = None
    conn.send_protectors = [None] * 4
    conn.recv_protectors = [None] * 4
    conn.engine = engine
    conn.events = []
    # a fresh local sealer key: the captured one may be in use in this engine
    conn.seal_key = new_seal_key() if seal_key is None else seal_key
    if configuration is not None:
        conn.configuration = configuration

    shift_times(conn, now - created)
    conn._now_hint = now

    for index, epoch in ((0, Epoch.INITIAL), (1, Epoch.HANDSHAKE)):
        space = conn.spaces[index]
        if not space.discarded:  # cannot happen for a blob from snapshot_connection
            space.discarded = True
            space.ack_deadline = None
            conn.loss.discard_epoch(epoch)

    conn.cid_changes = [(True, cid) for cid in conn.host_cid_list()]
    conn.one_rtt_ready = False
    program_engine(conn)

    lost = conn.loss.lose_all()
    if lost:
        on_lost_packets(conn, lost)

    for stream_id, stream in conn.streams.items():
        recv = stream.recv
        if recv is None or recv.fin_read:
            continue
        if recv.readable or recv.at_eof() or recv.reset_code is not None:
            conn.events.append(StreamReadable(stream_id))
    return conn, app_state


def shift_times(root: Any, delta: float) -> None:
    """Add ``delta`` to every absolute time (:data:`TIME_FIELDS`) in the object tree."""
    if delta == 0.0:
        return
    stack = [root]
    seen: set[int] = set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        t = type(obj)
        if t is list or t is tuple:
            stack.extend(v for v in obj if _may_hold_times(v))
            continue
        if t is dict:
            stack.extend(v for v in obj.values() if _may_hold_times(v))
            continue
        if not dataclasses.is_dataclass(obj):
            continue
        for name in TIME_FIELDS.get(t, ()):
            value = getattr(obj, name)
            if value is None or not math.isfinite(value):
                continue
            if value == 0.0 and name in _ZERO_MEANS_NEVER:
                continue
            setattr(obj, name, value + delta)
        for f in dataclasses.fields(obj):
            if t is Connection and f.name in RUNTIME_FIELDS:
                continue
            value = getattr(obj, f.name)
            if _may_hold_times(value):
                stack.append(value)


#: Dataclasses known to hold no absolute time (not walked).
_NO_TIMES = frozenset(
    {RangeSet, SendStream, ConnectionCounters, Configuration, TransportParameters, RttEstimator}
)


def _may_hold_times(value: Any) -> bool:
    t = type(value)
    if t is list or t is tuple or t is dict or t in TIME_FIELDS:
        return True
    return t not in _NO_TIMES and dataclasses.is_dataclass(value) and not isinstance(value, type)


# ---------------------------------------------------------------------- sealing


def new_snapshot_key() -> bytes:
    """A fresh random 32-byte key for :func:`seal_snapshot`."""
    return os.urandom(SEAL_KEY_LEN)


def seal_snapshot(blob: bytes, key: bytes) -> bytes:
    """Encrypt and authenticate a snapshot with AES-256-GCM: nonce (12) || ciphertext."""
    aead = _aead(key)
    nonce = os.urandom(_NONCE_LEN)
    return nonce + aead.encrypt(nonce, bytes(blob), SEAL_AAD)


def open_snapshot(sealed: bytes, key: bytes) -> bytes:
    """Decrypt a sealed snapshot; :class:`SnapshotError` for a wrong key or tampering."""
    aead = _aead(key)
    data = bytes(sealed)
    if len(data) < _NONCE_LEN + 16:
        raise SnapshotError("sealed snapshot too short")
    try:
        return aead.decrypt(data[:_NONCE_LEN], data[_NONCE_LEN:], SEAL_AAD)
    except InvalidTag:
        raise SnapshotError(
            "sealed snapshot failed authentication (wrong key or tampered)"
        ) from None


def _aead(key: bytes) -> AESGCM:
    if len(key) != SEAL_KEY_LEN:
        raise ValueError(f"snapshot key must be {SEAL_KEY_LEN} bytes (AES-256-GCM)")
    return AESGCM(bytes(key))
