"""qlog events of one connection (draft-ietf-quic-qlog-main-schema, -quic-events).

The sans-I/O core only builds event records and hands them to a sink
(:class:`QlogSink`, e.g. ``quicflow.aio.qlogfile.QlogFileWriter``), which decides where
they go; nothing here touches a file or a clock (times are the core's ``now``). A
connection without a trace (``Connection.qlog is None``, the default) pays one ``if``
per packet built or opened; with one, the batch fast paths (``bulk.py``,
``receive_bulk.py``) step aside so that every packet is seen with its frames.

Events (names as the brief for quicflow fixes them; data fields as in the drafts):
``connectivity:connection_started`` / ``connection_closed``, ``quic:packet_sent`` /
``packet_received`` (header with packet_type, packet_number, dcid [, scid], raw length,
frames with the drafts' frame_type names and fields), ``recovery:packet_lost``,
``recovery:metrics_updated`` (cwnd, bytes_in_flight, smoothed_rtt, latest_rtt, min_rtt,
rtt_variance; milliseconds; only the values that changed), ``security:key_updated``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..crypto.epoch import Epoch
from ..wire import frames as F
from ..wire.errors import WireError

if TYPE_CHECKING:
    from .connection import Connection
    from .events import ConnectionTerminated
    from .recovery import SentPacket

QLOG_VERSION = "0.3"
PACKET_TYPES = {Epoch.INITIAL: "initial", Epoch.ZERO_RTT: "0RTT",
                Epoch.HANDSHAKE: "handshake", Epoch.ONE_RTT: "1RTT"}
_EPOCH_KEY = {Epoch.INITIAL: "initial", Epoch.ZERO_RTT: "0rtt",
              Epoch.HANDSHAKE: "handshake", Epoch.ONE_RTT: "1rtt"}


class QlogSink(Protocol):
    """Where a connection's qlog records go."""

    def header(self, record: dict[str, Any]) -> None:
        """The first record (the file's header)."""

    def event(self, time: float, name: str, data: dict[str, Any]) -> None:
        """One event; ``time`` is the core's clock (seconds)."""

    def close(self, keep: bool = True) -> None:
        """No more events; ``keep=False``: the connection never really existed (a
        forged Initial), leave nothing behind."""


class QlogTrace:
    """A connection's trace: its sink and what metrics_updated last reported."""

    __slots__ = ("sink", "reference", "metrics")

    def __init__(self, sink: QlogSink, reference: float) -> None:
        self.sink = sink
        self.reference = reference  # the core's time of the connection's start
        self.metrics: dict[str, float] = {}

    def event(self, now: float, name: str, data: dict[str, Any]) -> None:
        self.sink.event(round((now - self.reference) * 1000.0, 3), name, data)


def start(conn: Connection, sink: QlogSink, now: float, *, wall_time_ms: float,
          local_address: tuple[Any, ...] | None = None, name: str = "quicflow") -> None:
    """Attach a trace to ``conn`` (before its first packet): the header record,
    ``connectivity:connection_started`` and the Initial keys' ``security:key_updated``."""
    trace = QlogTrace(sink, now)
    conn.qlog = trace
    role = "client" if conn.is_client else "server"
    odcid = conn.original_dcid.hex()
    sink.header({
        "qlog_version": QLOG_VERSION,
        "qlog_format": "JSON-SEQ",
        "title": f"quicflow {role} {odcid}",
        "trace": {
            "vantage_point": {"type": role, "name": name},
            "common_fields": {"ODCID": odcid, "group_id": odcid, "time_format": "relative",
                              "reference_time": wall_time_ms, "protocol_type": ["QUIC"]},
        },
    })
    peer = conn.peer_address
    local = local_address or ("", 0)
    src, dst = (local, peer) if conn.is_client else (peer, local)
    trace.event(now, "connectivity:connection_started", {
        "ip_version": "ipv6" if ":" in str(peer[0]) else "ipv4",
        "src_ip": str(src[0]), "dst_ip": str(dst[0]),
        "src_port": int(src[1]), "dst_port": int(dst[1]), "protocol": "QUIC",
        "src_cid": conn.initial_scid.hex() if conn.is_client else conn.peer_cid.hex(),
        "dst_cid": conn.original_dcid.hex(),
    })
    for owner in ("client", "server"):
        key_updated(conn, now, Epoch.INITIAL, owner == role, "tls", owner=owner)


def key_updated(conn: Connection, now: float, epoch: Epoch, is_send: bool, trigger: str,
                *, owner: str | None = None, key_phase: int | None = None) -> None:
    """``security:key_updated``: keys of ``epoch`` for one direction ("tls",
    "local_update" or "remote_update")."""
    trace = conn.qlog
    if trace is None:
        return
    if owner is None:
        ours = "client" if conn.is_client else "server"
        owner = ours if is_send else ("server" if conn.is_client else "client")
    data: dict[str, Any] = {"key_type": f"{owner}_{_EPOCH_KEY[epoch]}_secret",
                            "trigger": trigger}
    if key_phase is not None:
        data["key_phase"] = key_phase
    trace.event(now, "security:key_updated", data)


def frame_records(payload: bytes | bytearray | memoryview, ack_exponent: int
                  ) -> list[dict[str, Any]]:
    """The frames of a plaintext packet payload as qlog QuicFrame records."""
    try:
        frames = F.parse_frames(bytes(payload))
    except WireError:
        return [{"frame_type": "unknown"}]
    return [_frame(frame, ack_exponent) for frame in frames]


def _frame(f: Any, ack_exponent: int) -> dict[str, Any]:  # noqa: C901 - one case per type
    cls = type(f)
    if cls is F.Stream:
        return {"frame_type": "stream", "stream_id": f.stream_id, "offset": f.offset,
                "length": len(f.data), "fin": f.fin}
    if cls is F.Ack:
        out: dict[str, Any] = {
            "frame_type": "ack", "ack_delay": (f.ack_delay << ack_exponent) / 1000.0,
            "acked_ranges": [[lo, hi] for lo, hi in reversed(f.ranges)],
        }
        if f.ecn is not None:
            out.update(ect0=f.ecn[0], ect1=f.ecn[1], ce=f.ecn[2])
        return out
    if cls is F.Padding:
        return {"frame_type": "padding", "length": f.length, "payload_length": f.length}
    if cls is F.Ping:
        return {"frame_type": "ping"}
    if cls is F.Crypto:
        return {"frame_type": "crypto", "offset": f.offset, "length": len(f.data)}
    if cls is F.MaxData:
        return {"frame_type": "max_data", "maximum": f.maximum}
    if cls is F.MaxStreamData:
        return {"frame_type": "max_stream_data", "stream_id": f.stream_id,
                "maximum": f.maximum}
    if cls is F.MaxStreams:
        return {"frame_type": "max_streams", "maximum": f.maximum,
                "stream_type": "bidirectional" if f.bidi else "unidirectional"}
    if cls is F.DataBlocked:
        return {"frame_type": "data_blocked", "limit": f.limit}
    if cls is F.StreamDataBlocked:
        return {"frame_type": "stream_data_blocked", "stream_id": f.stream_id,
                "limit": f.limit}
    if cls is F.StreamsBlocked:
        return {"frame_type": "streams_blocked", "limit": f.limit,
                "stream_type": "bidirectional" if f.bidi else "unidirectional"}
    if cls is F.NewConnectionId:
        return {"frame_type": "new_connection_id", "sequence_number": f.sequence,
                "retire_prior_to": f.retire_prior_to, "connection_id_length": len(f.cid),
                "connection_id": f.cid.hex(), "stateless_reset_token": f.reset_token.hex()}
    if cls is F.RetireConnectionId:
        return {"frame_type": "retire_connection_id", "sequence_number": f.sequence}
    if cls is F.PathChallenge:
        return {"frame_type": "path_challenge", "data": f.data.hex()}
    if cls is F.PathResponse:
        return {"frame_type": "path_response", "data": f.data.hex()}
    if cls is F.ConnectionClose:
        app = f.frame_type is None
        close: dict[str, Any] = {
            "frame_type": "connection_close",
            "error_space": "application" if app else "transport",
            "error_code": f.error_code, "raw_error_code": f.error_code,
            "reason": f.reason.decode("utf-8", "replace"),
        }
        if not app:
            close["trigger_frame_type"] = f.frame_type
        return close
    if cls is F.ResetStream:
        return {"frame_type": "reset_stream", "stream_id": f.stream_id,
                "error_code": f.error_code, "final_size": f.final_size}
    if cls is F.StopSending:
        return {"frame_type": "stop_sending", "stream_id": f.stream_id,
                "error_code": f.error_code}
    if cls is F.NewToken:
        return {"frame_type": "new_token",
                "token": {"raw": {"length": len(f.token), "data": f.token.hex()}}}
    if cls is F.HandshakeDone:
        return {"frame_type": "handshake_done"}
    if cls is F.Datagram:
        return {"frame_type": "datagram", "length": len(f.data)}
    if cls is F.AckFrequency:  # (draft-ietf-quic-ack-frequency's qlog fields)
        return {"frame_type": "ack_frequency", "sequence_number": f.sequence,
                "ack_eliciting_threshold": f.threshold,
                "request_max_ack_delay": f.max_ack_delay / 1000.0,
                "reordering_threshold": f.reordering}
    if cls is F.ImmediateAck:
        return {"frame_type": "immediate_ack"}
    return {"frame_type": "unknown"}


def _header(conn: Connection, epoch: Epoch, pn: int, dcid: bytes, scid: bytes | None
            ) -> dict[str, Any]:
    header: dict[str, Any] = {"packet_type": PACKET_TYPES[epoch], "packet_number": pn,
                              "dcid": dcid.hex()}
    if scid is not None:
        header["scid"] = scid.hex()
    return header


def packet_sent(conn: Connection, now: float, epoch: Epoch, pn: int,
                payload: bytes | bytearray | memoryview, size: int) -> None:
    """``quic:packet_sent`` for a packet we built (``payload``: its plaintext)."""
    trace = conn.qlog
    assert trace is not None
    scid = None if epoch == Epoch.ONE_RTT else conn.initial_scid
    trace.event(now, "quic:packet_sent", {
        "header": _header(conn, epoch, pn, conn.peer_cid, scid),
        "raw": {"length": size, "payload_length": len(payload)},
        "frames": frame_records(payload, conn.configuration.ack_delay_exponent
                                if epoch == Epoch.ONE_RTT else 3),
    })


def packet_received(conn: Connection, now: float, epoch: Epoch, pn: int,
                    payload: bytes | bytearray | memoryview, size: int, dcid: bytes,
                    scid: bytes | None) -> None:
    """``quic:packet_received`` for a packet we opened."""
    trace = conn.qlog
    assert trace is not None
    exponent = 3
    if epoch == Epoch.ONE_RTT and conn.peer_params is not None:
        exponent = conn.peer_params.ack_delay_exponent
    trace.event(now, "quic:packet_received", {
        "header": _header(conn, epoch, pn, dcid, scid),
        "raw": {"length": size, "payload_length": len(payload)},
        "frames": frame_records(payload, exponent),
    })


def packets_lost(conn: Connection, now: float, packets: list[SentPacket]) -> None:
    """``recovery:packet_lost`` for every packet of ``packets`` (records or batches)."""
    trace = conn.qlog
    assert trace is not None
    for p in packets:
        for pn in range(p.pn, p.pn + p.count):
            trace.event(now, "recovery:packet_lost", {
                "header": {"packet_type": PACKET_TYPES[p.epoch], "packet_number": pn},
                "trigger": "pmtu_probe" if p.pmtu_probe else "reordering_threshold",
            })


def metrics_updated(conn: Connection, now: float) -> None:
    """``recovery:metrics_updated`` with the values that changed since the last one."""
    trace = conn.qlog
    assert trace is not None
    rtt = conn.rtt
    current = {
        "cwnd": conn.cc.cwnd,
        "bytes_in_flight": conn.cc.bytes_in_flight,
        "smoothed_rtt": round(rtt.smoothed_rtt * 1000.0, 3),
        "latest_rtt": round(rtt.latest_rtt * 1000.0, 3),
        "min_rtt": round(rtt.min_rtt * 1000.0, 3),
        "rtt_variance": round(rtt.rttvar * 1000.0, 3),
    }
    last = trace.metrics
    changed = {k: v for k, v in current.items() if last.get(k) != v}
    if changed:
        last.update(changed)
        trace.event(now, "recovery:metrics_updated", changed)


def connection_closed(conn: Connection, now: float, event: ConnectionTerminated) -> None:
    """``connectivity:connection_closed`` from the connection's ConnectionTerminated."""
    trace = conn.qlog
    if trace is None:
        return
    data: dict[str, Any] = {"owner": "remote" if event.by_peer else "local",
                            "reason": event.reason}
    if event.reason == "idle timeout":
        data["trigger"] = "idle_timeout"
    elif event.frame_type is None:
        data["application_code"] = event.error_code
        data["trigger"] = "application"
    else:
        data["connection_code"] = event.error_code
        data["trigger"] = "error" if event.error_code else "clean"
    trace.event(now, "connectivity:connection_closed", data)


def stop(conn: Connection, keep: bool = True) -> None:
    """Close the connection's trace (its sink) once the connection is forgotten."""
    trace = conn.qlog
    if trace is not None:
        conn.qlog = None
        trace.sink.close(keep)
