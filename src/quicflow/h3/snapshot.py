"""Capture and restore of an :class:`H3Connection`'s state (plain JSON-able data).

Only a connection made with ``capturable=True`` can be captured: then neither side has a
QPACK dynamic table (we advertised QPACK_MAX_TABLE_CAPACITY 0 and QPACK_BLOCKED_STREAMS
0; our encoder uses none), so pylsqpack's encoder and decoder hold nothing a fresh pair
would not, and everything else (stream ids, the peer's SETTINGS, GOAWAY, each request
stream's parse state and partial frame, the unidirectional streams' partial input, an
incomplete instruction of the peer's decoder stream) is plain data.

:func:`capture_h3` refuses (``H3CaptureError``, a ``SnapshotError``) what it cannot
capture whole: a connection not in capturable mode, not started, failed, with a field
section blocked on the encoder stream, or whose peer sent encoder instructions a decoder
without a table cannot hold. :func:`restore_h3` checks every field before it installs
anything. Datagrams are not state: those unread are dropped, like a lost packet.
"""

from __future__ import annotations

import base64
from dataclasses import fields
from typing import Any

from ..transport.codec import SnapshotError
from . import frames as F
from .connection import H3Connection, H3Counters, RequestState, UniState

FORMAT = 1


class H3CaptureError(SnapshotError):
    """An HTTP/3 connection's state cannot be captured (or a captured one is malformed)."""


def b64(data: bytes | bytearray) -> str:
    return base64.b64encode(bytes(data)).decode("ascii")


def unb64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise H3CaptureError("malformed HTTP/3 state: bytes expected")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise H3CaptureError("malformed HTTP/3 state: bad base64") from exc


def _parser(p: F.FrameParser) -> dict[str, Any]:
    return {"max": p.max_frame_size, "buf": b64(p.buf), "type": p.frame_type,
            "remaining": p.remaining, "payload": b64(p.payload)}


def _int(d: Any, key: str, *, none: bool = False) -> Any:
    value = d.get(key) if isinstance(d, dict) else None
    if value is None and none:
        return None
    if type(value) is not int:
        raise H3CaptureError(f"malformed HTTP/3 state: {key} is not an integer")
    return value


def _bool(d: dict[str, Any], key: str) -> bool:
    value = d.get(key)
    if type(value) is not bool:
        raise H3CaptureError(f"malformed HTTP/3 state: {key} is not a boolean")
    return value


def _unparser(d: Any) -> F.FrameParser:
    if not isinstance(d, dict):
        raise H3CaptureError("malformed HTTP/3 state: frame parser")
    p = F.FrameParser(_int(d, "max"))
    p.buf = bytearray(unb64(d.get("buf")))
    p.frame_type = _int(d, "type")
    p.remaining = _int(d, "remaining")
    p.payload = bytearray(unb64(d.get("payload")))
    return p


def capture_h3(h3: H3Connection) -> dict[str, Any]:
    """The JSON-able state of ``h3``; raises :class:`H3CaptureError` when it cannot be
    captured whole."""
    if not h3.capturable:
        raise H3CaptureError("HTTP/3 connection uses a QPACK dynamic table (not capturable "
                             "mode): its QPACK state cannot be captured")
    if not h3.started or h3.failed:
        raise H3CaptureError("HTTP/3 connection not started or failed")
    if h3.qpack_encoder_dirty:
        raise H3CaptureError("the peer sent QPACK encoder instructions beyond capacity 0")
    if any(st.blocked for st in h3.requests.values()):
        raise H3CaptureError("a field section is blocked on the QPACK encoder stream")
    requests = [{
        "id": st.stream_id, "parser": _parser(st.parser), "credit": st.credit,
        "local": st.local, "headers_done": st.headers_done,
        "trailers_done": st.trailers_done, "ended": st.ended, "send_done": st.send_done,
        "is_connect": st.is_connect, "head": st.head, "expected_length": st.expected_length,
        "body_received": st.body_received,
    } for st in h3.requests.values()]
    uni = [{
        "id": us.stream_id, "type": us.stream_type, "buf": b64(us.buf),
        "parser": None if us.parser is None else _parser(us.parser),
        "settings_seen": us.settings_seen,
    } for us in h3.uni.values()]
    c = h3.counters
    return {
        "format": FORMAT,
        "is_client": h3.is_client,
        "max_field_section_size": h3.max_field_section_size,
        "enable_connect_protocol": h3.enable_connect_protocol,
        "enable_datagram": h3.enable_datagram,
        "stream_buffer": h3.stream_buffer,
        "ids": [h3.control_stream_id, h3.encoder_stream_id, h3.decoder_stream_id,
                h3.peer_control_stream_id, h3.peer_encoder_stream_id,
                h3.peer_decoder_stream_id],
        "peer_settings": None if h3.peer_settings is None else sorted(
            h3.peer_settings.items()),
        "goaway_sent": h3.goaway_sent,
        "goaway_received": h3.goaway_received,
        "max_push_id_received": h3.max_push_id_received,
        "peer_capacity_set": h3.peer_capacity_set,
        "max_peer_bidi": h3.max_peer_bidi,
        "decoder_partial": b64(h3.decoder_partial),
        "counters": {f.name: getattr(c, f.name) for f in fields(c)},
        "requests": requests,
        "uni": uni,
    }


def restore_h3(h3: H3Connection, state: Any) -> None:
    """Install a captured state into ``h3`` (a fresh, capturable connection over the
    restored transport connection); nothing is installed when a field is malformed."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise H3CaptureError("not a captured HTTP/3 state (unknown format)")
    if not h3.capturable:
        raise H3CaptureError("HTTP/3 state restored into a connection with a QPACK table")
    if _bool(state, "is_client") != h3.is_client:
        raise H3CaptureError("HTTP/3 state of the other role")
    ids = state.get("ids")
    if not isinstance(ids, list) or len(ids) != 6 or not all(
        i is None or type(i) is int for i in ids
    ):
        raise H3CaptureError("malformed HTTP/3 state: stream ids")
    settings = state.get("peer_settings")
    peer_settings: dict[int, int] | None = None
    if settings is not None:
        if not isinstance(settings, list) or not all(
            isinstance(kv, list) and len(kv) == 2 and all(type(x) is int for x in kv)
            for kv in settings
        ):
            raise H3CaptureError("malformed HTTP/3 state: peer settings")
        peer_settings = {k: v for k, v in settings}
    counters_in = state.get("counters")
    if not isinstance(counters_in, dict):
        raise H3CaptureError("malformed HTTP/3 state: counters")
    counters = H3Counters(**{f.name: _int(counters_in, f.name)
                             for f in fields(H3Counters)})
    requests: dict[int, RequestState] = {}
    for d in state.get("requests") or ():
        st = RequestState(_int(d, "id"), _unparser(d.get("parser")), _int(d, "credit"),
                          _bool(d, "local"))
        for key in ("headers_done", "trailers_done", "ended", "send_done", "is_connect"):
            setattr(st, key, _bool(d, key))
        st.head = d.get("head") is True  # (absent in older captures)
        st.expected_length = _int(d, "expected_length", none=True)
        st.body_received = _int(d, "body_received")
        requests[st.stream_id] = st
    uni: dict[int, UniState] = {}
    for d in state.get("uni") or ():
        if not isinstance(d, dict):
            raise H3CaptureError("malformed HTTP/3 state: unidirectional stream")
        raw = d.get("parser")
        us = UniState(_int(d, "id"), _int(d, "type"), bytearray(unb64(d.get("buf"))),
                      None if raw is None else _unparser(raw), _bool(d, "settings_seen"))
        uni[us.stream_id] = us
    scalars = {
        "max_field_section_size": _int(state, "max_field_section_size"),
        "stream_buffer": _int(state, "stream_buffer"),
        "goaway_sent": _int(state, "goaway_sent", none=True),
        "goaway_received": _int(state, "goaway_received", none=True),
        "max_push_id_received": _int(state, "max_push_id_received", none=True),
        "max_peer_bidi": _int(state, "max_peer_bidi"),
        "enable_connect_protocol": _bool(state, "enable_connect_protocol"),
        "enable_datagram": _bool(state, "enable_datagram"),
    }
    partial = unb64(state.get("decoder_partial"))
    # everything checked: install
    for key, value in scalars.items():
        setattr(h3, key, value)
    (h3.control_stream_id, h3.encoder_stream_id, h3.decoder_stream_id,
     h3.peer_control_stream_id, h3.peer_encoder_stream_id, h3.peer_decoder_stream_id) = ids
    h3.peer_settings = peer_settings
    if peer_settings is not None:  # the peer's capacity does not matter: we use no table
        h3.encoder.apply_settings(0, 0)
    h3.counters = counters
    h3.requests = requests
    h3.uni = uni
    h3.decoder_partial = bytearray(partial)
    h3.peer_capacity_set = state.get("peer_capacity_set") is True  # (absent: older captures)
    h3.started = True


__all__ = ["FORMAT", "H3CaptureError", "b64", "capture_h3", "restore_h3", "unb64"]
