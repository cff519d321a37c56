"""Session resumption and 0-RTT in the transport (RFC 9001 §4.6, RFC 9000 §7.4.1).

Client: the ticket's remembered transport parameters set the limits 0-RTT data may use
(``Connection.remembered_params``); STREAM frames go in 0-RTT packets (long header type
0x1 in v1) until the 1-RTT keys are there. When the server rejects 0-RTT (its
EncryptedExtensions without early_data, or a HelloRetryRequest), the 0-RTT packets are
forgotten without a congestion signal and their frames queued again: the stream layer
sends the same bytes in 1-RTT, so nothing is lost.

Server: 0-RTT keys are installed only when TLS accepted early data, which needs the
ticket's remembered parameters not above ours now, the strike register's consent (each
ticket's 0-RTT once, see tls/tickets.py) and the application's ``early_data_hook``.
0-RTT packets that come before the connection exists (before its Initial) are dropped
by the endpoint (counted as unknown CIDs); the client sends their frames again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..crypto.epoch import Epoch
from ..tls import tickets
from ..tls.session import TlsSession
from ..tls.tickets import REMEMBERED, TicketContents, remembered_parameters
from ..wire import frames as F
from ..wire.tparams import TransportParameters, encode_transport_parameters
from .errors import INTERNAL_ERROR, PROTOCOL_VIOLATION, QuicError
from .events import SessionTicketReceived

if TYPE_CHECKING:
    from .connection import Connection

#: frames a 0-RTT packet must not carry (RFC 9000 §12.4, §17.2.3)
FORBIDDEN_IN_0RTT = (F.Ack, F.Crypto, F.NewToken, F.HandshakeDone, F.PathResponse,
                     F.RetireConnectionId, F.ImmediateAck)  # (the last: ack-frequency §5)


_TICKET_PARAMETERS: dict[tuple[int, ...], bytes] = {}


def ticket_parameters(conn: Connection) -> bytes:
    """The remembered limits a server's tickets carry (RFC 9000 §7.4.1), encoded; made
    once per set of limits (they come from the configuration), not per handshake."""
    cfg = conn.configuration
    limits = (cfg.active_connection_id_limit, cfg.max_data, cfg.max_stream_data,
              cfg.max_streams_bidi, cfg.max_streams_uni, cfg.max_datagram_frame_size)
    encoded = _TICKET_PARAMETERS.get(limits)
    if encoded is None:
        ours = conn.local_params()
        params = TransportParameters()
        for name in REMEMBERED:
            setattr(params, name, getattr(ours, name))
        if len(_TICKET_PARAMETERS) >= 64:
            _TICKET_PARAMETERS.clear()
        encoded = _TICKET_PARAMETERS[limits] = encode_transport_parameters(params)
    return encoded


def start_client(conn: Connection, tls: TlsSession) -> None:
    """After the ClientHello: 0-RTT send keys in place, so apply the ticket's limits."""
    ticket = tls.offered_ticket
    if not tls.early_data_offered or ticket is None:
        return
    params = remembered_parameters(ticket.transport_parameters)
    if params is None:
        return
    conn.early_data_attempted = True
    conn.remembered_params = params
    conn.flow.peer_max_data = params.initial_max_data
    conn.bidi.peer_max = params.initial_max_streams_bidi
    conn.uni.peer_max = params.initial_max_streams_uni


def server_hook(conn: Connection, tls: TlsSession) -> None:
    """Let ``tls`` ask the transport and the application about 0-RTT."""

    def decide(ticket: TicketContents) -> bool:
        cfg = conn.configuration
        register = cfg.strike_register
        if register is None or conn.version_switched:
            return False
        remembered = remembered_parameters(ticket.transport_parameters)
        ours = conn.local_params()
        if remembered is None or any(
            getattr(ours, name) < getattr(remembered, name) for name in REMEMBERED
        ):
            return False  # RFC 9000 §7.4.1: we may not lower what the client remembers
        hook = cfg.early_data_hook
        if hook is not None and not hook(ticket.server_name or None, ticket.alpn,
                                         conn.peer_address):
            return False
        return bool(register.admit(ticket.ticket_id, conn._now_hint + conn.wall_offset))

    tls.on_early_data(decide)


def after_tls(conn: Connection, tls: TlsSession) -> None:
    """What the TLS layer learnt about resumption: accepted or rejected 0-RTT, the
    resumption, new tickets (client)."""
    status = tls.early_data_status
    conn.session_resumed = tls.session_resumed
    if conn.is_client:
        for ticket in tls.pop_tickets():
            conn.events.append(SessionTicketReceived(ticket))
        if status is True:
            conn.early_data_accepted = True
        elif status is False and conn.early_data_attempted and conn.remembered_params:
            reject_early_data(conn)
        if conn.one_rtt_ready:
            conn.send_protectors[Epoch.ZERO_RTT] = None  # RFC 9001 §4.9.3
    else:
        conn.early_data_attempted = status is not None
        conn.early_data_accepted = bool(status)


def on_server_parameters(conn: Connection, params: TransportParameters) -> None:
    """(client that attempted 0-RTT) The server's transport parameters came, in its
    EncryptedExtensions, already applied to the connection's limits.

    Accepted: they may not be below the remembered ones (RFC 9000 §7.4.1; RFC 9221 §3
    for max_datagram_frame_size: PROTOCOL_VIOLATION), and no more 0-RTT packets go, as
    they may only use the remembered limits: what is left waits for the 1-RTT keys (the
    server's Finished, most often in the same flight).

    Rejected: the 0-RTT frames go again in 1-RTT (``reject_early_data``), which is right
    only when they fit what the server now allows and its application protocol is the
    ticket's (RFC 9001 §4.6.2: "all connection characteristics that the client assumed
    might be incorrect"); else the connection closes (INTERNAL_ERROR, with the reason)
    rather than break the server's limits or hand the bytes to another protocol."""
    if conn.early_data_accepted:
        remembered = conn.remembered_params
        if remembered is not None:
            lowered = [name for name in tickets.REMEMBERED  # (the client's list)
                       if getattr(params, name) < getattr(remembered, name)]
            if lowered:
                raise QuicError(PROTOCOL_VIOLATION,
                                f"0-RTT accepted with lower limits than remembered: {lowered}")
        conn.send_protectors[Epoch.ZERO_RTT] = None
        return
    why = _unfit_after_rejection(conn, params)
    if why:
        raise QuicError(INTERNAL_ERROR, f"0-RTT rejected and its data cannot be sent again: "
                        f"{why} (open a new connection)")


def _unfit_after_rejection(conn: Connection, params: TransportParameters) -> str:
    tls = conn.tls
    ticket = tls.offered_ticket if tls is not None else None
    chosen = tls.alpn_protocol if tls is not None else None
    if ticket is not None and chosen not in (None, ticket.alpn):
        return f"the server chose ALPN {chosen!r}, not the ticket's {ticket.alpn!r}"
    if conn.flow.data_sent > params.initial_max_data:
        return "more data than the server's initial_max_data"
    if conn.bidi.opened_local > params.initial_max_streams_bidi or (
            conn.uni.opened_local > params.initial_max_streams_uni):
        return "more streams than the server allows"
    for stream in conn.streams.values():
        send = stream.send
        if send is not None and stream.local and send.next_offset > send.max_data:
            return f"stream {stream.stream_id} beyond the server's initial_max_stream_data"
    return ""


def reject_early_data(conn: Connection) -> None:
    """(client) The server rejected 0-RTT: forget the 0-RTT packets and send their
    frames again in 1-RTT; the remembered limits give way to the server's own."""
    from .recovery_glue import resend_frames

    conn.send_protectors[Epoch.ZERO_RTT] = None
    conn.remembered_params = None
    conn.early_data_accepted = False
    resend_frames(conn, conn.loss.discard_epoch(Epoch.ZERO_RTT))


def on_retry(conn: Connection) -> None:
    """(client) A Retry: the server kept nothing of the first flight, so the 0-RTT
    packets in it are lost; their frames go again at once (in 0-RTT, to the new DCID;
    RFC 9000 §17.2.5.3)."""
    from .recovery_glue import resend_frames

    if conn.send_protectors[Epoch.ZERO_RTT] is not None:
        resend_frames(conn, conn.loss.discard_epoch(Epoch.ZERO_RTT))


def client_switched_version(conn: Connection) -> None:
    """Compatible version negotiation moved the client to another version: its 0-RTT
    (in the first version) is not accepted; resend the data in 1-RTT."""
    if conn.is_client and conn.send_protectors[Epoch.ZERO_RTT] is not None:
        reject_early_data(conn)
