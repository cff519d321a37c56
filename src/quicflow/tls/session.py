"""``TlsSession``: the TLS 1.3 handshake of one QUIC connection (RFC 9001 §4).

Sans-I/O: CRYPTO-frame bytes go in per epoch with ``receive``; handshake bytes to send
come out of ``pop_output`` and traffic secrets out of ``pop_secrets``.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.suites import CipherSuite

from .client import ClientHandshake
from .config import TlsConfig
from .core import Secret
from .server import ServerHandshake
from .tickets import SessionTicket, TicketContents


class TlsSession:
    """One side of a TLS 1.3 handshake carried in QUIC CRYPTO frames.

    Every failure raises ``TlsAlert``; after one, the session is dead and every further
    ``receive`` raises the same alert.
    """

    __slots__ = ("_hs",)

    def __init__(self, config: TlsConfig, transport_parameters: bytes, *,
                 checked: bool = False) -> None:
        """``checked`` (a server's): ``config.validate()`` passed already and nothing
        changed the config since (one config shared by many handshakes is checked once;
        else ``validate`` runs here and raises its ``ValueError``)."""
        self._hs: ClientHandshake | ServerHandshake
        if config.is_client:
            self._hs = ClientHandshake(config, bytes(transport_parameters))
        else:
            self._hs = ServerHandshake(config, bytes(transport_parameters), checked)

    def on_client_parameters(self, hook: Callable[[bytes], bytes]) -> None:
        """(server) ``hook(client transport parameters)`` runs on the ClientHello and
        returns the transport parameters to send (compatible version negotiation)."""
        if isinstance(self._hs, ServerHandshake):
            self._hs.params_hook = hook

    def on_early_data(self, hook: Callable[[TicketContents], bool]) -> None:
        """(server) ``hook(ticket)`` has the last say on accepting a ClientHello's 0-RTT
        (after the checks of RFC 8446 §4.2.10 and §8.3 passed)."""
        if isinstance(self._hs, ServerHandshake):
            self._hs.early_data_hook = hook

    def set_wall_time(self, wall_time: float) -> None:
        """Wall-clock (Unix) seconds now: ticket ages and lifetimes are wall-clock
        times, shared by every process and host (the caller knows the clock)."""
        self._hs.wall_time = wall_time

    @property
    def session_resumed(self) -> bool:
        """The server accepted a resumption PSK (no certificates in this handshake)."""
        return self._hs.resumed

    @property
    def early_data_status(self) -> bool | None:
        """0-RTT: None when not offered (or, on a client, not yet answered), False when
        rejected, True when accepted (a client knows at EncryptedExtensions or a
        HelloRetryRequest)."""
        return self._hs.early_status

    @property
    def early_data_offered(self) -> bool:
        """(client) 0-RTT was offered in the ClientHello (its keys are in pop_secrets)."""
        return isinstance(self._hs, ClientHandshake) and self._hs.early_offered

    @property
    def offered_ticket(self) -> SessionTicket | None:
        """(client) The configured session ticket."""
        return self._hs.config.session_ticket if isinstance(self._hs, ClientHandshake) else None

    def pop_tickets(self) -> list[SessionTicket]:
        """(client) Session tickets received since the last call."""
        if isinstance(self._hs, ClientHandshake):
            out, self._hs.tickets = self._hs.tickets, []
            return out
        return []

    def start(self) -> None:
        """Client: queue the ClientHello in ``Epoch.INITIAL``. Server: nothing."""
        if isinstance(self._hs, ClientHandshake):
            self._hs.start()

    def receive(self, epoch: Epoch, data: bytes) -> None:
        """Feed in-order CRYPTO bytes of ``epoch`` (partial or several messages)."""
        self._hs.receive(epoch, data)

    def pop_output(self) -> list[tuple[Epoch, bytes]]:
        """Handshake bytes to send, in order, with their epoch."""
        out, self._hs.output = self._hs.output, []
        return out

    def pop_secrets(self) -> list[Secret]:
        """``(epoch, is_send, suite, secret)`` of the traffic secrets installed since the
        last call: handshake secrets once the ServerHello is processed/sent, then 1-RTT
        secrets (server: after its Finished; client: after its Finished)."""
        out, self._hs.secrets = self._hs.secrets, []
        return out

    @property
    def is_client(self) -> bool:
        return isinstance(self._hs, ClientHandshake)

    @property
    def handshake_complete(self) -> bool:
        """True once the peer's Finished is verified (and, on the client, ours sent)."""
        return self._hs.complete

    @property
    def alpn_protocol(self) -> str | None:
        return self._hs.alpn

    @property
    def peer_transport_parameters(self) -> bytes | None:
        """The peer's raw quic_transport_parameters extension."""
        return self._hs.peer_tp

    @property
    def peer_certificates(self) -> list[x509.Certificate]:
        """The peer's chain, leaf first: the server's (client side), or the client's
        (server side; empty when the client presented none or none was asked for)."""
        return list(self._hs.peer_certs)

    @property
    def peer_certificate_ders(self) -> list[bytes]:
        """``peer_certificates`` as DER bytes (plain data a connection keeps)."""
        return list(self._hs.peer_cert_ders)

    @property
    def cipher_suite(self) -> CipherSuite | None:
        return self._hs.suite if self._hs.ks is not None else None

    @property
    def server_name(self) -> str | None:
        """Server side: the SNI host name the client sent; client side: the configured one."""
        if isinstance(self._hs, ServerHandshake):
            return self._hs.server_name
        return self._hs.config.server_name
