"""State and message plumbing shared by the client and server handshakes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509

from quicflow.crypto.epoch import Epoch
from quicflow.crypto.suites import CipherSuite

from .alerts import DECODE_ERROR, QUIC_PROTOCOL_VIOLATION, UNEXPECTED_MESSAGE, TlsAlert
from .config import TlsConfig
from .keyschedule import HASHLIB, KeySchedule, transcript_hash

# largest handshake message accepted (a long certificate chain still fits)
MAX_MESSAGE_LEN = 1 << 18

Secret = tuple[Epoch, bool, CipherSuite, bytes]

#: the epochs as globals (an enum class attribute costs about four times more)
_HANDSHAKE, _ONE_RTT = Epoch.HANDSHAKE, Epoch.ONE_RTT


def _without_traceback(alert: TlsAlert) -> TlsAlert:
    """``alert`` as the handshake keeps it to raise again: a copy without the traceback,
    whose frames hold the handshake, its connection and the datagrams being read (a
    cycle that kept a failed handshake's whole connection until a full collection)."""
    return TlsAlert(alert.description, alert.message, alert.transport_error)


class HandshakeCore:
    """Buffers, transcript, outputs and results of one handshake (either side)."""

    # immutable starting values: class attributes, set on an instance when they change
    # (fewer stores per handshake)
    # thash's running hash: of which transcript object and suite, and how far
    _running: Any = None
    _running_of: bytearray | None = None
    _running_suite: CipherSuite | None = None
    _running_len = 0
    suite: CipherSuite | None = None
    ks: KeySchedule | None = None
    client_random = b""
    client_hs_secret = b""
    server_hs_secret = b""
    complete = False
    alpn: str | None = None
    peer_tp: bytes | None = None
    failed: TlsAlert | None = None
    #: the peer's chain as received (set when its Certificate message arrives; a server
    #: without client authentication never gets one) and the same chain as DER
    peer_certs: Sequence[x509.Certificate] = ()
    peer_cert_ders: Sequence[bytes] = ()

    def __init__(self, config: TlsConfig, transport_parameters: bytes,
                 checked: bool = False) -> None:
        if not checked:  # (checked: validate() passed and nothing changed the config since)
            config.validate()
        self.config = config
        self.transport_parameters = transport_parameters
        #: partial messages per epoch (an epoch's buffer is made when data first comes)
        self.buffers: dict[Epoch, bytearray] = {}
        self.output: list[tuple[Epoch, bytes]] = []
        self.secrets: list[Secret] = []
        self.transcript = bytearray()

    # ------------------------------------------------------------ to override

    def expected_epoch(self) -> Epoch | None:
        """The epoch the next message must arrive in (None: nothing expected)."""
        raise NotImplementedError

    def handle(self, epoch: Epoch, msg_type: int, body: bytes, raw: bytes) -> None:
        raise NotImplementedError

    def handle_post_handshake(self, epoch: Epoch, msg_type: int, body: bytes) -> None:
        raise TlsAlert(UNEXPECTED_MESSAGE, f"unexpected message {msg_type} after handshake")

    # ------------------------------------------------------------ plumbing

    def receive(self, epoch: Epoch, data: bytes) -> None:
        failed = self.failed
        if failed is not None:  # the same alert again, as a fresh exception
            raise _without_traceback(failed)
        try:
            self._receive(epoch, data)
        except TlsAlert as alert:
            self.failed = _without_traceback(alert)
            raise
        except Exception as exc:  # any parsing slip is a decode error, never a crash
            decode_alert = TlsAlert(DECODE_ERROR, f"malformed handshake data: {exc!r}")
            self.failed = _without_traceback(decode_alert)
            raise decode_alert from exc

    def _receive(self, epoch: Epoch, data: bytes) -> None:
        if type(epoch) is not Epoch:
            epoch = Epoch(epoch)
        if epoch is not Epoch.ONE_RTT:
            # new data (QUIC hands over only bytes past what came before) at a level
            # below the one the next message must come in: RFC 9001 §4.1.3 makes it a
            # connection error of type PROTOCOL_VIOLATION, even a partial message
            expected = Epoch.ONE_RTT if self.complete else self.expected_epoch()
            if expected is not None and epoch < expected:
                raise TlsAlert(UNEXPECTED_MESSAGE,
                               f"CRYPTO data past the end of epoch {epoch.name} after the "
                               f"keys of epoch {expected.name}",
                               transport_error=QUIC_PROTOCOL_VIOLATION)
        buf = self.buffers.get(epoch)
        if not buf:
            # nothing held and exactly one whole message (a handshake's usual CRYPTO
            # frame: the ClientHello, the Finished): handled without buffering a copy
            n = len(data)
            if n >= 4 and n - 4 == ((data[1] << 16) | (data[2] << 8) | data[3]) <= (
                MAX_MESSAGE_LEN
            ):
                self._dispatch(epoch, bytes(data))
                return
            if buf is None:
                buf = self.buffers[epoch] = bytearray(data)
            else:
                buf += data
        else:
            buf += data
        while len(buf) >= 4:
            length = int.from_bytes(buf[1:4], "big")
            if length > MAX_MESSAGE_LEN:
                raise TlsAlert(DECODE_ERROR, f"handshake message of {length} bytes is too long")
            if len(buf) < 4 + length:
                break
            raw = bytes(buf[: 4 + length])
            del buf[: 4 + length]
            self._dispatch(epoch, raw)

    def _dispatch(self, epoch: Epoch, raw: bytes) -> None:
        """One whole handshake message ``raw`` (with its 4-byte header) of ``epoch``."""
        msg_type = raw[0]
        if self.complete:
            self.handle_post_handshake(epoch, msg_type, raw[4:])
            return
        expected = self.expected_epoch()
        if expected != epoch:
            raise TlsAlert(
                UNEXPECTED_MESSAGE,
                f"handshake message {msg_type} in epoch {epoch.name}, "
                f"expected {expected.name if expected is not None else 'none'}",
            )
        self.handle(epoch, msg_type, raw[4:], raw)

    def require_empty(self, epoch: Epoch) -> None:
        """Messages must not span a key change (RFC 8446 §5.1)."""
        if self.buffers.get(epoch):  # (RFC 9001 §4.1.3: a QUIC PROTOCOL_VIOLATION)
            raise TlsAlert(UNEXPECTED_MESSAGE, f"data left in epoch {epoch.name} at a key change",
                           transport_error=QUIC_PROTOCOL_VIOLATION)

    def thash(self) -> bytes:
        """The hash of the transcript so far. A running hash: only the bytes appended
        since the last call are hashed (the transcript only grows; a new transcript
        object, e.g. after a HelloRetryRequest, or another suite starts it over)."""
        suite = self.suite
        assert suite is not None
        transcript = self.transcript
        running = self._running
        if running is None or self._running_of is not transcript or \
                self._running_suite != suite or self._running_len > len(transcript):
            new = HASHLIB.get(suite)
            if new is None:
                return transcript_hash(suite, transcript)
            running = self._running = new()
            self._running_of = transcript
            self._running_suite = suite
            self._running_len = 0
        n = len(transcript)
        if self._running_len < n:
            running.update(transcript[self._running_len:])
            self._running_len = n
        digest: bytes = running.copy().digest()
        return digest

    def send(self, epoch: Epoch, data: bytes) -> None:
        self.output.append((epoch, data))

    def add_secret(self, epoch: Epoch, is_send: bool, secret: bytes) -> None:
        assert self.suite is not None
        self.secrets.append((epoch, is_send, self.suite, secret))

    def keylog(self, label: str, secret: bytes) -> None:
        path = self.config.keylog_file
        if not path:
            return
        try:
            with open(path, "a", encoding="ascii") as f:
                f.write(f"{label} {self.client_random.hex()} {secret.hex()}\n")
        except OSError:
            pass  # key logging is a debugging aid and must never break a handshake

    def install_handshake_secrets(self) -> None:
        """After ServerHello: derive and publish the handshake traffic secrets."""
        assert self.ks is not None
        self.publish_handshake_secrets(*self.ks.handshake_traffic(self.thash()))

    def publish_handshake_secrets(self, c_hs: bytes, s_hs: bytes) -> None:
        """Keep and publish the (client, server) handshake traffic secrets."""
        self.client_hs_secret, self.server_hs_secret = c_hs, s_hs
        is_client = self.config.is_client
        suite = self.suite
        assert suite is not None
        self.secrets += ((_HANDSHAKE, is_client, suite, c_hs),
                         (_HANDSHAKE, not is_client, suite, s_hs))
        if self.config.keylog_file:
            self.keylog("CLIENT_HANDSHAKE_TRAFFIC_SECRET", c_hs)
            self.keylog("SERVER_HANDSHAKE_TRAFFIC_SECRET", s_hs)

    def install_application_secrets(self, thash: bytes) -> None:
        """From the hash of CH..server Finished: publish the 1-RTT traffic secrets."""
        assert self.ks is not None
        self.publish_application_secrets(*self.ks.application_traffic(thash))

    def publish_application_secrets(self, c_ap: bytes, s_ap: bytes) -> None:
        """Publish the (client, server) application traffic secrets."""
        is_client = self.config.is_client
        suite = self.suite
        assert suite is not None
        self.secrets += ((_ONE_RTT, is_client, suite, c_ap),
                         (_ONE_RTT, not is_client, suite, s_ap))
        if self.config.keylog_file:
            self.keylog("CLIENT_TRAFFIC_SECRET_0", c_ap)
            self.keylog("SERVER_TRAFFIC_SECRET_0", s_ap)
