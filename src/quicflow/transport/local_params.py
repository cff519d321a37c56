"""Our transport parameters as bytes, made per connection from a per-configuration part.

Of the parameters a connection sends, only the connection IDs and the stateless reset
token are its own; the integers, disable_active_migration and version_information come
from the configuration and the version. :func:`encode_local_parameters` encodes that
shared tail once per set of values (not per handshake) and puts the connection's IDs in
front: the same bytes as ``encode_transport_parameters(conn.local_params())``, whose
order (CIDs, token, integers, flags, versions) it follows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire.tparams import encode_transport_parameters
from .ack_frequency import local_min_ack_delay, on_local_parameters

if TYPE_CHECKING:
    from .connection import Connection

#: the shared tail by everything it is made of (a few configurations per process)
_TAILS: dict[tuple[object, ...], bytes] = {}
_MAX_TAILS = 64
_MAX_CID_LEN = 20


def _cid_param(out: bytearray, pid: int, cid: bytes) -> None:
    # (ids 0x00, 0x0F, 0x10 and lengths <= 20: one-byte varints)
    if len(cid) > _MAX_CID_LEN:
        raise ValueError("connection ID parameter longer than 20 bytes")
    out.append(pid)
    out.append(len(cid))
    out += cid


def encode_local_parameters(conn: Connection) -> bytes:
    """``encode_transport_parameters(conn.local_params())``, byte for byte."""
    cfg = conn.configuration
    on_local_parameters(conn, local_min_ack_delay(cfg))
    if cfg.preferred_address is not None or cfg.preferred_address_v6 is not None:
        # the preferred address carries a CID of the connection: no shared tail
        return encode_transport_parameters(conn.local_params())
    server = not conn.is_client
    key = (server, conn.version, tuple(cfg.versions), cfg.idle_timeout, cfg.max_data,
           cfg.max_stream_data, cfg.max_streams_bidi, cfg.max_streams_uni,
           cfg.ack_delay_exponent, cfg.max_ack_delay, cfg.active_connection_id_limit,
           cfg.max_datagram_frame_size, server and cfg.disable_active_migration,
           cfg.ack_frequency)
    tail = _TAILS.get(key)
    if tail is None:
        tp = conn.local_params()
        tp.original_destination_connection_id = None
        tp.initial_source_connection_id = None
        tp.retry_source_connection_id = None
        tp.stateless_reset_token = None
        tail = encode_transport_parameters(tp)
        if len(_TAILS) >= _MAX_TAILS:
            _TAILS.clear()
        _TAILS[key] = tail
    out = bytearray()
    if server:
        _cid_param(out, 0x00, conn.original_dcid)
    _cid_param(out, 0x0F, conn.initial_scid)
    if server:
        if conn.retry_scid is not None:
            _cid_param(out, 0x10, conn.retry_scid)
        token = conn.host_cids[0].reset_token
        if len(token) != 16:
            raise ValueError("stateless_reset_token must be 16 bytes")
        out += b"\x02\x10"
        out += token
    out += tail
    return bytes(out)
