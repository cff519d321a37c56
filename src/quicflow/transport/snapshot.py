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
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..crypto.epoch import Epoch
from ..crypto.offload import OffloadEngine
from ..crypto.suites import CipherSuite, suite_hash_len, suite_key_len
from ..wire.tparams import PreferredAddress, TransportParameters
from .ack_frequency import AckFrequency
from .codec import Codec, SnapshotError
from .config import Configuration
from .congestion import CongestionControl, Pacer
from .connection import Connection, ConnectionCounters, new_seal_key
from .events import StreamReadable
from .keyphase import DirectionKeys, capture_keys, install_keys
from .path import PATH_FIELDS, Path, PathProbe, apply_path, current_path
from .pmtud import Pmtud
from .rangeset import RangeSet
from .recovery import LossDetection, PnSpace, SentPacket, SpaceState
from .rtt import RttEstimator
from .snapshot_check import check_rangeset, check_recv_stream, check_send_stream, check_tree
from .snapshot_guard import SnapshotGuard
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
    "release_connection",
    "capture_sealed",
    "restore_sealed",
    "SnapshotGuard",
]

FORMAT = "quicflow-connection-snapshot"
#: 3 (2026-11-30): a SendStream holds chunks (was one buffer), a discarded space's CRYPTO
#: streams are None, a server's NEW_TOKEN is sealed when first sent. A process reading
#: another version refuses the snapshot with SnapshotError (the connection stays where
#: it was), so an old and a new build never hand connections to each other.
#: 4 (2026-12-01): byte strings of 1 KiB or more (buffered stream data) follow the
#: compressed document raw (:mod:`.codec`); capture of 17 MB of buffered data took 748 ms.
VERSION = 4
#: Authenticated data bound to every sealed snapshot.
SEAL_AAD = b"quicflow-snapshot-v2"
SEAL_KEY_LEN = 32
_NONCE_LEN = 12

#: Fields of a Connection that are runtime objects, rebuilt on restore.
RUNTIME_FIELDS = frozenset(
    {"tls", "send_protectors", "recv_protectors", "engine", "events", "seal_key", "cid_issuer",
     "qlog"}
)
#: Configuration fields holding ``cryptography`` key objects, keys, caches and hooks:
#: not captured.
CONFIG_SECRET_FIELDS = frozenset(
    {"certificate_chain", "private_key", "token_key", "reset_key", "token_cache",
     "ticket_key", "session_ticket_cache", "early_data_hook", "strike_register"}
)

#: Absolute times (float seconds of the process's monotonic clock), per class, that are
#: shifted by (restore time - capture time). None and infinity stay as they are; the
#: ``last_update_time`` fields and ``FlowControl.peer_blocked_time`` use 0.0 for "never"
#: and stay 0.0, and so does
#: ``Pmtud.next_at``'s 0.0 ("the first send after confirmation starts the one-PTO wait
#: before the first probe": a connection captured before that send still waits after a
#: restore, instead of probing at once).
TIME_FIELDS: dict[type[Any], tuple[str, ...]] = {
    Connection: ("now_created", "idle_deadline", "close_deadline", "pacer_deadline",
                 "_now_hint", "key_update_allowed_at", "close_started", "close_resend_at",
                 "close_answered_at", "path_validation_deadline"),
    PacketSpace: ("largest_received_time", "ack_deadline", "ack_repeat_at"),
    PathProbe: ("started", "next_send", "deadline"),
    FlowControl: ("last_update_time", "peer_blocked_time"),
    RecvStream: ("last_update_time",),
    LossDetection: ("first_rtt_sample_time", "timer_anchor", "path_started"),
    SpaceState: ("loss_time", "last_ack_eliciting_time"),
    SentPacket: ("time_sent",),
    CongestionControl: ("recovery_start_time", "cubic_t_epoch"),
    Pacer: ("last_time",),
    Pmtud: ("next_at",),
}
_ZERO_MEANS_NEVER = frozenset({"last_update_time", "next_at", "peer_blocked_time"})

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
    Path,
    PathProbe,
    DirectionKeys,
    Pmtud,
    AckFrequency,
)
ENUMS = (Epoch, CipherSuite, PnSpace)

CODEC = Codec(
    format_name=FORMAT,
    version=VERSION,
    classes=CLASSES,
    enums=ENUMS,
    # the path (but its peer address, a required field) travels as one Path value
    exclude={Connection: RUNTIME_FIELDS | (PATH_FIELDS - {"peer_address"}),
             Configuration: CONFIG_SECRET_FIELDS},
)
#: What the type checks of a restore leave out: the fields the codec does not capture.
_CHECK_SKIP: dict[type[Any], frozenset[str]] = {
    Connection: RUNTIME_FIELDS, Configuration: CONFIG_SECRET_FIELDS,
}


# ---------------------------------------------------------------------- capture


def snapshot_connection(
    conn: Connection,
    now: float,
    app_state: bytes = b"",
    *,
    local_address: tuple[Any, ...] | None = None,
    wall_time: float | None = None,
    release: bool = True,
) -> bytes:
    """Capture an established connection (handshake confirmed, not closing) at ``now``.

    ``app_state`` is the application's own per-connection state, returned as is by
    :func:`restore_connection`. The result holds secrets: seal it before it leaves.

    Every capture gets the next serial of the connection (``capture_id``/``serial`` in
    the header; see :class:`~.snapshot_guard.SnapshotGuard`), and ``wall_time`` (the
    caller's ``time.time()``) bounds its age. With ``release`` (the default) the
    connection is handed off: it is terminated here without a CONNECTION_CLOSE, its keys
    leave the engine, and it never sends again, so only the restored copy goes on with
    its packet numbers. ``release=False`` is for tests and read-only inspection.
    Refuses (:class:`SnapshotError`) anything it cannot capture whole.
    """
    if conn.released:
        raise SnapshotError("connection was already captured and handed off")
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
    if not math.isfinite(now) or (wall_time is not None and not math.isfinite(wall_time)):
        raise ValueError("now and wall_time must be finite times")
    if conn.events:
        raise SnapshotError("connection has undelivered events: pop_events() first")
    send_keys, recv_keys = capture_keys(conn)
    for space in conn.spaces:
        if space.crypto_send is not None:
            space.crypto_send.compact()
    for stream in conn.streams.values():
        if stream.send is not None:
            stream.send.compact()
    path = current_path(conn, local_address)
    if not conn.capture_id:
        conn.capture_id = os.urandom(16)
    conn.capture_serial += 1
    header = {
        "created": float(now),
        "role": "client" if conn.is_client else "server",
        "alpn": conn.alpn_protocol,
        "capture_id": conn.capture_id.hex(),
        "serial": conn.capture_serial,
        "wall_time": None if wall_time is None else float(wall_time),
    }
    body = {
        "connection": conn,
        "path": path,
        "previous_path": conn.previous_path,
        "keys": [send_keys, recv_keys],
        "app_state": bytes(app_state),
    }
    blob = CODEC.encode(header, body)
    if release:
        release_connection(conn)
    return blob


def release_connection(conn: Connection) -> None:
    """Hand a captured connection off: terminated here, silently (no CONNECTION_CLOSE,
    which would end the restored copy too), its CIDs announced as removed and its keys
    taken out of the engine, so it never seals another packet."""
    conn.released = True
    conn.close_pending = False
    conn._terminate()


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
    return _restore_decoded(header, body, engine=engine, now=now, configuration=configuration,
                            seal_key=seal_key)


def _restore_decoded(
    header: dict[str, Any],
    body: Any,
    *,
    engine: OffloadEngine,
    now: float,
    configuration: Configuration | None,
    seal_key: bytes | None = None,
    commit: Callable[[], None] | None = None,
) -> tuple[Connection, bytes]:
    """Validate the decoded document, call ``commit`` (nothing is used before), rebuild."""
    created = header.get("created")
    if type(created) is not float or not math.isfinite(created):
        raise SnapshotError("snapshot header lacks a valid capture time")
    if type(body) is not dict or set(body) != _BODY_KEYS:
        raise SnapshotError("snapshot body is not a connection snapshot")
    conn, app_state = body["connection"], body["app_state"]
    path, previous, keys = body["path"], body["previous_path"], body["keys"]
    if type(conn) is not Connection or type(app_state) is not bytes:
        raise SnapshotError("snapshot body is not a connection snapshot")
    if type(path) is not Path or (previous is not None and type(previous) is not Path):
        raise SnapshotError("snapshot body holds no valid path")
    if (type(keys) is not list or len(keys) != 2
            or any(type(k) is not DirectionKeys for k in keys)):
        raise SnapshotError("snapshot body holds no valid 1-RTT key state")
    validate_connection_tree(conn)
    validate_path_and_keys(conn, path, previous, keys[0], keys[1])
    if commit is not None:
        commit()
    try:
        return _rebuild(conn, app_state, path, previous, keys[0], keys[1], engine, now, created,
                        configuration, seal_key)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError,
            OverflowError) as exc:  # well-typed but inconsistent state
        raise SnapshotError(f"snapshot state is inconsistent: {exc}") from None


def validate_connection_tree(conn: Connection) -> None:
    """Every field of every captured object holds a value of its annotated type
    (:mod:`.snapshot_check`); raises :class:`SnapshotError` otherwise."""
    check_tree(conn, CLASSES, _CHECK_SKIP)
    for index, space in enumerate(conn.spaces):
        check_rangeset(space.received.starts, space.received.ends, f"spaces[{index}].received")
        if space.crypto_recv is not None:
            check_recv_stream(space.crypto_recv, f"spaces[{index}].crypto_recv")
        if space.crypto_send is not None:
            check_send_stream(space.crypto_send, f"spaces[{index}].crypto_send")
    for stream_id, stream in conn.streams.items():
        if stream.stream_id != stream_id:
            raise SnapshotError(f"snapshot stream {stream_id} is filed under another id")
        if stream.recv is not None:
            check_recv_stream(stream.recv, f"stream {stream_id} recv")
        if stream.send is not None:
            check_send_stream(stream.send, f"stream {stream_id} send")


def validate_path_and_keys(
    conn: Connection,
    path: Path,
    previous: Path | None,
    send: DirectionKeys,
    recv: DirectionKeys,
) -> None:
    """The snapshot's path values and 1-RTT key state are well-typed and fit the
    connection (key and secret sizes of its cipher suite, phases 0/1, packet numbers);
    raises :class:`SnapshotError` otherwise, before anything is installed."""
    check_tree(path, CLASSES, _CHECK_SKIP)
    if previous is not None:
        check_tree(previous, CLASSES, _CHECK_SKIP)
    check_tree(send, CLASSES, _CHECK_SKIP)
    check_tree(recv, CLASSES, _CHECK_SKIP)
    if tuple(path.peer_address) != tuple(conn.peer_address):
        raise SnapshotError("snapshot path and connection disagree on the peer address")
    for value in (path, previous):
        if value is not None and not (1200 <= value.max_datagram_size <= 65527
                                      and 1200 <= value.mtu_cap <= 65527):
            raise SnapshotError("snapshot path has an invalid datagram size")
    suite = conn.cipher_suite
    for name, keys in (("send", send), ("receive", recv)):
        if keys.key_phase not in (0, 1):
            raise SnapshotError(f"snapshot {name} key phase is not 0 or 1")
        if len(keys.secret) != suite_hash_len(suite) or len(keys.hp_key) != suite_key_len(suite):
            raise SnapshotError(f"snapshot {name} keys do not fit the cipher suite")
        if not -1 <= keys.largest_pn < 1 << 62 or not 0 <= keys.phase_start_pn < 1 << 62:
            raise SnapshotError(f"snapshot {name} keys have an invalid packet number")


def _rebuild(
    conn: Connection,
    app_state: bytes,
    path: Path,
    previous: Path | None,
    send_keys: DirectionKeys,
    recv_keys: DirectionKeys,
    engine: OffloadEngine,
    now: float,
    created: float,
    configuration: Configuration | None,
    seal_key: bytes | None,
) -> tuple[Connection, bytes]:
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
    apply_path(conn, path)
    conn.previous_path = previous

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
    install_keys(conn, send_keys, recv_keys)

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


_BODY_KEYS = frozenset({"connection", "path", "previous_path", "keys", "app_state"})


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
        for name in TIME_FIELDS.get(t, ()):
            value = getattr(obj, name)
            if value is None or not math.isfinite(value):
                continue
            if value == 0.0 and name in _ZERO_MEANS_NEVER:
                continue
            setattr(obj, name, value + delta)
        for name in _walk_fields(t):
            value = getattr(obj, name)
            if _may_hold_times(value):
                stack.append(value)


#: Dataclasses known to hold no absolute time (not walked).
_NO_TIMES = frozenset(
    {RangeSet, SendStream, ConnectionCounters, Configuration, TransportParameters, RttEstimator,
     Path, DirectionKeys}
)
#: Values that never hold a time (rejected at once: most of what a walk meets).
_SCALARS = frozenset({int, float, str, bytes, bytearray, bool, type(None), CipherSuite, Epoch,
                      PnSpace})
_FIELDS_CACHE: dict[type[Any], tuple[str, ...]] = {}


def _walk_fields(t: type[Any]) -> tuple[str, ...]:
    names = _FIELDS_CACHE.get(t)
    if names is None:
        skip = RUNTIME_FIELDS if t is Connection else frozenset()
        names = tuple(f.name for f in dataclasses.fields(t) if f.name not in skip)
        _FIELDS_CACHE[t] = names
    return names


def _may_hold_times(value: Any) -> bool:
    t = type(value)
    if t in _SCALARS or t in _NO_TIMES:
        return False
    if t is list or t is tuple or t is dict or t in TIME_FIELDS:
        return True
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


# ---------------------------------------------------------------------- sealed, single use


def capture_sealed(
    conn: Connection,
    now: float,
    key: bytes,
    app_state: bytes = b"",
    *,
    guard: SnapshotGuard,
    wall_time: float,
    local_address: tuple[Any, ...] | None = None,
) -> bytes:
    """Capture and release ``conn`` and seal the snapshot; ``guard`` notes the capture's
    serial, so this process refuses it and every older capture from now on."""
    blob = snapshot_connection(conn, now, app_state, local_address=local_address,
                               wall_time=wall_time)
    guard.record_capture(conn.capture_id.hex(), conn.capture_serial, wall_time)
    return seal_snapshot(blob, key)


def restore_sealed(
    sealed: bytes,
    key: bytes,
    *,
    guard: SnapshotGuard,
    wall_time: float,
    engine: OffloadEngine,
    now: float,
    configuration: Configuration | None = None,
    seal_key: bytes | None = None,
) -> tuple[Connection, bytes]:
    """Open, check and restore a sealed snapshot, once (``seal_key`` as in
    :func:`restore_connection`: by default a fresh key of this process).

    Refused with :class:`SnapshotError`, before anything of it is used (no engine entry,
    no record change): a wrong key, tampering, truncation, a malformed document, a
    snapshot older than ``guard.max_age`` and a replay (restored before, or older than
    the connection's latest capture known to ``guard``). Accepted snapshots are recorded
    in ``guard`` before the connection is rebuilt.
    """
    header, body = CODEC.decode(open_snapshot(sealed, key))
    capture_id, serial = guard.check(header, wall_time)
    return _restore_decoded(
        header, body, engine=engine, now=now, configuration=configuration, seal_key=seal_key,
        commit=lambda: guard.record_restore(capture_id, serial, wall_time),
    )


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
