"""The server side of the TLS 1.3 handshake as QUIC uses it (RFC 9001 §4)."""

from __future__ import annotations

import hmac
import operator
import os
import struct
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.extension import native_for_keys
from quicflow.crypto.randoms import random_part
from quicflow.crypto.suites import CipherSuite, suite_hash

from .alerts import (
    BAD_CERTIFICATE,
    CERTIFICATE_REQUIRED,
    DECRYPT_ERROR,
    HANDSHAKE_FAILURE,
    ILLEGAL_PARAMETER,
    MISSING_EXTENSION,
    NO_APPLICATION_PROTOCOL,
    PROTOCOL_VERSION,
    QUIC_PROTOCOL_VIOLATION,
    UNEXPECTED_MESSAGE,
    TlsAlert,
)
from .config import TlsConfig
from .core import HandshakeCore
from .keyschedule import KeySchedule, message_hash, transcript_hash
from .keyshare import server_share
from .messages import (
    CERTIFICATE,
    CERTIFICATE_VERIFY,
    CLIENT_HELLO,
    ENCRYPTED_EXTENSIONS,
    EXT_ALPN,
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
    HRR_RANDOM,
    LEGACY_VERSION,
    NEW_SESSION_TICKET,
    OFFER_ALPN,
    OFFER_GROUPS,
    OFFER_PSK_MODES,
    OFFER_SHARES,
    OFFER_SIGNATURES,
    OFFER_SNI,
    OFFER_VERSIONS,
    SERVER_HELLO,
    TLS13,
    ClientHello,
    ServerHello,
    decode_certificate_verify,
    decode_client_hello,
    decode_peer_certificate,
    encode_certificate,
    encode_certificate_request,
    encode_certificate_verify,
    encode_finished,
    encode_server_hello,
    ext_alpn,
    parse_alpn,
    parse_key_share_client,
    parse_server_name,
    parse_supported_versions_client,
    parse_u16_list,
    u16_list,
)
from .tickets import (
    PSK_DHE_KE,
    QUIC_MAX_EARLY_DATA,
    TICKET_AAD,
    TicketContents,
    TicketSealer,
    compact_parameters,
    encode_ticket,
    parse_empty,
    parse_offered_psks,
    parse_psk_modes,
)
from .verify import (
    CLIENT_CONTEXT,
    CLIENT_SIGNATURE_ALGORITHMS,
    SERVER_CONTEXT,
    certificate_verify_content,
    load_der_chain,
    signature_algorithms_for_key,
    signer_for_key,
    verify_client_chain,
    verify_signature,
)

# server states
WAIT_CH, WAIT_CH2, WAIT_FINISHED, DONE, WAIT_CLIENT_CERT, WAIT_CLIENT_CV = range(6)

#: the epochs as globals (an enum class attribute costs about four times more)
_INITIAL, _ZERO_RTT, _HANDSHAKE, _ONE_RTT = (Epoch.INITIAL, Epoch.ZERO_RTT, Epoch.HANDSHAKE,
                                            Epoch.ONE_RTT)

#: RFC 8446 §4.3.2: our CertificateRequest (empty context, the schemes we verify)
_CERTIFICATE_REQUEST = encode_certificate_request(
    b"", [(EXT_SIGNATURE_ALGORITHMS, u16_list(CLIENT_SIGNATURE_ALGORITHMS))]
)

#: what every handshake with one certificate and key shares, prepared once: the
#: Certificate message and the signature schemes of the key. Keyed by the identity of
#: the key object and of the chain's last certificate; the entry keeps the key and chain
#: objects (so the ids stay theirs) and is used only while the configuration holds
#: those very objects.
_IDENTITIES: dict[tuple[int, int], tuple[tuple[object, ...], bytes, list[int], Signer]] = {}
_MAX_IDENTITIES = 32
#: RFC 8446 §4.4.3: the signed content is this prefix and the transcript hash
_SERVER_VERIFY_PREFIX = certificate_verify_content(SERVER_CONTEXT, b"")
#: EncryptedExtensions' ALPN extension entry (type, length, body) by selected protocol
#: (a few per process)
_SELECTED_ALPN: dict[str, bytes] = {}
_TLS13 = TLS13.to_bytes(2, "big")


_SH_FIXED = struct.Struct("!IH32sBHBHHHHHHHH")


def server_hello_bytes(random: bytes, suite: int, group: int, key_share: bytes,
                       with_psk: bool) -> bytes:
    """The ServerHello of a full or PSK handshake with an empty legacy_session_id:
    ``encode_server_hello`` of supported_versions (TLS 1.3), key_share and, resuming,
    pre_shared_key (identity 0), in that order, packed in one go."""
    n = len(key_share)
    ext_len = 6 + 8 + n + (6 if with_psk else 0)
    head = _SH_FIXED.pack(
        (SERVER_HELLO << 24) | (38 + 2 + ext_len), LEGACY_VERSION, random, 0, suite, 0,
        ext_len, EXT_SUPPORTED_VERSIONS, 2, TLS13, EXT_KEY_SHARE, 4 + n, group, n,
    )
    if with_psk:
        return head + key_share + _PSK_ZERO
    return head + key_share


_NST_HEAD = struct.Struct("!IIIBBH")
#: a NewSessionTicket's early_data extension: max_early_data_size 0xffffffff (RFC 9001 §4.6.1)
_NST_EARLY_DATA = struct.pack("!HHHI", 8, EXT_EARLY_DATA, 4, QUIC_MAX_EARLY_DATA)


def new_session_ticket_bytes(lifetime: int, age_add: int, ticket: bytes,
                             early_data: bool) -> bytes:
    """``encode_new_session_ticket`` of a ticket with the nonce 0x00 and, with
    ``early_data``, QUIC's max_early_data_size, packed in one go."""
    n = len(ticket)
    if not 0 < n <= 0xFFFF:
        raise ValueError("bad session ticket length")
    ext = _NST_EARLY_DATA if early_data else b"\x00\x00"
    head = _NST_HEAD.pack((NEW_SESSION_TICKET << 24) | (12 + n + len(ext)), lifetime, age_add,
                          1, 0, n)
    return head + ticket + ext


#: the C engine's NewSessionTicket in one call, or None (not built, or Python forced)
_NATIVE_TICKET: Any = getattr(native_for_keys(), "ticket_message", None)


def ticket_message(sealer: TicketSealer, nonce: bytes, issued_at: float, lifetime: int,
                   age_add: int, max_early: int, suite: int, psk: bytes, alpn: str,
                   server_name: str, transport_parameters: bytes) -> bytes:
    """The NewSessionTicket of these ticket fields: ``encode_ticket``, sealed by
    ``sealer.seal_plaintext`` under ``nonce``, framed by ``new_session_ticket_bytes``
    (with 0-RTT when ``max_early``); in one C call when the fields fit (else, or without
    the extension, those three steps, with their errors)."""
    native = _NATIVE_TICKET
    if native is not None and sealer.aead_key:
        message: bytes | None = native(
            sealer.aead_key, nonce, TICKET_AAD, int(issued_at * 1000), lifetime, age_add,
            max_early, suite, psk, alpn, server_name, transport_parameters)
        if message is not None:
            return message
    plaintext = encode_ticket(issued_at, lifetime, age_add, max_early, suite, psk, alpn,
                              server_name, transport_parameters)
    return new_session_ticket_bytes(lifetime, age_add, sealer.seal_plaintext(plaintext, nonce),
                                    bool(max_early))


#: pre_shared_key in a ServerHello: selected_identity 0
_PSK_ZERO = struct.pack("!HHH", EXT_PRE_SHARED_KEY, 2, 0)


Signer = Callable[[int, bytes], bytes]


def _identity(config: TlsConfig) -> tuple[bytes, list[int], Signer]:
    """(Certificate message, signature schemes, signer) of ``config``'s certificate and
    key."""
    objects: tuple[object, ...] = (config.private_key, *config.certificate_chain)
    key = (id(config.private_key), id(objects[-1]))
    hit = _IDENTITIES.get(key)
    if hit is not None and len(hit[0]) == len(objects) and all(
        map(operator.is_, hit[0], objects)
    ):
        return hit[1], hit[2], hit[3]
    assert config.private_key is not None
    message = encode_certificate(
        b"", [c.public_bytes(Encoding.DER) for c in config.certificate_chain]
    )
    schemes = signature_algorithms_for_key(config.private_key)
    signer = signer_for_key(config.private_key)
    if len(_IDENTITIES) >= _MAX_IDENTITIES:
        _IDENTITIES.clear()
    _IDENTITIES[key] = (objects, message, schemes, signer)
    return message, schemes, signer


def _no_signer(algorithm: int, content: bytes) -> bytes:
    raise TlsAlert(HANDSHAKE_FAILURE, "no signature algorithm negotiated")


_EXT_ENTRY = struct.Struct("!HH")
_EE_HEAD = struct.Struct("!IH")
_EE_EARLY_DATA = _EXT_ENTRY.pack(EXT_EARLY_DATA, 0)


def encrypted_extensions_bytes(alpn_entry: bytes, transport_parameters: bytes,
                               early_data: bool) -> bytes:
    """``encode_encrypted_extensions`` of the ALPN extension (``alpn_entry``: its type,
    length and body), quic_transport_parameters and, with ``early_data``, an empty
    early_data extension, in that order, packed in one go."""
    n = len(transport_parameters)
    total = len(alpn_entry) + 4 + n + (4 if early_data else 0)
    if n > 0xFFFF or total > 0xFFFF:
        raise ValueError("vector too long")
    return b"".join((
        _EE_HEAD.pack((ENCRYPTED_EXTENSIONS << 24) | (2 + total), total), alpn_entry,
        _EXT_ENTRY.pack(EXT_QUIC_TRANSPORT_PARAMETERS, n), transport_parameters,
        _EE_EARLY_DATA if early_data else b"",
    ))


class ServerHandshake(HandshakeCore):
    # immutable starting values: class attributes, set on an instance when they change
    hrr_group: int | None = None
    server_name: str | None = None
    #: rewrites our transport parameters once the client's are known (see TlsSession)
    params_hook: Callable[[bytes], bytes] | None = None
    #: the application's (and the transport's) say on 0-RTT: called with the ticket of a
    #: ClientHello that may have its early data accepted
    early_data_hook: Callable[[TicketContents], bool] | None = None
    wall_time = 0.0
    resumed = False
    early_status: bool | None = None  # None: not offered; True accepted
    ticket: TicketContents | None = None
    client_ticket_age = 0.0
    client_takes_tickets = False  # the client listed psk_dhe_ke
    #: our Certificate message (from _identity, with the signature negotiation)
    certificate_message = b""
    #: the client Finished verify_data to expect and the PSK of the ticket to send, both
    #: known when our Finished goes out (b"": not known then, or no ticket)
    client_finished = b""
    ticket_psk = b""
    ticket_entropy = b""  # fresh random bytes for the ticket: age_add, nonce

    def __init__(self, config: TlsConfig, transport_parameters: bytes,
                 checked: bool = False) -> None:
        super().__init__(config, transport_parameters, checked)
        self.state = WAIT_CH
        self.group_ids = [GROUP_IDS[g] for g in config.groups]
        self.signer: Signer = _no_signer

    def expected_epoch(self) -> Epoch | None:
        if self.state in (WAIT_CH, WAIT_CH2):
            return _INITIAL
        if self.state in (WAIT_FINISHED, WAIT_CLIENT_CERT, WAIT_CLIENT_CV):
            return _HANDSHAKE
        return None

    def handle(self, epoch: Epoch, msg_type: int, body: bytes, raw: bytes) -> None:
        if self.state in (WAIT_CH, WAIT_CH2) and msg_type == CLIENT_HELLO:
            self._client_hello(decode_client_hello(body), raw)
        elif self.state == WAIT_FINISHED and msg_type == FINISHED:
            self._finished(body, raw)
        elif self.state == WAIT_CLIENT_CERT and msg_type == CERTIFICATE:
            self._client_certificate(body, raw)
        elif self.state == WAIT_CLIENT_CV and msg_type == CERTIFICATE_VERIFY:
            self._client_certificate_verify(body, raw)
        else:
            raise TlsAlert(UNEXPECTED_MESSAGE, f"unexpected handshake message type {msg_type}")

    # ------------------------------------------------------------ negotiation

    def _negotiate_suite(self, hello: ClientHello) -> CipherSuite:
        for suite in self.config.cipher_suites:
            if suite in hello.cipher_suites:
                return suite if type(suite) is CipherSuite else CipherSuite(suite)
        raise TlsAlert(HANDSHAKE_FAILURE, "no cipher suite in common")

    def _negotiate_alpn(self, ext: dict[int, bytes], offers: tuple[Any, ...] | None) -> str:
        if EXT_ALPN not in ext:
            raise TlsAlert(NO_APPLICATION_PROTOCOL, "client offered no ALPN protocol")
        offered = offers[OFFER_ALPN] if offers is not None else parse_alpn(ext[EXT_ALPN])
        for proto in self.config.alpn_protocols:
            if proto in offered:
                return proto
        raise TlsAlert(
            NO_APPLICATION_PROTOCOL,
            f"no ALPN protocol in common: client offers {offered!r}, "
            f"server supports {self.config.alpn_protocols!r}",
        )

    def _negotiate_signature(self, ext: dict[int, bytes],
                             offers: tuple[Any, ...] | None) -> int:
        if EXT_SIGNATURE_ALGORITHMS not in ext:
            raise TlsAlert(MISSING_EXTENSION, "ClientHello has no signature_algorithms")
        offered = (offers[OFFER_SIGNATURES] if offers is not None
                   else parse_u16_list(ext[EXT_SIGNATURE_ALGORITHMS]))
        assert self.config.private_key is not None
        self.certificate_message, schemes, self.signer = _identity(self.config)
        for algorithm in schemes:
            if algorithm in offered:
                return algorithm
        raise TlsAlert(HANDSHAKE_FAILURE, "no signature algorithm in common with the client")

    # ------------------------------------------------------------ ClientHello

    def _client_hello(self, hello: ClientHello, raw: bytes) -> None:
        ext = hello.ext_map
        # the extension bodies parsed in C with the message (each well formed), else
        # parsed here as they are needed (the same values, or an alert in the same order)
        offers = hello.offers
        self.require_empty(_INITIAL)
        if hello.session_id:  # RFC 9001 §8.4: a QUIC connection error
            raise TlsAlert(ILLEGAL_PARAMETER, "non-empty legacy_session_id in a QUIC "
                           "ClientHello", transport_error=QUIC_PROTOCOL_VIOLATION)
        if EXT_PRE_SHARED_KEY in ext:
            if EXT_PSK_KEY_EXCHANGE_MODES not in ext:  # RFC 8446 §4.2.9, §9.2
                raise TlsAlert(MISSING_EXTENSION,
                               "pre_shared_key without psk_key_exchange_modes")
            if hello.extensions[-1][0] != EXT_PRE_SHARED_KEY:  # RFC 8446 §4.2.11
                raise TlsAlert(ILLEGAL_PARAMETER, "pre_shared_key is not the last extension")
        if EXT_SUPPORTED_VERSIONS not in ext or TLS13 not in (
            offers[OFFER_VERSIONS] if offers is not None
            else parse_supported_versions_client(ext[EXT_SUPPORTED_VERSIONS])
        ):
            raise TlsAlert(PROTOCOL_VERSION, "client does not offer TLS 1.3")
        if EXT_QUIC_TRANSPORT_PARAMETERS not in ext:
            raise TlsAlert(MISSING_EXTENSION, "client sent no quic_transport_parameters")
        for required in (EXT_SUPPORTED_GROUPS, EXT_KEY_SHARE):
            if required not in ext:
                raise TlsAlert(MISSING_EXTENSION, f"ClientHello lacks extension {required}")
        suite = self._negotiate_suite(hello)
        alpn = self._negotiate_alpn(ext, offers)
        sig_alg = self._negotiate_signature(ext, offers)
        if offers is not None:
            client_groups = offers[OFFER_GROUPS]
            shares = offers[OFFER_SHARES]
        else:
            client_groups = parse_u16_list(ext[EXT_SUPPORTED_GROUPS])
            shares = parse_key_share_client(ext[EXT_KEY_SHARE])
        share_map: dict[int, bytes] = {}
        for group, key in shares:
            if group in share_map or group not in client_groups:
                raise TlsAlert(ILLEGAL_PARAMETER, f"bad key share entry for group {group:#06x}")
            share_map[group] = key
        if offers is not None:
            server_name = offers[OFFER_SNI]
        else:
            server_name = (parse_server_name(ext[EXT_SERVER_NAME]) if EXT_SERVER_NAME in ext
                           else None)

        if self.state == WAIT_CH2:
            assert self.suite is not None
            if suite != self.suite:
                raise TlsAlert(ILLEGAL_PARAMETER, "ClientHello2 changes the cipher suite")
            if self.hrr_group not in share_map or len(share_map) != 1:
                raise TlsAlert(ILLEGAL_PARAMETER, "ClientHello2 lacks the requested key share")
            group = self.hrr_group
        else:
            for group in self.group_ids:  # our first group the client sent a share of
                if group in share_map:
                    break
            else:
                retry = next((g for g in self.group_ids if g in client_groups), None)
                if retry is None:
                    raise TlsAlert(HANDSHAKE_FAILURE, "no key exchange group in common")
                self._send_retry_request(hello, suite, retry, raw)
                return

        self.client_random = hello.random
        self.server_name = server_name
        self.alpn = alpn
        self.peer_tp = ext[EXT_QUIC_TRANSPORT_PARAMETERS]
        if self.params_hook is not None:
            self.transport_parameters = self.params_hook(self.peer_tp)
        psk = self._choose_psk(hello, raw)
        if psk is not None:
            assert self.ticket is not None
            suite = CipherSuite(self.ticket.suite) if self.state != WAIT_CH2 else suite
        self.suite = suite
        self.transcript += raw
        early_secret = b""
        if self.early_status is not None:
            self.early_status = psk is not None and self._accept_early_data(hello)
            if self.early_status:
                assert psk is not None
                early_secret = KeySchedule(suite, psk).client_early_traffic(self.thash())

        our_share, shared = server_share(group, share_map[group])
        if early_secret:
            self.add_secret(_ZERO_RTT, False, early_secret)
            self.keylog("CLIENT_EARLY_TRAFFIC_SECRET", early_secret)
        # (the legacy_session_id is empty: checked above)
        # one draw for the ServerHello random and, when a ticket will follow, its age_add
        # and sealing nonce (16 bytes kept for _send_ticket): from os.urandom read in
        # batches, each value handed out once
        entropy = random_part(48 if self.client_takes_tickets else 32)
        self.ticket_entropy = entropy[32:]
        sh_bytes = server_hello_bytes(entropy[:32], int(suite), group, our_share,
                                      psk is not None)
        self.transcript += sh_bytes
        self.send(_INITIAL, sh_bytes)
        self.ks = KeySchedule(suite, psk)
        self._send_server_flight(sig_alg, shared)

    # ------------------------------------------------------------ resumption

    def _choose_psk(self, hello: ClientHello, raw: bytes) -> bytes | None:
        """The resumption PSK of the client's first identity when it is a live ticket of
        ours for this server name and protocol, with a binder that verifies (a binder
        that does not is fatal: RFC 8446 §4.2.11). None: a full handshake."""
        ext = hello.ext_map
        sealer = self.config.ticket_sealer
        offers = hello.offers
        self.client_takes_tickets = EXT_PSK_KEY_EXCHANGE_MODES in ext and PSK_DHE_KE in (
            offers[OFFER_PSK_MODES] if offers is not None
            else parse_psk_modes(ext[EXT_PSK_KEY_EXCHANGE_MODES]))
        if EXT_EARLY_DATA in ext:
            parse_empty(ext[EXT_EARLY_DATA])
            if self.state == WAIT_CH:
                self.early_status = False  # offered; accepted below if all agrees
        if (EXT_PRE_SHARED_KEY not in ext or sealer is None
                or self.config.client_certificates != "none"):
            return None
        if not self.client_takes_tickets:
            return None
        offered = parse_offered_psks(ext[EXT_PRE_SHARED_KEY])
        identity, obfuscated_age = offered.identities[0]
        contents = sealer.open(identity, self.wall_time)
        if contents is None or contents.server_name != (self.server_name or ""):
            return None
        suite = CipherSuite(contents.suite) if contents.suite in [
            int(s) for s in CipherSuite] else None
        if suite is None or int(suite) not in hello.cipher_suites or (
            suite not in self.config.cipher_suites
        ):
            return None
        if self.state == WAIT_CH2 and (
            self.suite is None or suite_hash(self.suite).name != suite_hash(suite).name
        ):
            return None
        ks = KeySchedule(suite, contents.psk)
        truncated = bytes(self.transcript) + raw[: len(raw) - offered.binders_len]
        expected = ks.binder(transcript_hash(suite, truncated))
        if not hmac.compare_digest(expected, offered.binders[0]):
            raise TlsAlert(DECRYPT_ERROR, "PSK binder does not verify")
        self.ticket = contents
        self.client_ticket_age = ((obfuscated_age - contents.age_add) & 0xFFFFFFFF) / 1000
        self.resumed = True
        return contents.psk

    def _accept_early_data(self, hello: ClientHello) -> bool:
        """0-RTT only on a first ClientHello (RFC 8446 §4.2.10), with the ticket's
        protocol, a ticket that allows it, a fresh age (RFC 8446 §8.3) and the
        transport's and application's consent (parameters, anti-replay, policy)."""
        ticket = self.ticket
        cfg = self.config
        if ticket is None or self.state != WAIT_CH or not cfg.early_data:
            return False
        if ticket.max_early_data != QUIC_MAX_EARLY_DATA or ticket.alpn != self.alpn:
            return False
        server_age = self.wall_time - ticket.issued_at
        if abs(server_age - self.client_ticket_age) > cfg.ticket_age_window:
            return False
        return self.early_data_hook is None or self.early_data_hook(ticket)

    def _send_retry_request(
        self, hello: ClientHello, suite: CipherSuite, group: int, raw: bytes
    ) -> None:
        self.suite = suite
        self.hrr_group = group
        hrr = ServerHello(
            random=HRR_RANDOM,
            session_id=hello.session_id,
            cipher_suite=int(suite),
            extensions=[
                (EXT_SUPPORTED_VERSIONS, _TLS13),
                (EXT_KEY_SHARE, group.to_bytes(2, "big")),
            ],
        )
        hrr_bytes = encode_server_hello(hrr)
        self.transcript = bytearray(message_hash(suite, raw) + hrr_bytes)
        self.send(_INITIAL, hrr_bytes)
        self.state = WAIT_CH2

    def _send_server_flight(self, sig_alg: int, shared: bytes) -> None:
        """EncryptedExtensions, [CertificateRequest], [Certificate, CertificateVerify],
        Finished, after the ServerHello: the key schedule from the (EC)DHE ``shared``
        secret to the Finished runs in one step (``KeySchedule.server_flight``: one C
        call, the transcript hashed once, the CertificateVerify signed from inside it),
        which also gives the client Finished to expect and, when a ticket will be sent,
        its PSK."""
        cfg = self.config
        ks = self.ks
        assert ks is not None and self.alpn is not None and cfg.private_key is not None
        transcript = self.transcript
        sh_len = len(transcript)
        ask = cfg.client_certificates != "none" and not self.resumed
        alpn = _SELECTED_ALPN.get(self.alpn)
        if alpn is None:
            body = ext_alpn([self.alpn])
            alpn = _EXT_ENTRY.pack(EXT_ALPN, len(body)) + body
            if len(_SELECTED_ALPN) < 64:
                _SELECTED_ALPN[self.alpn] = alpn
        transcript += encrypted_extensions_bytes(alpn, self.transport_parameters,
                                                 bool(self.early_status))
        if ask:
            transcript += _CERTIFICATE_REQUEST
        if not self.resumed:
            transcript += self.certificate_message
        # RFC 8446 §4.2.9: a ticket only to a client that takes psk_dhe_ke, never with
        # client certificates
        with_ticket = (cfg.ticket_sealer is not None and cfg.client_certificates == "none"
                       and self.client_takes_tickets)
        sign: Callable[[bytes], bytes] | None = None
        if not self.resumed:
            signer = self.signer

            def certificate_verify(signed_hash: bytes) -> bytes:
                signature = signer(sig_alg, _SERVER_VERIFY_PREFIX + signed_hash)
                return encode_certificate_verify(sig_alg, signature)

            sign = certificate_verify
        c_hs, s_hs, cv, server_fin, c_ap, s_ap, client_fin, ticket_psk = ks.server_flight(
            shared, transcript, sh_len, sign, with_ticket)
        self.publish_handshake_secrets(c_hs, s_hs)
        transcript += cv
        transcript += encode_finished(server_fin)
        self.send(_HANDSHAKE, bytes(transcript[sh_len:]))
        self.publish_application_secrets(c_ap, s_ap)
        if not ask:  # (a client Certificate/CertificateVerify would change both)
            self.client_finished = client_fin
            self.ticket_psk = ticket_psk
        self.state = WAIT_CLIENT_CERT if ask else WAIT_FINISHED

    def _client_certificate(self, body: bytes, raw: bytes) -> None:
        context, ders = decode_peer_certificate(body, "client")
        if context:
            raise TlsAlert(ILLEGAL_PARAMETER, "client Certificate with a wrong request context")
        self.transcript += raw
        if not ders:
            if self.config.client_certificates == "require":
                raise TlsAlert(
                    CERTIFICATE_REQUIRED,
                    "the client sent no certificate and this server requires one",
                )
            self.state = WAIT_FINISHED
            return
        try:
            certs = load_der_chain(ders)
        except ValueError as exc:
            raise TlsAlert(BAD_CERTIFICATE, f"cannot parse client certificate: {exc}") from exc
        if self.config.verify_peer:
            verify_client_chain(certs, self.config.cafile, self.config.cadata)
        self.peer_certs = certs
        self.peer_cert_ders = ders
        self.state = WAIT_CLIENT_CV

    def _client_certificate_verify(self, body: bytes, raw: bytes) -> None:
        algorithm, signature = decode_certificate_verify(body)
        content = certificate_verify_content(CLIENT_CONTEXT, self.thash())
        verify_signature(self.peer_certs[0], algorithm, signature, content)
        self.transcript += raw
        self.state = WAIT_FINISHED

    def _finished(self, body: bytes, raw: bytes) -> None:
        ks = self.ks
        assert ks is not None
        # known since our Finished unless a client certificate came in between
        expected = self.client_finished or ks.finished_verify_data(self.client_hs_secret,
                                                                   self.thash())
        if not hmac.compare_digest(expected, body):
            raise TlsAlert(DECRYPT_ERROR, "client Finished does not verify")
        self.require_empty(_HANDSHAKE)
        self.state = DONE
        self.complete = True
        self.transcript += raw
        if self.ticket_psk:  # (set when our Finished was sent: RFC 8446 §4.2.9 allows one)
            self._send_ticket(self.ticket_psk)

    def _send_ticket(self, psk: bytes) -> None:
        """One NewSessionTicket in 1-RTT (RFC 8446 §4.6.1) with the nonce 0x00 (``psk``
        is its PSK), sealed with the ticket key; 0-RTT allowed with max_early_data_size
        0xffffffff (RFC 9001 §4.6.1)."""
        cfg = self.config
        assert self.ks is not None and self.suite is not None and cfg.ticket_sealer is not None
        entropy = self.ticket_entropy
        if len(entropy) != 16:
            entropy = os.urandom(16)
        age_add = int.from_bytes(entropy[:4], "big")
        max_early = QUIC_MAX_EARLY_DATA if cfg.early_data else 0
        self.send(_ONE_RTT, ticket_message(  # (TicketContents.encode of these fields)
            cfg.ticket_sealer, entropy[4:], self.wall_time, cfg.ticket_lifetime, age_add,
            max_early, int(self.suite), psk, self.alpn or "", self.server_name or "",
            cfg.ticket_parameters or compact_parameters(self.transport_parameters)))
