"""The peer's transport parameters, decoded once per handshake on the packet path.

The C engine decodes the common case (``quicflow.crypto._native.decode_tparams``: every
parameter well formed, within its limits and sent once, no preferred_address) straight
into the fields; anything else, every error included, goes to
``wire.tparams.decode_transport_parameters``, the reference, which decodes it or raises
``TransportParameterError`` with its message. Both give equal ``TransportParameters``
for the same bytes (tests/test_peer_params_native.py); ``QUICFLOW_ENGINE=python`` (or no
extension) uses the reference alone.
"""

from __future__ import annotations

from typing import Any

from ..crypto.extension import EXT, python_forced
from ..wire.tparams import (
    DECODE_SPECS,
    HIGH_SPECS,
    SERVER_ONLY_MASK,
    TransportParameters,
    check_ack_delays,
    decode_transport_parameters,
    peek_version_information,
)

#: the C decoder, or None (not built, or the pure-Python code forced)
NATIVE_DECODE: Any = (
    getattr(EXT, "decode_tparams", None) if EXT is not None and not python_forced() else None
)


def decode_peer_parameters(
    data: bytes | bytearray | memoryview, *, from_server: bool
) -> TransportParameters:
    """``decode_transport_parameters(data, from_server=...)``, its common case in C."""
    native = NATIVE_DECODE
    if native is not None:
        values = native(data, from_server, DECODE_SPECS, SERVER_ONLY_MASK, HIGH_SPECS)
        if values is not None:
            params = TransportParameters(**values)
            check_ack_delays(params)  # (the reference's check across parameters)
            return params
    return decode_transport_parameters(data, from_server=from_server)


def client_version_information(data: bytes) -> list[int] | None:
    """(server) ``wire.tparams.peek_version_information`` of a client's parameters: the
    C decoder's version_information when it takes them (then the only one, well formed:
    what the peek finds), else the peek itself (absent or malformed: None)."""
    native = NATIVE_DECODE
    if native is not None:
        values = native(data, False, DECODE_SPECS, SERVER_ONLY_MASK)
        if values is not None:
            info: list[int] | None = values.get("version_information")
            return info
    return peek_version_information(data)
