"""The user-facing connection configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..crypto.suites import CipherSuite
from ..wire.packet import QUIC_V1, QUIC_V2, SUPPORTED_VERSIONS

KIB = 1024
MIB = 1024 * 1024


@dataclass(slots=True)
class Configuration:
    """Options of one QUIC endpoint (client or server).

    alpn_protocols: application protocols offered (client) or accepted (server), in order of
        preference; ALPN is required by QUIC, so the list must not be empty.
    certificate_chain / private_key: the server's certificate chain (leaf first, as
        ``cryptography`` certificates) and key; on a client, the client certificate it
        presents when a server asks (optional). :meth:`load_cert_chain` loads PEM files.
    cafile / cadata: CA certificates (PEM file / PEM bytes) a client trusts for the
        server's certificate, and a server trusts for client certificates; neither means
        the system store. verify_peer=False turns verification off (insecure).
    client_certificates: (servers) "none" (default): ask for no client certificate;
        "request": ask, accept a client without one; "require": ask, and close a handshake
        without one with CRYPTO_ERROR 0x100+116 (certificate_required). A presented chain
        must verify against cafile/cadata for the clientAuth use. The peer's chain is
        ``Connection.peer_certificates`` (leaf first) on both sides.
    server_name: the host name a client checks the certificate against (defaults to the host
        passed to ``connect``).
    idle_timeout: seconds of silence after which the connection closes (max_idle_timeout).
    key_update_after: 1-RTT packets sent with one key before the connection starts a key
        update by itself (RFC 9001 §6); None (default): three quarters of the cipher's
        confidentiality limit (RFC 9001 §6.6: 2^23 packets for AES-GCM, none to reach for
        ChaCha20-Poly1305). A larger value counts as the default: the limit is never
        passed (sending stops short of it while an update cannot start yet).
    max_pto_period: seconds at which the probe timeout stops doubling (default 1.0; a PTO
        that is longer without backoff stays as it is); 0 doubles without limit, as RFC
        9002 §6.2.1 has it. See ``LossDetection`` for why the default caps it.
    max_data / max_data_window: initial and largest connection receive window; the window
        grows towards the largest one as the measured bandwidth-delay product requires,
        and doubles (up to the largest) when the peer reports DATA_BLOCKED at a limit we
        had already raised, or at our current limit and the application then reads
        within 2 srtt (it keeps up; the window ran out).
    max_stream_data / max_stream_data_window: the same per stream; a stream's window also
        doubles (up to the largest) when the peer reports STREAM_DATA_BLOCKED at its limit.
    max_streams_bidi / max_streams_uni: how many streams the peer may have open at once.
    congestion_control: "cubic" (default) or "newreno".
    shared_slow_start: a window-limited connection joins the ensemble of the loop's
        connections to its peer's host, and slow start does not grow its window past 3/2
        of the ensemble's mean rate (window / smoothed RTT) once it has 8 members
        (``transport/ensemble.py``: the ones that started first no longer keep their
        lead); False: its slow start is its own.
    pacing: "auto" (default) paces a connection's sends (RFC 9002 §7.7: 1.25·cwnd/srtt in
        bursts) unless its peer is at a loopback address, where no network queue needs
        it and the congestion window alone bounds a burst; "on" paces every path, "off"
        none. Decided again when the connection's path changes.
    max_datagram_size: largest UDP payload sent (1200 .. 65527; default 1452). With
        ``pmtud`` (default) it is the ceiling of path MTU discovery: a connection starts
        at 1200 bytes and probes upwards (RFC 8899) to the smallest of this, the peer's
        max_udp_payload_size and the path MTU. Without ``pmtud`` the connection sends
        datagrams of this size as soon as the handshake allows (the path must carry them;
        a smaller path MTU reported by the datapath still lowers it).
    pmtud: probe the path MTU upwards from 1200 bytes (DPLPMTUD, RFC 8899), fall back to
        1200 on a black hole and search again. pmtud_raise_interval: seconds after a
        finished search before probing for a larger size again (PMTU_RAISE_TIMER).
    cipher_suites: TLS 1.3 suites offered/accepted, in order of preference.
    groups: key exchange groups, the first gets the client's key share.
    active_connection_id_limit: how many connection IDs we accept from the peer.
    connection_id_length: length of the connection IDs we issue (4..20; 0 for a client
        alone on its socket). A server's CIDs come from its endpoint's QUIC-LB generator,
        whose length wins (the server endpoint uses a copy of the configuration with it).
    keylog_file: append TLS secrets in SSLKEYLOGFILE format (for Wireshark/tshark).
    qlog_dir: write a qlog trace of each connection (JSON-SEQ, ``<ODCID>_<role>.sqlog``)
        into this directory; the asyncio API also takes it from ``$QLOGDIR``.
    send_buffer_per_connection / send_buffer_per_endpoint: bytes the application may have
        written and not yet had acknowledged, on one connection / on all connections of one
        endpoint (a server) together; ``drain()`` waits while either is exceeded (and while
        its own stream holds more than 4 MiB), so a peer that never reads cannot make the
        server buffer more than that.

    Address validation and stateless replies (servers; see endpoint/admission.py):
    retry: "never", "always" or "load" (default): send a Retry to Initials without a
        valid token always, never, or once ``retry_threshold`` connections have not
        validated their address.
    retry_threshold: half-open connections at which retry="load" starts sending Retry.
    max_half_open: most connections waiting for address validation; more Initials are
        dropped (counted). half_open_timeout: their lifetime without progress (seconds).
    token_key: key sealing Retry and NEW_TOKEN tokens; give every worker and host behind
        one address the same key so any of them accepts the others' tokens (None: a
        random key per endpoint). retry_token_lifetime / new_token_lifetime: seconds a
        token is valid (new_token_lifetime=0 sends no NEW_TOKEN).
    reset_key: static key stateless reset tokens are derived from (HMAC of the CID), the
        same on every host (None: random per endpoint). stateless_reset_rate: most
        stateless resets sent per second.
    token_cache: (clients) a ``quicflow.endpoint.tokens.TokenCache`` shared by
        connections; NEW_TOKEN tokens go in, the next connection to that server uses one.

    Session resumption and 0-RTT (RFC 8446 §4.6.1, RFC 9001 §4.6; see tls/tickets.py):
    ticket_key: (servers) key sealing session tickets; one NewSessionTicket goes out
        after each handshake, valid ``ticket_lifetime`` seconds. Give every worker and
        host the same key so any of them resumes the others' sessions (None: a random
        key per endpoint; a connection without an endpoint then issues no tickets).
    session_ticket_cache: (clients) a ``quicflow.tls.tickets.SessionTicketCache`` shared
        by connections; tickets go in, the next connection to that server offers one
        (each is used once).
    early_data: clients send 0-RTT data when their ticket allows it (what the application
        writes before the handshake completes, within the server's remembered limits of
        RFC 9000 §7.4.1); servers allow 0-RTT in their tickets and accept it. Data of
        rejected 0-RTT is sent again in 1-RTT. ``Connection.early_data_accepted`` and
        ``session_resumed`` (and ``HandshakeCompleted``) say what happened.
    early_data_hook: (servers) ``hook(server_name, alpn_protocol, peer_address) -> bool``,
        the application's say on a ClientHello's 0-RTT (after the protocol's checks).
    strike_register: (servers) the ``StrikeRegister`` for anti-replay: each ticket's
        0-RTT is accepted once per register, ClientHellos whose ticket age is more than
        ``ticket_age_window`` seconds off are refused 0-RTT (None: the endpoint makes one;
        a connection without register accepts no 0-RTT).

    max_datagram_frame_size: largest DATAGRAM frame (RFC 9221) we accept; 0 (default)
        turns DATAGRAM frames off (the transport parameter is not sent).
    max_datagram_queue: DATAGRAM frames waiting to be sent; when full, the oldest is
        dropped (counted in ``datagram_frames_dropped``). Datagrams are never retransmitted.

    versions: QUIC versions (``QUIC_V1`` = 1, ``QUIC_V2`` = 0x6b3343cf, RFC 9369) in order
        of preference; both by default. A server accepts these. A client offers them for
        compatible version negotiation (RFC 9368) and sends its first Initial in
        ``initial_version`` (default: ``versions[0]``); a server then moves to the first
        version in the client's list that it accepts (so a client with
        ``versions=[QUIC_V2, QUIC_V1], initial_version=QUIC_V1`` starts in v1, which every
        server understands, and ends in v2 with a server that has it).

    preferred_address / preferred_address_v6: (servers) an ``(IP address, port)`` of each
        family offered to clients in the preferred_address transport parameter (RFC 9000
        §9.6), with a connection ID the endpoint issued for it; ``serve()`` listens
        there too. None (default): none offered.
    use_preferred_address: (clients) move to a server's preferred address once the
        handshake is confirmed, after validating it (default True; on failure the
        connection stays on the original address).
    disable_active_migration: send disable_active_migration: clients must not move to a
        new address of their own (RFC 9000 §18.2; a preferred address stays allowed).
    """

    alpn_protocols: list[str] = field(default_factory=list)
    certificate_chain: list[Any] = field(default_factory=list)
    private_key: Any = None
    cafile: str | None = None
    cadata: bytes | None = None
    verify_peer: bool = True
    server_name: str | None = None
    idle_timeout: float = 30.0
    max_pto_period: float = 1.0
    key_update_after: int | None = None
    max_data: int = 4 * MIB
    max_data_window: int = 64 * MIB
    max_stream_data: int = 1 * MIB
    max_stream_data_window: int = 32 * MIB
    max_streams_bidi: int = 256
    max_streams_uni: int = 256
    congestion_control: str = "cubic"
    shared_slow_start: bool = True
    max_datagram_size: int = 1452
    pmtud: bool = True
    pmtud_raise_interval: float = 600.0
    cipher_suites: list[CipherSuite] = field(
        default_factory=lambda: [
            CipherSuite.AES_128_GCM_SHA256,
            CipherSuite.AES_256_GCM_SHA384,
            CipherSuite.CHACHA20_POLY1305_SHA256,
        ]
    )
    groups: list[str] = field(default_factory=lambda: ["x25519", "secp256r1"])
    active_connection_id_limit: int = 4
    connection_id_length: int = 8
    max_ack_delay: float = 0.025
    #: draft-ietf-quic-ack-frequency: advertise min_ack_delay (peers may then ask us to
    #: ACK less often) and ask a peer that offers it for one ACK per quarter congestion
    #: window, at most ``ack_frequency_threshold`` ack-eliciting packets
    ack_frequency: bool = True
    ack_frequency_threshold: int = 256
    #: pace sends (RFC 9002 §7.7) on every path ("on"), none ("off"), or every path
    #: but one to a loopback address ("auto"): see ``path.set_pacing``
    pacing: str = "auto"
    ack_delay_exponent: int = 3
    keylog_file: str | None = None
    send_buffer_per_connection: int = 16 * MIB
    send_buffer_per_endpoint: int = 512 * MIB
    retry: str = "load"
    retry_threshold: int = 64
    max_half_open: int = 1024
    half_open_timeout: float = 5.0
    token_key: bytes | None = None
    retry_token_lifetime: float = 10.0
    new_token_lifetime: float = 7 * 86400.0
    reset_key: bytes | None = None
    stateless_reset_rate: float = 200.0
    token_cache: Any = None
    max_datagram_frame_size: int = 0
    max_datagram_queue: int = 256
    versions: list[int] = field(default_factory=lambda: [QUIC_V1, QUIC_V2])
    initial_version: int | None = None
    client_certificates: str = "none"
    qlog_dir: str | None = None
    preferred_address: tuple[str, int] | None = None
    preferred_address_v6: tuple[str, int] | None = None
    use_preferred_address: bool = True
    disable_active_migration: bool = False
    ticket_key: bytes | None = None
    ticket_lifetime: int = 86400
    session_ticket_cache: Any = None
    early_data: bool = True
    early_data_hook: Any = None
    strike_register: Any = None
    ticket_age_window: float = 10.0

    def load_cert_chain(self, certfile: str, keyfile: str | None = None) -> None:
        """Load a PEM certificate chain and private key."""
        from ..tls.certs import load_pem_chain, load_pem_key

        self.certificate_chain = load_pem_chain(certfile)
        self.private_key = load_pem_key(keyfile or certfile)

    def validate(self) -> None:
        """Raise ValueError with a clear message for an unusable configuration."""
        if not self.alpn_protocols:
            raise ValueError("Configuration.alpn_protocols must name at least one protocol")
        if not 1200 <= self.max_datagram_size <= 65527:
            raise ValueError("max_datagram_size must be between 1200 and 65527")
        if self.pmtud_raise_interval <= 0:
            raise ValueError("pmtud_raise_interval must be positive")
        if self.congestion_control not in ("cubic", "newreno"):
            raise ValueError("congestion_control must be 'cubic' or 'newreno'")
        if not (self.connection_id_length == 0 or 4 <= self.connection_id_length <= 20):
            raise ValueError("connection_id_length must be 0 or between 4 and 20")
        if self.active_connection_id_limit < 2:
            raise ValueError("active_connection_id_limit must be at least 2")
        if self.ack_frequency_threshold < 1:
            raise ValueError("ack_frequency_threshold must be at least 1")
        if not 0 <= self.max_ack_delay < 16.384:
            raise ValueError("max_ack_delay must be at least 0 and below 2^14 ms")
        if self.idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative")
        if self.key_update_after is not None and self.key_update_after < 1:
            raise ValueError("key_update_after must be at least 1 (or None)")
        if self.max_pto_period < 0:
            raise ValueError("max_pto_period must not be negative")
        if self.send_buffer_per_connection < 1 or self.send_buffer_per_endpoint < 1:
            raise ValueError("send buffer limits must be positive")
        if self.pacing not in ("on", "off", "auto"):
            raise ValueError("pacing must be 'on', 'off' or 'auto'")
        if self.retry not in ("never", "always", "load"):
            raise ValueError("retry must be 'never', 'always' or 'load'")
        if self.retry_threshold < 0 or self.max_half_open < 0 or self.half_open_timeout <= 0:
            raise ValueError("retry_threshold/max_half_open/half_open_timeout out of range")
        # (checked for every new connection: set operations, no generator frame)
        if not self.versions or not _SUPPORTED.issuperset(self.versions):
            raise ValueError("versions must list QUIC versions 1 (0x1) and/or 2 (0x6b3343cf)")
        if self.initial_version is not None and self.initial_version not in self.versions:
            raise ValueError("initial_version must be one of versions")
        if not self.cipher_suites:
            raise ValueError("cipher_suites must not be empty")
        if not 0 < self.ticket_lifetime <= 7 * 86400:
            raise ValueError("ticket_lifetime must be between 1 second and 7 days")
        if self.client_certificates not in ("none", "request", "require"):
            raise ValueError("client_certificates must be 'none', 'request' or 'require'")
        if self.preferred_address is not None:
            _check_preferred(self.preferred_address, 4)
        if self.preferred_address_v6 is not None:
            _check_preferred(self.preferred_address_v6, 6)


_SUPPORTED = frozenset(SUPPORTED_VERSIONS)


def _check_preferred(value: tuple[str, int] | None, family: int) -> None:
    if value is None:
        return
    import ipaddress

    try:
        host, port = value
        addr = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        raise ValueError(f"preferred_address{'_v6' if family == 6 else ''} must be "
                         f"(IPv{family} address, port), not {value!r}") from None
    if addr.version != family or not 0 < int(port) < 65536:
        raise ValueError(f"preferred_address{'_v6' if family == 6 else ''} must be "
                         f"(IPv{family} address, port 1..65535), not {value!r}")
