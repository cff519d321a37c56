"""A connection's first state: packet number spaces, recovery, our transport parameters,
the Initial keys, the TLS session and version negotiation (RFC 9368).

Plain functions over a :class:`~quicflow.transport.connection.Connection`, bound there as
its methods (``conn._setup``, ``conn.switch_version``, ...); the constructors in
``factory.py`` call them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..crypto.epoch import Epoch
from ..crypto.keys import PacketProtector, derive_packet_keys, initial_protectors
from ..tls.config import TlsConfig
from ..tls.session import TlsSession
from ..tls.tickets import SessionTicket, ticket_sealer
from ..wire.tparams import TransportParameters
from . import early_data, pathprobe
from .ack_frequency import local_min_ack_delay
from .config import Configuration
from .congestion import ALGORITHMS, CongestionControl, Pacer, initial_window
from .inline import Arg, Inline, inline_init
from .local_params import encode_local_parameters
from .peer_params import client_version_information
from .pmtud import INF, Pmtud
from .recovery import LossDetection, SpaceState
from .state import INITIAL_CRYPTO_WINDOW, PacketSpace
from .streams import RecvStream, SendStream

if TYPE_CHECKING:
    from .connection import Connection

SPACE_OF_EPOCH = {Epoch.INITIAL: 0, Epoch.ZERO_RTT: 2, Epoch.HANDSHAKE: 1, Epoch.ONE_RTT: 2}


def space_spec(window: int | None) -> Inline:
    """``PacketSpace(crypto_recv=...)`` with a CRYPTO receive window of ``window`` bytes
    (None: no CRYPTO receive stream yet), for
    :func:`~quicflow.transport.inline.inline_init` (its range sets and CRYPTO streams
    made inline: 2 calls instead of 9)."""
    return Inline(
        PacketSpace, ecn_counts=[0, 0, 0], ecn_peer_counts=[0, 0, 0],
        crypto_send=Inline(SendStream, max_data=1 << 62),
        crypto_recv=None if window is None else Inline(
            RecvStream, max_data=window, window=window, window_max=window))


#: the spaces of a new connection: the Initial space's CRYPTO window is smaller
SPACE_SPECS = [space_spec(INITIAL_CRYPTO_WINDOW), space_spec(1 << 20), space_spec(1 << 20)]
#: a server's: its application space's CRYPTO receive stream is made when a 1-RTT CRYPTO
#: frame comes (receive.py ``_on_crypto``; a client never needs to send one: its
#: handshake messages go in Initial and Handshake packets)
SERVER_SPACE_SPECS = [*SPACE_SPECS[:2], space_spec(None)]
_new_initial_space: Callable[[], PacketSpace] = inline_init(PacketSpace, **SPACE_SPECS[0].values)
_new_space: Callable[[], PacketSpace] = inline_init(PacketSpace, **SPACE_SPECS[1].values)


def new_spaces() -> list[PacketSpace]:
    """The three packet number spaces of a new connection; the Initial space buffers at
    most INITIAL_CRYPTO_WINDOW of CRYPTO data (its keys are public)."""
    return [_new_initial_space(), _new_space(), _new_space()]


def recovery_spec(is_client: bool) -> dict[str, Inline]:
    """A new connection's ``loss``, ``pacer`` and ``pmtud`` fields, to be made inline
    (inline.py) with the arguments ``cc_algorithm``, ``max_pto_period``, ``pmtud`` and
    ``pmtud_next_at`` (see :func:`new_recovery`): its loss detection with the RTT
    estimator, packet number spaces and congestion controller (cwnd the initial window
    at 1200 bytes, as CongestionControl.__post_init__ sets it; the algorithm checked by
    the caller, :func:`check_algorithm`)."""
    return {
        "loss": Inline(
            LossDetection, is_server=not is_client, max_ack_delay=0.025,
            cc=Inline.post_init_done(CongestionControl, algorithm=Arg("cc_algorithm"),
                                     cwnd=initial_window(1200)),
            max_pto_period=Arg("max_pto_period"), amplification_limited=False,
            spaces=[Inline(SpaceState), Inline(SpaceState), Inline(SpaceState)]),
        # pacing in batch-sized bursts: up to 2 ms of the pacing rate, at most one GSO
        # send; sends may run 1 ms ahead (asyncio timers wake in whole milliseconds)
        "pacer": Inline(Pacer, burst_interval=0.002, max_burst_datagrams=256,
                        granularity=0.001, run_datagrams=256),
        # (as new_pmtud: next_at 0.0 when enabled, else INF)
        "pmtud": Inline(Pmtud, enabled=Arg("pmtud"), next_at=Arg("pmtud_next_at")),
    }


def check_algorithm(cfg: Configuration) -> None:
    """CongestionControl's own check, for a controller made inline."""
    if cfg.congestion_control not in ALGORITHMS:
        raise ValueError(f"unknown congestion control algorithm {cfg.congestion_control!r}")


_RECOVERY: dict[bool, tuple[Callable[..., LossDetection], Callable[[], Pacer],
                            Callable[..., Pmtud]]] = {
    is_client: (inline_init(LossDetection, **spec["loss"].values),
                inline_init(Pacer, **spec["pacer"].values),
                inline_init(Pmtud, **spec["pmtud"].values))
    for is_client, spec in ((False, recovery_spec(False)), (True, recovery_spec(True)))
}


def new_recovery(cfg: Configuration, is_client: bool) -> tuple[LossDetection, Pacer, Pmtud]:
    """Loss detection, pacer and path MTU discovery of a new connection (a connection
    made in factory.py gets them from the same :func:`recovery_spec`)."""
    check_algorithm(cfg)
    new_loss, new_pacer, new_pmtud = _RECOVERY[is_client]
    return (new_loss(cc_algorithm=cfg.congestion_control, max_pto_period=cfg.max_pto_period),
            new_pacer(),
            new_pmtud(pmtud=cfg.pmtud, pmtud_next_at=0.0 if cfg.pmtud else INF))


def local_transport_parameters(self: Connection) -> TransportParameters:
    """The transport parameters we send (or would send now)."""
    cfg = self.configuration
    tp = TransportParameters(
        max_idle_timeout=int(cfg.idle_timeout * 1000),
        max_udp_payload_size=65527,
        initial_max_data=cfg.max_data,
        initial_max_stream_data_bidi_local=cfg.max_stream_data,
        initial_max_stream_data_bidi_remote=cfg.max_stream_data,
        initial_max_stream_data_uni=cfg.max_stream_data,
        initial_max_streams_bidi=cfg.max_streams_bidi,
        initial_max_streams_uni=cfg.max_streams_uni,
        ack_delay_exponent=cfg.ack_delay_exponent,
        max_ack_delay=int(cfg.max_ack_delay * 1000),
        active_connection_id_limit=cfg.active_connection_id_limit,
        initial_source_connection_id=self.initial_scid,
        version_information=[self.version, *cfg.versions],
        max_datagram_frame_size=cfg.max_datagram_frame_size,
        min_ack_delay=local_min_ack_delay(cfg),
    )
    if not self.is_client:
        tp.original_destination_connection_id = self.original_dcid
        tp.stateless_reset_token = self.host_cids[0].reset_token
        if self.retry_scid is not None:
            tp.retry_source_connection_id = self.retry_scid
        tp.disable_active_migration = cfg.disable_active_migration
        tp.preferred_address = pathprobe.preferred_address_parameter(self)
    return tp


#: a server's TlsConfig by everything it is made of: the configuration's values, its key
#: and certificates by identity (the entry keeps those objects, so the ids stay theirs).
#: Made and validated once per set of values and shared by that configuration's
#: connections (nothing changes a TlsConfig once made); a few entries per process
_SERVER_TLS: dict[tuple[object, ...], tuple[tuple[object, ...], TlsConfig]] = {}
_MAX_SERVER_TLS = 32


def tls_config(self: Connection, server_name: str | None,
               ticket: SessionTicket | None = None) -> TlsConfig:
    """The TLS settings of this connection's handshake (a server's: shared with every
    connection of an equal configuration)."""
    if self.is_client or server_name is not None or ticket is not None:
        return _make_tls_config(self, server_name, ticket)
    return shared_server_tls(self)


def shared_server_tls(self: Connection) -> TlsConfig:
    """A server's TlsConfig, shared by the connections of equal configurations and
    validated (``TlsConfig.validate``) when made: its ``ValueError`` comes from here,
    and a config that fails is not kept."""
    cfg = self.configuration
    objects = (cfg.private_key, *cfg.certificate_chain)
    key = (tuple(map(id, objects)), cfg.server_name, tuple(cfg.alpn_protocols), cfg.cafile,
           cfg.cadata, cfg.verify_peer, tuple(cfg.cipher_suites), tuple(cfg.groups),
           cfg.keylog_file, cfg.client_certificates, cfg.early_data, cfg.ticket_key,
           cfg.ticket_lifetime, cfg.ticket_age_window,
           early_data.ticket_parameters(self) if cfg.ticket_key else b"")
    hit = _SERVER_TLS.get(key)
    if hit is not None:
        return hit[1]
    made = _make_tls_config(self, None, None)
    made.validate()
    if len(_SERVER_TLS) >= _MAX_SERVER_TLS:
        _SERVER_TLS.clear()
    _SERVER_TLS[key] = (objects, made)
    return made


def _make_tls_config(self: Connection, server_name: str | None,
                     ticket: SessionTicket | None) -> TlsConfig:
    cfg = self.configuration
    sealer = None
    if not self.is_client and cfg.ticket_key:
        sealer = ticket_sealer(cfg.ticket_key)
    return TlsConfig(
        is_client=self.is_client,
        alpn_protocols=list(cfg.alpn_protocols),
        server_name=cfg.server_name or server_name,
        certificate_chain=list(cfg.certificate_chain),
        private_key=cfg.private_key,
        cafile=cfg.cafile,
        cadata=cfg.cadata,
        verify_peer=cfg.verify_peer,
        cipher_suites=list(cfg.cipher_suites),
        groups=list(cfg.groups),
        keylog_file=cfg.keylog_file,
        client_certificates=cfg.client_certificates,
        session_ticket=ticket,
        early_data=cfg.early_data,
        ticket_sealer=sealer,
        ticket_lifetime=cfg.ticket_lifetime,
        ticket_age_window=cfg.ticket_age_window,
        ticket_parameters=early_data.ticket_parameters(self) if sealer else b"",
    )


def setup(self: Connection, now: float, server_name: str | None,
           ticket: SessionTicket | None = None) -> None:
    cfg = self.configuration
    cfg.validate()
    self.max_datagram_size = 1200
    self.idle_timeout = cfg.idle_timeout
    self.idle_deadline = now + cfg.idle_timeout if cfg.idle_timeout else float("inf")
    if not self.is_client and not self.address_validated:  # half-open: short life
        self.idle_deadline = min(self.idle_deadline, now + cfg.half_open_timeout)
    self.flow.max_data = cfg.max_data
    self.flow.window = cfg.max_data
    self.flow.window_max = max(cfg.max_data, cfg.max_data_window)
    self.bidi.max_remote = cfg.max_streams_bidi
    self.bidi.window = cfg.max_streams_bidi
    self.uni.max_remote = cfg.max_streams_uni
    self.uni.window = cfg.max_streams_uni
    self.issue_host_cid()
    self.initial_scid = self.host_cids[0].cid
    pathprobe.issue_preferred_cid(self)
    # a server after Retry: Initial keys come from the client's new DCID (our SCID)
    install_initial_keys(self, self.retry_scid or self.original_dcid)
    negotiates = not self.is_client and len(cfg.versions) > 1
    # a negotiating server's parameters come from the hook, on the ClientHello
    params = b"" if negotiates else encode_local_parameters(self)
    if self.is_client or server_name is not None or ticket is not None:
        self.tls = TlsSession(tls_config(self, server_name, ticket), params)
    else:  # (validated when made)
        self.tls = TlsSession(shared_server_tls(self), params, checked=True)
    if negotiates:
        self.tls.on_client_parameters(self._negotiate_version)
    self.tls.set_wall_time(now + self.wall_offset)
    if not self.is_client:
        early_data.server_hook(self, self.tls)
        return  # a server's TLS says nothing before the ClientHello
    self.tls.start()
    for epoch, data in self.tls.pop_output():
        crypto = self.spaces[SPACE_OF_EPOCH[epoch]].crypto_send
        if crypto is not None:  # (always: nothing is discarded yet)
            crypto.write(data)
    for epoch, is_send, suite, secret in self.tls.pop_secrets():  # 0-RTT (client)
        keys = derive_packet_keys(suite, secret, self.version)
        (self.send_protectors if is_send else self.recv_protectors)[epoch] = (
            PacketProtector(keys))
    early_data.start_client(self, self.tls)


def install_initial_keys(self: Connection, dcid: bytes) -> None:
    client, server = initial_protectors(dcid, self.version)
    send, recv = (client, server) if self.is_client else (server, client)
    self.send_protectors[0] = send  # 0: Epoch.INITIAL
    self.recv_protectors[0] = recv


def switch_version(self: Connection, version: int) -> None:
    """Compatible version negotiation (RFC 9368): from now on speak ``version``; the
    Initial keys are derived again for it (same client DCID, the version's salt)."""
    self.version = version
    install_initial_keys(self, self.retry_scid or self.original_dcid)
    self.version_switched = True
    early_data.client_switched_version(self)


def restart_in_version(self: Connection, version: int) -> None:
    """(client) Incompatible version negotiation (RFC 9368 §2.1): the server sent
    Version Negotiation without our version but with ``version``: start over in it
    (a new first flight with a new destination CID; streams opened meanwhile keep
    their data, nothing of it was sent yet). Only once per connection."""
    server_name = self.tls.server_name if self.tls is not None else None
    ticket = self.tls.offered_ticket if self.tls is not None else None
    if self.early_data_attempted:  # nothing of it reached the server: send it again
        early_data.reject_early_data(self)
        self.early_data_attempted = False
    for entry in self.host_cids:
        self.cid_changes.append((False, entry.cid))
    self.host_cids = []
    self.next_host_cid_seq = 0
    self.version = version
    self.version_restarted = True
    self.original_dcid = os.urandom(8)
    self.peer_cid = self.original_dcid
    self.retry_scid = None
    self.spaces = new_spaces()
    self.loss, self.pacer, self.pmtud = new_recovery(self.configuration, True)
    self.send_protectors = [None] * 4
    self.recv_protectors = [None] * 4
    self.probes_pending = [0, 0, 0]
    setup(self, self._now_hint, server_name, ticket)


def negotiate_version(self: Connection, client_params: bytes) -> bytes:
    """(server, from the TLS layer on the ClientHello) Pick the version: the first in
    the client's version_information (its order of preference) that we accept;
    returns our transport parameters with it as the chosen version."""
    # malformed parameters: the error is raised (with its code) when they are applied
    info = client_version_information(client_params)
    if info and info[0] == self.version:
        ours = self.configuration.versions
        for chosen in info[1:]:  # (the client's order of preference)
            if chosen in ours:
                if chosen != self.version:
                    switch_version(self, chosen)
                break
    return encode_local_parameters(self)
