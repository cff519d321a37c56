"""Exceptions of the asyncio API."""

from __future__ import annotations

from ..transport.errors import CRYPTO_ERROR, error_name


class QuicflowError(Exception):
    """Base class of quicflow's asyncio errors."""


class ConnectionClosedError(QuicflowError, ConnectionError):
    """The connection is closed; says by whom, with which code and reason."""

    def __init__(self, error_code: int, reason: str, by_peer: bool,
                 frame_type: int | None = None, application: bool = False) -> None:
        self.error_code = error_code
        self.reason = reason
        self.by_peer = by_peer
        self.frame_type = frame_type
        self.application = application
        super().__init__(self.describe())

    def describe(self) -> str:
        if self.reason.startswith("connection refused:") and not self.by_peer:
            return self.reason  # "connection refused: nothing listens on HOST port PORT"
        who = "peer closed the connection" if self.by_peer else "connection closed"
        if self.reason == "idle timeout" and not self.by_peer:
            return "timed out: no answer from the peer (idle timeout)"
        code = (
            f"application code {self.error_code}"
            if self.application
            else error_name(self.error_code)
        )
        if CRYPTO_ERROR <= self.error_code < CRYPTO_ERROR + 0x100 and not self.application:
            alert = self.error_code - CRYPTO_ERROR
            what = "certificate refused" if alert in (
                42, 43, 44, 45, 46, 48, 49) else "TLS handshake failed"
            if alert == 116:
                what = "client certificate required"
            side = "by the peer" if self.by_peer else "locally"
            return f"{what} {side}: {code}" + (f", reason: {self.reason}" if self.reason else "")
        return f"{who} with code {code}" + (f", reason: {self.reason!r}" if self.reason else "")


class StreamResetError(QuicflowError, ConnectionError):
    """The stream was reset (by the peer's RESET_STREAM, or locally)."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        super().__init__(f"stream {stream_id} was reset with code {error_code}")
