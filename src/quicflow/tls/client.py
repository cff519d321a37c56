"""The client side of the TLS 1.3 handshake as QUIC uses it (RFC 9001 §4)."""

from __future__ import annotations

import hmac
import ipaddress
import os

from cryptography.hazmat.primitives.serialization import Encoding

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.suites import CipherSuite, suite_hash

from .alerts import (
    BAD_CERTIFICATE,
    DECODE_ERROR,
    DECRYPT_ERROR,
    ILLEGAL_PARAMETER,
    MISSING_EXTENSION,
    NO_APPLICATION_PROTOCOL,
    PROTOCOL_VERSION,
    QUIC_PROTOCOL_VIOLATION,
    UNEXPECTED_MESSAGE,
    UNSUPPORTED_EXTENSION,
    TlsAlert,
)
from .config import TlsConfig
from .core import HandshakeCore
from .keyschedule import KeySchedule, message_hash, transcript_hash
from .keyshare import KeyExchangeKey, generate_key, public_bytes, shared_secret
from .messages import (
    CERTIFICATE,
    CERTIFICATE_REQUEST,
    CERTIFICATE_VERIFY,
    ENCRYPTED_EXTENSIONS,
    EXT_ALPN,
    EXT_COOKIE,
    EXT_EARLY_DATA,
    EXT_KEY_SHARE,
    EXT_PRE_SHARED_KEY,
    EXT_PSK_KEY_EXCHANGE_MODES,
    EXT_QUIC_TRANSPORT_PARAMETERS,
    EXT_SERVER_NAME,
    EXT_SIGNATURE_ALGORITHMS,
    EXT_SUPPORTED_GROUPS,
    EXT_SUPPORTED_VERSIONS,
    FINISHED,
    GROUP_IDS,
    KEY_UPDATE,
    NEW_SESSION_TICKET,
    SERVER_HELLO,
    TLS13,
    ClientHello,
    ServerHello,
    decode_certificate_request,
    decode_certificate_verify,
    decode_encrypted_extensions,
    decode_peer_certificate,
    decode_server_hello,
    encode_certificate,
    encode_certificate_verify,
    encode_client_hello,
    encode_finished,
    ext_alpn,
    ext_cookie,
    ext_key_share_client,
    ext_server_name,
    ext_supported_versions_client,
    handshake,
    parse_alpn,
    parse_cookie,
    parse_key_share_server,
    parse_u16,
    parse_u16_list,
    u16_list,
    vec,
)
from .tickets import (
    PSK_DHE_KE,
    QUIC_MAX_EARLY_DATA,
    SessionTicket,
    decode_new_session_ticket,
    encode_offered_psks,
    encode_psk_modes,
    parse_empty,
    parse_selected_identity,
)
from .verify import (
    CLIENT_CONTEXT,
    CLIENT_SIGNATURE_ALGORITHMS,
    SERVER_CONTEXT,
    certificate_verify_content,
    load_der_chain,
    sign,
    signature_algorithms_for_key,
    verify_chain,
    verify_signature,
)

# client states
WAIT_SH, WAIT_EE, WAIT_CERT, WAIT_CV, WAIT_FINISHED, DONE = range(6)

_SH_ALLOWED = {EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE, EXT_PRE_SHARED_KEY}
_HRR_ALLOWED = {EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE, EXT_COOKIE}
#: what RFC 8446 §4.2 (its table) allows in EncryptedExtensions, RFC 9001 §8.2's
#: quic_transport_parameters too: server_name, max_fragment_length, supported_groups,
#: use_srtp, heartbeat, ALPN, client/server_certificate_type, early_data
_EE_ALLOWED = frozenset({EXT_SERVER_NAME, 1, EXT_SUPPORTED_GROUPS, 14, 15, EXT_ALPN, 19, 20,
                         EXT_EARLY_DATA, EXT_QUIC_TRANSPORT_PARAMETERS})


#: encoded ClientHello extensions that depend only on the configuration, by (groups,
#: ALPN protocols, server name): (supported_groups, alpn, server_name or None); a few
#: entries per process (cleared when it grows past 64)
_HELLO_PARTS: dict[tuple[tuple[int, ...], tuple[str, ...], str | None],
                  tuple[bytes, bytes, bytes | None]] = {}
_SUPPORTED_VERSIONS = ext_supported_versions_client([TLS13])
_SIGNATURE_ALGORITHMS = u16_list(CLIENT_SIGNATURE_ALGORITHMS)
_PSK_MODES = encode_psk_modes([PSK_DHE_KE])


def _hello_parts(group_ids: list[int], alpn: list[str],
                 server_name: str | None) -> tuple[bytes, bytes, bytes | None]:
    key = (tuple(group_ids), tuple(alpn), server_name)
    parts = _HELLO_PARTS.get(key)
    if parts is None:
        sni = (ext_server_name(server_name) if server_name and not _is_ip(server_name)
               else None)
        parts = (u16_list(group_ids), ext_alpn(alpn), sni)
        if len(_HELLO_PARTS) >= 64:
            _HELLO_PARTS.clear()
        _HELLO_PARTS[key] = parts
    return parts


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ClientHandshake(HandshakeCore):
    def __init__(self, config: TlsConfig, transport_parameters: bytes) -> None:
        super().__init__(config, transport_parameters)
        self.state = WAIT_SH
        self.client_random = os.urandom(32)
        self.group_ids = [GROUP_IDS[g] for g in config.groups]
        self.shares: dict[int, KeyExchangeKey] = {}
        self.hello: ClientHello | None = None
        self.retried_suite: int | None = None
        self.cert_request_context: bytes | None = None
        self.cert_request_schemes: list[int] = []
        self.started = False
        #: resumption: the ticket offered, whether 0-RTT was offered and what became of
        #: it (None: not offered; True accepted; False rejected), whether the server
        #: took the PSK; the resumption secret once complete; tickets received
        self.psk_ticket: SessionTicket | None = None
        self.psk: bytes = b""
        self.early_offered = False
        self.early_status: bool | None = None
        self.tickets_received = 0
        self.resumed = False
        self.resumption_secret = b""
        self.wall_time = 0.0
        self.tickets: list[SessionTicket] = []

    def expected_epoch(self) -> Epoch | None:
        if self.state == WAIT_SH:
            return Epoch.INITIAL if self.started else None
        if self.state == DONE:
            return None
        return Epoch.HANDSHAKE

    # ------------------------------------------------------------ ClientHello

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        group = self.group_ids[0]
        self.shares = {group: generate_key(group)}
        cfg = self.config
        groups, alpn, sni = _hello_parts(self.group_ids, cfg.alpn_protocols, cfg.server_name)
        extensions = [
            (EXT_SUPPORTED_VERSIONS, _SUPPORTED_VERSIONS),
            (EXT_SUPPORTED_GROUPS, groups),
            (EXT_KEY_SHARE, ext_key_share_client([(group, public_bytes(self.shares[group]))])),
            (EXT_SIGNATURE_ALGORITHMS, _SIGNATURE_ALGORITHMS),
            (EXT_ALPN, alpn),
            (EXT_QUIC_TRANSPORT_PARAMETERS, self.transport_parameters),
        ]
        if sni is not None:
            extensions.insert(0, (EXT_SERVER_NAME, sni))
        # the modes we resume with: servers send tickets only to clients that list one
        # (RFC 8446 §4.2.9)
        extensions.append((EXT_PSK_KEY_EXCHANGE_MODES, _PSK_MODES))
        ticket = cfg.session_ticket
        if ticket is not None and self._ticket_fits(ticket):
            self.psk_ticket = ticket
            self.psk = ticket.psk
            if cfg.early_data and ticket.max_early_data:
                extensions.append((EXT_EARLY_DATA, b""))
                self.early_offered = True
            identity = (ticket.ticket, ticket.obfuscated_age(self.wall_time))
            binder = bytes(suite_hash(CipherSuite(ticket.suite)).digest_size)
            extensions.append((EXT_PRE_SHARED_KEY, encode_offered_psks([identity], [binder])))
        self.hello = ClientHello(
            random=self.client_random,
            session_id=b"",
            cipher_suites=[int(s) for s in cfg.cipher_suites],
            extensions=extensions,
        )
        self._send_hello()

    def _ticket_fits(self, ticket: SessionTicket) -> bool:
        """Offer ``ticket`` only to the server it came from, for a protocol and a suite
        we offer, while it lives (RFC 8446 §4.6.1)."""
        cfg = self.config
        return (
            ticket.usable(self.wall_time)
            and ticket.server_name == (cfg.server_name or "")
            and ticket.alpn in cfg.alpn_protocols
            and ticket.suite in [int(s) for s in cfg.cipher_suites]
        )

    def _send_hello(self) -> None:
        assert self.hello is not None
        data = encode_client_hello(self.hello)
        ticket = self.psk_ticket
        if ticket is not None:
            # the binder signs the transcript up to the binders list (RFC 8446 §4.2.11.2)
            suite = CipherSuite(ticket.suite)
            ks = KeySchedule(suite, self.psk)
            hash_len = ks.hash_len
            truncated = bytes(self.transcript) + data[: -(3 + hash_len)]
            binder = ks.binder(transcript_hash(suite, truncated))
            data = data[:-hash_len] + binder
            if self.early_offered and self.retried_suite is None:
                secret = ks.client_early_traffic(transcript_hash(suite, data))
                self.secrets.append((Epoch.ZERO_RTT, True, suite, secret))
                self.keylog("CLIENT_EARLY_TRAFFIC_SECRET", secret)
        self.transcript += data
        self.send(Epoch.INITIAL, data)

    # ------------------------------------------------------------ dispatch

    def handle(self, epoch: Epoch, msg_type: int, body: bytes, raw: bytes) -> None:
        state = self.state
        if state == WAIT_SH and msg_type == SERVER_HELLO:
            self._server_hello(decode_server_hello(body), raw)
        elif state == WAIT_EE and msg_type == ENCRYPTED_EXTENSIONS:
            self._encrypted_extensions(body, raw)
        elif state == WAIT_CERT and msg_type == CERTIFICATE_REQUEST:
            self._certificate_request(body, raw)
        elif state == WAIT_CERT and msg_type == CERTIFICATE:
            self._certificate(body, raw)
        elif state == WAIT_CV and msg_type == CERTIFICATE_VERIFY:
            self._certificate_verify(body, raw)
        elif state == WAIT_FINISHED and msg_type == FINISHED:
            self._finished(body, raw)
        else:
            raise TlsAlert(UNEXPECTED_MESSAGE, f"unexpected handshake message type {msg_type}")

    def handle_post_handshake(self, epoch: Epoch, msg_type: int, body: bytes) -> None:
        if epoch != Epoch.ONE_RTT:
            raise TlsAlert(
                UNEXPECTED_MESSAGE, f"message {msg_type} in {epoch.name} after handshake"
            )
        if msg_type == NEW_SESSION_TICKET:
            self._new_session_ticket(body)
            return
        if msg_type == KEY_UPDATE:
            raise TlsAlert(UNEXPECTED_MESSAGE, "KeyUpdate is forbidden in QUIC")
        raise TlsAlert(UNEXPECTED_MESSAGE, f"unexpected post-handshake message {msg_type}")

    # ------------------------------------------------------------ ServerHello / HRR

    def _check_common(self, sh: ServerHello, allowed: set[int]) -> CipherSuite:
        assert self.hello is not None
        if EXT_SUPPORTED_VERSIONS not in sh.ext_map:
            raise TlsAlert(PROTOCOL_VERSION, "server did not negotiate TLS 1.3")
        if parse_u16(sh.ext_map[EXT_SUPPORTED_VERSIONS]) != TLS13:
            raise TlsAlert(ILLEGAL_PARAMETER, "server selected a version other than TLS 1.3")
        for ext_type in sh.ext_map:
            if ext_type not in allowed:
                raise TlsAlert(UNSUPPORTED_EXTENSION, f"unsolicited extension {ext_type}")
        if sh.session_id != self.hello.session_id:
            raise TlsAlert(ILLEGAL_PARAMETER, "server did not echo legacy_session_id")
        if sh.cipher_suite not in self.hello.cipher_suites:
            raise TlsAlert(ILLEGAL_PARAMETER, f"server chose cipher suite {sh.cipher_suite:#06x}")
        if self.retried_suite is not None and sh.cipher_suite != self.retried_suite:
            raise TlsAlert(ILLEGAL_PARAMETER, "cipher suite changed after HelloRetryRequest")
        return CipherSuite(sh.cipher_suite)

    def _server_hello(self, sh: ServerHello, raw: bytes) -> None:
        if sh.is_retry_request:
            self._hello_retry_request(sh, raw)
            return
        suite = self._check_common(sh, _SH_ALLOWED)
        if EXT_KEY_SHARE not in sh.ext_map:
            if EXT_PRE_SHARED_KEY in sh.ext_map:  # RFC 8446 §4.2.11: we offer psk_dhe_ke
                raise TlsAlert(ILLEGAL_PARAMETER, "PSK ServerHello without the key_share "
                               "psk_dhe_ke requires")
            raise TlsAlert(MISSING_EXTENSION, "ServerHello has no key_share")
        group, peer_key = parse_key_share_server(sh.ext_map[EXT_KEY_SHARE])
        if group not in self.shares:
            raise TlsAlert(ILLEGAL_PARAMETER, f"server key share for unoffered group {group:#06x}")
        self.require_empty(Epoch.INITIAL)
        psk: bytes | None = None
        if EXT_PRE_SHARED_KEY in sh.ext_map:
            ticket = self.psk_ticket
            if ticket is None or parse_selected_identity(sh.ext_map[EXT_PRE_SHARED_KEY]) != 0:
                raise TlsAlert(ILLEGAL_PARAMETER, "server selected a PSK we did not offer")
            if suite_hash(CipherSuite(ticket.suite)).name != suite_hash(suite).name:
                raise TlsAlert(ILLEGAL_PARAMETER, "server chose a suite the PSK cannot use")
            psk = self.psk
            self.resumed = True
        shared = shared_secret(self.shares[group], peer_key)
        self.shares.clear()
        self.suite = suite
        self.ks = KeySchedule(suite, psk)
        self.ks.set_shared_secret(shared)
        self.transcript += raw
        self.install_handshake_secrets()
        self.state = WAIT_EE

    def _hello_retry_request(self, hrr: ServerHello, raw: bytes) -> None:
        assert self.hello is not None
        if self.retried_suite is not None:
            raise TlsAlert(UNEXPECTED_MESSAGE, "second HelloRetryRequest")
        suite = self._check_common(hrr, _HRR_ALLOWED)
        self.require_empty(Epoch.INITIAL)
        self.retried_suite = int(suite)
        cookie = parse_cookie(hrr.ext_map[EXT_COOKIE]) if EXT_COOKIE in hrr.ext_map else None
        new_group: int | None = None
        if EXT_KEY_SHARE in hrr.ext_map:
            new_group = parse_u16(hrr.ext_map[EXT_KEY_SHARE])
            if new_group not in self.group_ids or new_group in self.shares:
                raise TlsAlert(
                    ILLEGAL_PARAMETER, f"HelloRetryRequest selected bad group {new_group:#06x}"
                )
        elif cookie is None:
            raise TlsAlert(ILLEGAL_PARAMETER, "HelloRetryRequest would not change ClientHello")
        # transcript: message_hash(ClientHello1) || HelloRetryRequest || ClientHello2
        self.transcript = bytearray(message_hash(suite, bytes(self.transcript)) + raw)
        extensions = []
        for ext_type, data in self.hello.extensions:
            if ext_type == EXT_KEY_SHARE and new_group is not None:
                self.shares = {new_group: generate_key(new_group)}
                key = public_bytes(self.shares[new_group])
                data = ext_key_share_client([(new_group, key)])
            if ext_type not in (EXT_COOKIE, EXT_EARLY_DATA, EXT_PRE_SHARED_KEY):
                extensions.append((ext_type, data))
        if cookie is not None:
            extensions.append((EXT_COOKIE, ext_cookie(cookie)))
        if self.early_offered:
            self.early_status = False
        # a HelloRetryRequest rejects 0-RTT (RFC 8446 §4.2.10, RFC 9001 §4.7); the PSK is
        # offered again if its hash is the one the server chose, with a new binder
        if self.psk_ticket is not None and (
            suite_hash(CipherSuite(self.psk_ticket.suite)).name != suite_hash(suite).name
        ):
            self.psk_ticket = None
        if self.psk_ticket is not None:
            ticket = self.psk_ticket
            identity = (ticket.ticket, ticket.obfuscated_age(self.wall_time))
            binder = bytes(suite_hash(suite).digest_size)
            extensions.append((EXT_PRE_SHARED_KEY, encode_offered_psks([identity], [binder])))
        self.hello.extensions = extensions
        self._send_hello()

    # ------------------------------------------------------------ encrypted flight

    def _encrypted_extensions(self, body: bytes, raw: bytes) -> None:
        ext = decode_encrypted_extensions(body)
        assert self.hello is not None
        offered = {ext_type for ext_type, _ in self.hello.extensions}
        for ext_type in ext:  # RFC 8446 §4.2: a response to no request, or out of place
            if ext_type not in offered:
                raise TlsAlert(UNSUPPORTED_EXTENSION,
                               f"extension {ext_type} in EncryptedExtensions was not offered")
            if ext_type not in _EE_ALLOWED:
                raise TlsAlert(ILLEGAL_PARAMETER, f"extension {ext_type} in EncryptedExtensions")
        if EXT_ALPN not in ext:
            raise TlsAlert(NO_APPLICATION_PROTOCOL, "server did not select an ALPN protocol")
        protocols = parse_alpn(ext[EXT_ALPN])
        if len(protocols) != 1 or protocols[0] not in self.config.alpn_protocols:
            raise TlsAlert(ILLEGAL_PARAMETER, f"server selected unoffered ALPN {protocols!r}")
        if EXT_QUIC_TRANSPORT_PARAMETERS not in ext:
            raise TlsAlert(MISSING_EXTENSION, "server sent no quic_transport_parameters")
        if EXT_EARLY_DATA in ext:
            parse_empty(ext[EXT_EARLY_DATA])
            if not self.resumed or not self.early_offered or self.retried_suite is not None:
                raise TlsAlert(ILLEGAL_PARAMETER, "server accepted early data never offered")
            assert self.psk_ticket is not None
            if protocols[0] != self.psk_ticket.alpn:  # RFC 8446 §4.2.10
                raise TlsAlert(ILLEGAL_PARAMETER, "0-RTT accepted with another ALPN protocol")
            self.early_status = True
        elif self.early_offered:
            self.early_status = False
        self.alpn = protocols[0]
        self.peer_tp = ext[EXT_QUIC_TRANSPORT_PARAMETERS]
        self.transcript += raw
        self.state = WAIT_FINISHED if self.resumed else WAIT_CERT

    def _certificate_request(self, body: bytes, raw: bytes) -> None:
        context, ext = decode_certificate_request(body)
        if self.cert_request_context is not None:
            raise TlsAlert(UNEXPECTED_MESSAGE, "second CertificateRequest")
        if EXT_SIGNATURE_ALGORITHMS not in ext:  # RFC 8446 §4.3.2: it MUST be there
            raise TlsAlert(MISSING_EXTENSION, "CertificateRequest without signature_algorithms")
        self.cert_request_context = context
        self.cert_request_schemes = parse_u16_list(ext[EXT_SIGNATURE_ALGORITHMS])
        self.transcript += raw

    def _certificate(self, body: bytes, raw: bytes) -> None:
        context, ders = decode_peer_certificate(body, "server")
        if context:
            raise TlsAlert(ILLEGAL_PARAMETER, "server Certificate with a request context")
        if not ders:
            raise TlsAlert(DECODE_ERROR, "server sent an empty certificate list")
        try:
            certs = load_der_chain(ders)
        except ValueError as exc:
            raise TlsAlert(BAD_CERTIFICATE, f"cannot parse server certificate: {exc}") from exc
        cfg = self.config
        if cfg.verify_peer:
            verify_chain(certs, cfg.server_name, cfg.cafile, cfg.cadata)
        self.peer_certs = certs
        self.peer_cert_ders = ders
        self.transcript += raw
        self.state = WAIT_CV

    def _certificate_verify(self, body: bytes, raw: bytes) -> None:
        algorithm, signature = decode_certificate_verify(body)
        content = certificate_verify_content(SERVER_CONTEXT, self.thash())
        verify_signature(self.peer_certs[0], algorithm, signature, content)
        self.transcript += raw
        self.state = WAIT_FINISHED

    def _client_authentication(self) -> bytes:
        """Our Certificate (and CertificateVerify) for the server's CertificateRequest:
        our chain signed with a scheme the server listed, else an empty Certificate."""
        assert self.cert_request_context is not None
        cfg = self.config
        key = cfg.private_key
        scheme = None
        if key is not None and cfg.certificate_chain:
            ours = signature_algorithms_for_key(key)
            scheme = next((s for s in ours if s in self.cert_request_schemes), None)
        if key is None or scheme is None:
            empty = handshake(CERTIFICATE, vec(1, self.cert_request_context) + vec(3, b""))
            self.transcript += empty
            return empty
        cert = encode_certificate(
            self.cert_request_context,
            [c.public_bytes(Encoding.DER) for c in cfg.certificate_chain],
        )
        self.transcript += cert
        content = certificate_verify_content(CLIENT_CONTEXT, self.thash())
        cv = encode_certificate_verify(scheme, sign(key, scheme, content))
        self.transcript += cv
        return cert + cv

    def _finished(self, body: bytes, raw: bytes) -> None:
        assert self.ks is not None
        expected = self.ks.finished_verify_data(self.server_hs_secret, self.thash())
        if not hmac.compare_digest(expected, body):
            raise TlsAlert(DECRYPT_ERROR, "server Finished does not verify")
        self.require_empty(Epoch.HANDSHAKE)
        self.transcript += raw
        server_finished_hash = self.thash()
        out = self._client_authentication() if self.cert_request_context is not None else b""
        fin = encode_finished(self.ks.finished_verify_data(self.client_hs_secret, self.thash()))
        self.transcript += fin
        self.send(Epoch.HANDSHAKE, out + fin)
        self.install_application_secrets(server_finished_hash)
        self.resumption_secret = self.ks.resumption_master(self.thash())
        self.state = DONE
        self.complete = True
        self.transcript = bytearray()  # no use any more (tickets need only the secret)

    def _new_session_ticket(self, body: bytes) -> None:
        """Keep a ticket (RFC 8446 §4.6.1) with the server's transport parameters for
        0-RTT (RFC 9000 §7.4.1); RFC 9001 §4.6.1: early data other than 0xffffffff is
        a PROTOCOL_VIOLATION."""
        nst = decode_new_session_ticket(body)
        if nst.max_early_data is not None and nst.max_early_data != QUIC_MAX_EARLY_DATA:
            raise TlsAlert(ILLEGAL_PARAMETER, "max_early_data_size other than 0xffffffff",
                           transport_error=QUIC_PROTOCOL_VIOLATION)
        assert self.ks is not None and self.suite is not None and self.alpn is not None
        self.tickets_received += 1
        if not nst.lifetime or self.tickets_received > 8:  # a few are plenty
            return
        self.tickets.append(SessionTicket(
            ticket=nst.ticket,
            psk=self.ks.ticket_psk(self.resumption_secret, nst.nonce),
            suite=int(self.suite),
            alpn=self.alpn,
            server_name=self.config.server_name or "",
            age_add=nst.age_add,
            lifetime=nst.lifetime,
            received_at=self.wall_time,
            max_early_data=nst.max_early_data or 0,
            transport_parameters=self.peer_tp or b"",
        ))
