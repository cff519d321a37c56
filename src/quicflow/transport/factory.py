"""Making connections: a client's first flight, a server's answer to a first Initial.

The two constructors fill in what a new :class:`Connection` needs besides its
configuration (its first CIDs, its sealer's key in the offload engine, the version) and
run its TLS set-up; the endpoint calls them (``Endpoint.connect``, ``Endpoint.accept``).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..crypto.offload import OffloadEngine, SoftwareOffloadEngine
from ..tls.tickets import SessionTicket
from .config import Configuration
from .connection import Address, CidIssuer, Connection, new_seal_key
from .inline import Arg, inline_init
from .path import set_pacing
from .pmtud import INF
from .startup import SERVER_SPACE_SPECS, SPACE_SPECS, check_algorithm, recovery_spec


def client_connection(
    configuration: Configuration,
    peer_address: Address,
    now: float,
    *,
    server_name: str | None = None,
    engine: OffloadEngine | None = None,
    cid_issuer: CidIssuer | None = None,
    seal_key: bytes | None = None,
    session_ticket: SessionTicket | None = None,
    wall_offset: float = 0.0,
) -> Connection:
    """A client connection; its first flight is ready in ``datagrams_to_send``.

    ``session_ticket`` (from an earlier connection's ``SessionTicketReceived``) is
    offered to resume; with ``Configuration.early_data`` and a ticket that allows it,
    stream data written before the handshake completes goes in 0-RTT packets.
    ``wall_offset`` turns ``now`` into Unix time (ticket ages are wall-clock).

    ``cid_issuer`` gives every CID the connection issues (default: random CIDs of the
    configuration's length); ``seal_key`` is its sealer's key in ``engine`` (default:
    :func:`new_seal_key`, unique in the process).
    """
    conn = _new_connection(configuration, True, peer_address, os.urandom(8), now,
                           engine, cid_issuer, seal_key)
    conn.wall_offset = wall_offset
    conn.peer_cid = conn.original_dcid
    conn.version = configuration.initial_version or (
        configuration.versions[0] if configuration.versions else 1
    )
    conn._setup(now, server_name, session_ticket)
    return conn


def server_connection(
    configuration: Configuration,
    peer_address: Address,
    original_dcid: bytes,
    now: float,
    *,
    engine: OffloadEngine | None = None,
    client_scid: bytes = b"",
    retry_scid: bytes | None = None,
    address_validated: bool = False,
    version: int = 1,
    cid_issuer: CidIssuer | None = None,
    seal_key: bytes | None = None,
) -> Connection:
    """A server connection for a client's first Initial (see :func:`client_connection`
    for ``cid_issuer`` and ``seal_key``)."""
    conn = _new_connection(configuration, False, peer_address, original_dcid, now,
                           engine, cid_issuer, seal_key)
    conn.peer_cid = client_scid
    conn.retry_scid = retry_scid
    conn.address_validated = address_validated
    conn.version = version
    conn._setup(now, None)
    return conn


def _new_connection(
    configuration: Configuration,
    is_client: bool,
    peer_address: Address,
    original_dcid: bytes,
    now: float,
    engine: OffloadEngine | None,
    cid_issuer: CidIssuer | None,
    seal_key: bytes | None,
) -> Connection:
    """The part both constructors share: a Connection with the engine and sealer key
    defaulted (see :func:`client_connection`), its clock hint set to ``now``."""
    check_algorithm(configuration)
    conn = _MAKE_CONNECTION[is_client](
        configuration=configuration, now_created=now,
        original_dcid=original_dcid, peer_address=peer_address,
        local_cid_length=configuration.connection_id_length,
        engine=engine or SoftwareOffloadEngine(),
        seal_key=new_seal_key() if seal_key is None else seal_key, cid_issuer=cid_issuer,
        cc_algorithm=configuration.congestion_control,
        max_pto_period=configuration.max_pto_period, pmtud=configuration.pmtud,
        pmtud_next_at=0.0 if configuration.pmtud else INF,
    )
    conn._now_hint = now
    set_pacing(conn)
    return conn


#: ``Connection(configuration=..., ..., pmtud=...)`` by is_client, with its packet number
#: spaces, flow control, stream limits, counters, loss detection, pacer and PMTUD made
#: inline (inline.py; the last three as new_recovery makes them): one Python call for ~80
#: objects, instead of a call per dataclass object (tests/test_inline_init.py)
_MAKE_CONNECTION: dict[bool, Callable[..., Connection]] = {
    is_client: inline_init(
        Connection, configuration=Arg("configuration"), is_client=is_client,
        now_created=Arg("now_created"), original_dcid=Arg("original_dcid"),
        peer_address=Arg("peer_address"), local_cid_length=Arg("local_cid_length"),
        engine=Arg("engine"), seal_key=Arg("seal_key"), cid_issuer=Arg("cid_issuer"),
        spaces=SPACE_SPECS if is_client else SERVER_SPACE_SPECS,
        probes_pending=[0, 0, 0], send_protectors=[None] * 4,
        recv_protectors=[None] * 4, **recovery_spec(is_client),
    )
    for is_client in (False, True)
}
