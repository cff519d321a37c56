"""QUIC transport parameters (RFC 9000 §18)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from .errors import TransportParameterError, WireError
from .varint import decode_varint, push_varint

__all__ = [
    "DECODE_SPECS",
    "HIGH_SPECS",
    "MIN_ACK_DELAY",
    "SERVER_ONLY_MASK",
    "SERVER_ONLY_PARAMETERS",
    "PreferredAddress",
    "TransportParameters",
    "check_ack_delays",
    "decode_transport_parameters",
    "encode_transport_parameters",
]

ORIGINAL_DESTINATION_CONNECTION_ID = 0x00
MAX_IDLE_TIMEOUT = 0x01
STATELESS_RESET_TOKEN = 0x02
MAX_UDP_PAYLOAD_SIZE = 0x03
INITIAL_MAX_DATA = 0x04
INITIAL_MAX_STREAM_DATA_BIDI_LOCAL = 0x05
INITIAL_MAX_STREAM_DATA_BIDI_REMOTE = 0x06
INITIAL_MAX_STREAM_DATA_UNI = 0x07
INITIAL_MAX_STREAMS_BIDI = 0x08
INITIAL_MAX_STREAMS_UNI = 0x09
ACK_DELAY_EXPONENT = 0x0A
MAX_ACK_DELAY = 0x0B
DISABLE_ACTIVE_MIGRATION = 0x0C
PREFERRED_ADDRESS = 0x0D
ACTIVE_CONNECTION_ID_LIMIT = 0x0E
INITIAL_SOURCE_CONNECTION_ID = 0x0F
RETRY_SOURCE_CONNECTION_ID = 0x10
VERSION_INFORMATION = 0x11  # RFC 9368 §3
MAX_DATAGRAM_FRAME_SIZE = 0x20  # RFC 9221 §3
MIN_ACK_DELAY = 0xFF04DE1B  # draft-ietf-quic-ack-frequency-14 §3 (microseconds)
#: min_ack_delay values of 2^24 microseconds or more are invalid (draft -14 §3)
MIN_ACK_DELAY_LIMIT = 1 << 24

#: Parameters only a server may send (RFC 9000 §18.2).
SERVER_ONLY_PARAMETERS = frozenset(
    {
        ORIGINAL_DESTINATION_CONNECTION_ID,
        STATELESS_RESET_TOKEN,
        PREFERRED_ADDRESS,
        RETRY_SOURCE_CONNECTION_ID,
    }
)

_MAX_CID_LEN = 20
_MAX_STREAMS = 1 << 60


@dataclass(slots=True)
class PreferredAddress:
    """RFC 9000 §18.2 preferred_address.

    ``ipv4``/``ipv6`` are ``(address, port)`` with the address as text (as the
    ``ipaddress`` module prints it), or ``None`` when the server sent the all-zero
    address and port for that family.
    """

    ipv4: tuple[str, int] | None
    ipv6: tuple[str, int] | None
    connection_id: bytes
    stateless_reset_token: bytes


@dataclass(slots=True)
class TransportParameters:
    original_destination_connection_id: bytes | None = None
    max_idle_timeout: int = 0  # milliseconds, 0 = no timeout
    stateless_reset_token: bytes | None = None
    max_udp_payload_size: int = 65527
    initial_max_data: int = 0
    initial_max_stream_data_bidi_local: int = 0
    initial_max_stream_data_bidi_remote: int = 0
    initial_max_stream_data_uni: int = 0
    initial_max_streams_bidi: int = 0
    initial_max_streams_uni: int = 0
    ack_delay_exponent: int = 3
    max_ack_delay: int = 25  # milliseconds
    disable_active_migration: bool = False
    preferred_address: PreferredAddress | None = None
    active_connection_id_limit: int = 2
    initial_source_connection_id: bytes | None = None
    retry_source_connection_id: bytes | None = None
    #: RFC 9368: [chosen version, available versions...]
    version_information: list[int] | None = None
    max_datagram_frame_size: int = 0  # RFC 9221: 0 = DATAGRAM frames not accepted
    #: draft-ietf-quic-ack-frequency: microseconds; None = the extension is not offered
    min_ack_delay: int | None = None


# (id, field name, default) of the integer-valued parameters, in id order.
_INT_PARAMS: tuple[tuple[int, str, int], ...] = (
    (MAX_IDLE_TIMEOUT, "max_idle_timeout", 0),
    (MAX_UDP_PAYLOAD_SIZE, "max_udp_payload_size", 65527),
    (INITIAL_MAX_DATA, "initial_max_data", 0),
    (INITIAL_MAX_STREAM_DATA_BIDI_LOCAL, "initial_max_stream_data_bidi_local", 0),
    (INITIAL_MAX_STREAM_DATA_BIDI_REMOTE, "initial_max_stream_data_bidi_remote", 0),
    (INITIAL_MAX_STREAM_DATA_UNI, "initial_max_stream_data_uni", 0),
    (INITIAL_MAX_STREAMS_BIDI, "initial_max_streams_bidi", 0),
    (INITIAL_MAX_STREAMS_UNI, "initial_max_streams_uni", 0),
    (ACK_DELAY_EXPONENT, "ack_delay_exponent", 3),
    (MAX_ACK_DELAY, "max_ack_delay", 25),
    (ACTIVE_CONNECTION_ID_LIMIT, "active_connection_id_limit", 2),
    (MAX_DATAGRAM_FRAME_SIZE, "max_datagram_frame_size", 0),
)
#: the range _check_int allows each integer parameter (checked inline when decoding)
_INT_BOUNDS = {
    MAX_UDP_PAYLOAD_SIZE: (1200, 2**62 - 1),
    ACK_DELAY_EXPONENT: (0, 20),
    MAX_ACK_DELAY: (0, (1 << 14) - 1),
    ACTIVE_CONNECTION_ID_LIMIT: (2, 2**62 - 1),
    INITIAL_MAX_STREAMS_BIDI: (0, _MAX_STREAMS),
    INITIAL_MAX_STREAMS_UNI: (0, _MAX_STREAMS),
}
#: id -> (field name, smallest, largest value allowed)
_INT_FIELD: dict[int, tuple[str, int, int]] = {}
for _pid, _name, _ in _INT_PARAMS:
    _lo, _hi = _INT_BOUNDS.get(_pid, (0, 2**62 - 1))
    _INT_FIELD[_pid] = (_name, _lo, _hi)
del _pid, _name, _lo, _hi
#: the same indexed by id (None: not an integer parameter)
_INT_SPECS: tuple[tuple[str, int, int] | None, ...] = tuple(
    _INT_FIELD.get(pid) for pid in range(max(_INT_FIELD) + 1)
)
_N_INT_SPECS = len(_INT_SPECS)
_from_bytes = int.from_bytes

_CID_PARAMS: tuple[tuple[int, str], ...] = (
    (ORIGINAL_DESTINATION_CONNECTION_ID, "original_destination_connection_id"),
    (INITIAL_SOURCE_CONNECTION_ID, "initial_source_connection_id"),
    (RETRY_SOURCE_CONNECTION_ID, "retry_source_connection_id"),
)
_CID_FIELD = dict(_CID_PARAMS)

#: The decoding rules above as plain data for the C engine's decoder of the common case
#: (``quicflow.crypto._native.decode_tparams``, used by transport/peer_params.py): by id,
#: None (skipped), ``(field, lo, hi)`` for an integer or ``(field, kind)`` with kind 1 a
#: CID, 2 the 16-byte reset token, 3 the empty disable_active_migration flag, 4
#: version_information, 0 preferred_address (left to ``decode_transport_parameters``).
DECODE_SPECS: tuple[tuple[str, int] | tuple[str, int, int] | None, ...] = tuple(
    _INT_SPECS[pid] if pid < _N_INT_SPECS and _INT_SPECS[pid] is not None
    else (_CID_FIELD[pid], 1) if pid in _CID_FIELD
    else ("stateless_reset_token", 2) if pid == STATELESS_RESET_TOKEN
    else ("disable_active_migration", 3) if pid == DISABLE_ACTIVE_MIGRATION
    else ("version_information", 4) if pid == VERSION_INFORMATION
    else ("preferred_address", 0) if pid == PREFERRED_ADDRESS
    else None
    for pid in range(_N_INT_SPECS)
)
#: SERVER_ONLY_PARAMETERS as bits (all below 64)
SERVER_ONLY_MASK = sum(1 << pid for pid in SERVER_ONLY_PARAMETERS)
#: The integer parameters with ids past DECODE_SPECS, by id, as the C decoder takes them
#: (its fifth argument): ``(field, lo, hi)``
HIGH_SPECS: dict[int, tuple[str, int, int]] = {
    MIN_ACK_DELAY: ("min_ack_delay", 0, MIN_ACK_DELAY_LIMIT - 1),
}


def _encode_preferred_address(pa: PreferredAddress) -> bytes:
    out = bytearray()
    if pa.ipv4 is None:
        out += bytes(6)
    else:
        out += ipaddress.IPv4Address(pa.ipv4[0]).packed + pa.ipv4[1].to_bytes(2, "big")
    if pa.ipv6 is None:
        out += bytes(18)
    else:
        out += ipaddress.IPv6Address(pa.ipv6[0]).packed + pa.ipv6[1].to_bytes(2, "big")
    if not 1 <= len(pa.connection_id) <= _MAX_CID_LEN:
        raise ValueError("preferred_address connection id length must be 1..20")
    if len(pa.stateless_reset_token) != 16:
        raise ValueError("preferred_address reset token must be 16 bytes")
    out.append(len(pa.connection_id))
    out += pa.connection_id
    out += pa.stateless_reset_token
    return bytes(out)


def _decode_preferred_address(value: bytes) -> PreferredAddress:
    if len(value) < 4 + 2 + 16 + 2 + 1:
        raise TransportParameterError("preferred_address truncated")
    v4, v4port = value[0:4], int.from_bytes(value[4:6], "big")
    v6, v6port = value[6:22], int.from_bytes(value[22:24], "big")
    cid_len = value[24]
    if not 1 <= cid_len <= _MAX_CID_LEN:
        raise TransportParameterError("preferred_address connection id length not in 1..20")
    if len(value) != 25 + cid_len + 16:
        raise TransportParameterError("preferred_address has a bad length")
    ipv4 = None
    if any(v4) or v4port:
        ipv4 = (str(ipaddress.IPv4Address(v4)), v4port)
    ipv6 = None
    if any(v6) or v6port:
        ipv6 = (str(ipaddress.IPv6Address(v6)), v6port)
    return PreferredAddress(ipv4, ipv6, value[25 : 25 + cid_len], value[25 + cid_len :])


def _push_param(out: bytearray, pid: int, value: bytes) -> None:
    push_varint(out, pid)
    push_varint(out, len(value))
    out += value


#: the integer parameters' encoding by their values (a server's are the same for every
#: connection of a configuration)
_INT_ENCODED: dict[tuple[int, ...], bytes] = {}


def _encode_ints(values: tuple[int, ...]) -> bytes:
    out = bytearray()
    for (pid, _, default), value in zip(_INT_PARAMS, values, strict=True):
        if value != default:
            encoded = bytearray()
            push_varint(encoded, value)
            _push_param(out, pid, bytes(encoded))
    return bytes(out)


def encode_transport_parameters(tp: TransportParameters) -> bytes:
    """Encode ``tp``; parameters at their default value (or ``None``) are omitted."""
    out = bytearray()
    for pid, name in _CID_PARAMS:
        cid = getattr(tp, name)
        if cid is not None:
            if len(cid) > _MAX_CID_LEN:
                raise ValueError(f"{name} longer than 20 bytes")
            _push_param(out, pid, cid)
    if tp.stateless_reset_token is not None:
        if len(tp.stateless_reset_token) != 16:
            raise ValueError("stateless_reset_token must be 16 bytes")
        _push_param(out, STATELESS_RESET_TOKEN, tp.stateless_reset_token)
    values = tuple([getattr(tp, name) for _, name, _ in _INT_PARAMS])
    ints = _INT_ENCODED.get(values)
    if ints is None:  # the integers are one configuration's: encoded once per process
        ints = _encode_ints(values)
        if len(_INT_ENCODED) >= 32:
            _INT_ENCODED.clear()
        _INT_ENCODED[values] = ints
    out += ints
    if tp.disable_active_migration:
        _push_param(out, DISABLE_ACTIVE_MIGRATION, b"")
    if tp.preferred_address is not None:
        _push_param(out, PREFERRED_ADDRESS, _encode_preferred_address(tp.preferred_address))
    if tp.min_ack_delay is not None:
        encoded = bytearray()
        push_varint(encoded, tp.min_ack_delay)
        _push_param(out, MIN_ACK_DELAY, bytes(encoded))
    if tp.version_information is not None:
        if not tp.version_information or not all(
            0 < v < 1 << 32 for v in tp.version_information
        ):
            raise ValueError("version_information needs a chosen version, none zero")
        _push_param(out, VERSION_INFORMATION,
                    b"".join(v.to_bytes(4, "big") for v in tp.version_information))
    return bytes(out)


def _check_int(pid: int, value: int) -> None:
    if pid == MAX_UDP_PAYLOAD_SIZE and value < 1200:
        raise TransportParameterError("max_udp_payload_size below 1200")
    if pid == ACK_DELAY_EXPONENT and value > 20:
        raise TransportParameterError("ack_delay_exponent above 20")
    if pid == MAX_ACK_DELAY and value >= 1 << 14:
        raise TransportParameterError("max_ack_delay of 2^14 or more")
    if pid == ACTIVE_CONNECTION_ID_LIMIT and value < 2:
        raise TransportParameterError("active_connection_id_limit below 2")
    if pid in (INITIAL_MAX_STREAMS_BIDI, INITIAL_MAX_STREAMS_UNI) and value > _MAX_STREAMS:
        raise TransportParameterError("initial_max_streams above 2^60")


def check_ack_delays(tp: TransportParameters) -> None:
    """The checks across parameters: min_ack_delay (microseconds) not above max_ack_delay
    (milliseconds), draft-ietf-quic-ack-frequency-14 §3."""
    if tp.min_ack_delay is not None and tp.min_ack_delay > tp.max_ack_delay * 1000:
        raise TransportParameterError("min_ack_delay above max_ack_delay")


def peek_version_information(data: bytes) -> list[int] | None:
    """The version_information of encoded parameters, without decoding the others;
    None when absent or malformed (the full decode reports errors)."""
    n = len(data)
    pos = 0
    try:
        while pos < n:
            pid = data[pos]  # one-byte varints inline: nearly every id and length
            if pid < 0x40:
                pos += 1
            else:
                pid, pos = decode_varint(data, pos)
            length = data[pos] if pos < n else 0x40
            if length < 0x40:
                pos += 1
            else:
                length, pos = decode_varint(data, pos)
            end = pos + length
            if pid == VERSION_INFORMATION:
                if end > n or length < 4 or length % 4:
                    return None
                return [int.from_bytes(data[i : i + 4], "big") for i in range(pos, end, 4)]
            pos = end
    except WireError:
        return None
    return None


def decode_transport_parameters(
    data: bytes | bytearray | memoryview, *, from_server: bool
) -> TransportParameters:
    """Decode and validate the peer's transport parameters.

    ``from_server`` tells who sent them: a client must not send server-only parameters.
    Unknown parameter ids (GREASE included) are skipped; any id seen twice is an error.
    """
    buf = bytes(data)
    n = len(buf)
    values: dict[str, Any] = {}  # field -> value: one TransportParameters(**values) at the end
    seen_low = 0  # the ids below 64 seen, as bits (larger ones, e.g. GREASE: ``seen``)
    seen: set[int] = set()
    int_specs = _INT_SPECS
    pos = 0
    try:
        while pos < n:
            pid = buf[pos]  # one-byte varints inline: nearly every id and length
            if pid < 0x40:
                pos += 1
            else:
                pid, pos = decode_varint(buf, pos)
            length = buf[pos] if pos < n else 0x40
            if length < 0x40:
                pos += 1
            else:
                length, pos = decode_varint(buf, pos)
            end = pos + length
            if end > n:
                raise TransportParameterError("transport parameter value truncated")
            if pid < 64:
                if seen_low >> pid & 1:
                    raise TransportParameterError(f"duplicate transport parameter 0x{pid:x}")
                seen_low |= 1 << pid
            else:
                if pid in seen:
                    raise TransportParameterError(f"duplicate transport parameter 0x{pid:x}")
                seen.add(pid)
            if not from_server and pid in SERVER_ONLY_PARAMETERS:
                raise TransportParameterError(
                    f"server-only transport parameter 0x{pid:x} sent by a client"
                )
            spec = int_specs[pid] if pid < _N_INT_SPECS else None
            if spec is not None:
                name, lo, hi = spec
                value = buf[pos] if pos < n else 0x40
                if value < 0x40:
                    vend = pos + 1
                elif value < 0x80 and pos + 1 < n:  # 2- and 4-byte varints inline too
                    value = ((value & 0x3F) << 8) | buf[pos + 1]
                    vend = pos + 2
                elif 0x80 <= value < 0xC0 and pos + 4 <= n:
                    value = _from_bytes(buf[pos : pos + 4], "big") & 0x3FFFFFFF
                    vend = pos + 4
                else:
                    value, vend = decode_varint(buf, pos)
                if vend != end:
                    raise TransportParameterError(f"bad length of transport parameter {name}")
                if value < lo or value > hi:
                    _check_int(pid, value)  # raises, naming the limit
                values[name] = value
            elif pid in _CID_FIELD:
                if length > _MAX_CID_LEN:
                    raise TransportParameterError("connection id longer than 20 bytes")
                values[_CID_FIELD[pid]] = buf[pos:end]
            elif pid == STATELESS_RESET_TOKEN:
                if length != 16:
                    raise TransportParameterError("stateless_reset_token not 16 bytes")
                values["stateless_reset_token"] = buf[pos:end]
            elif pid == DISABLE_ACTIVE_MIGRATION:
                if length != 0:
                    raise TransportParameterError("disable_active_migration is not empty")
                values["disable_active_migration"] = True
            elif pid == PREFERRED_ADDRESS:
                values["preferred_address"] = _decode_preferred_address(buf[pos:end])
            elif pid == VERSION_INFORMATION:
                if length < 4 or length % 4:
                    raise TransportParameterError("version_information has a bad length")
                versions = [int.from_bytes(buf[i : i + 4], "big") for i in range(pos, end, 4)]
                if versions[0] == 0:
                    raise TransportParameterError("version_information chosen version is 0")
                values["version_information"] = versions
            elif pid == MIN_ACK_DELAY:
                value, vend = decode_varint(buf, pos)
                if vend != end:
                    raise TransportParameterError("bad length of transport parameter min_ack_delay")
                if value >= MIN_ACK_DELAY_LIMIT:
                    raise TransportParameterError("min_ack_delay of 2^24 or more")
                values["min_ack_delay"] = value
            pos = end
    except TransportParameterError:
        raise
    except WireError as exc:
        raise TransportParameterError(f"malformed transport parameters: {exc}") from None
    tp = TransportParameters(**values)
    check_ack_delays(tp)
    return tp
