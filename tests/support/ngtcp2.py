"""ngtcp2's HTTP/3 example programs (Debian ``ngtcp2-server``/``ngtcp2-client``) as peers.

``gtlsserver`` serves the files of a directory (``-d``); ``gtlsclient`` fetches URLs
(``--download DIR``) or uploads a file as the request body (``-d FILE -m POST``). Both
log every frame they send and receive on stdout unless ``-q``; the helpers here keep
that log (without HTTP body dumps) to read what ngtcp2 saw: the CONNECTION_CLOSE frame's
code, and for uploads the ordered STREAM data of a request stream (``Ordered STREAM
data stream_id=0x..`` followed by a hex dump), from which the request body is rebuilt
by parsing the HTTP/3 frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from quicflow.h3.frames import FrameParser

SERVER = "gtlsserver"
CLIENT = "gtlsclient"
FRAME_DATA = 0x0
FRAME_HEADERS = 0x1
# gnutls priority strings for one TLS 1.3 suite each
CIPHERS = {
    "AES_128_GCM_SHA256": "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM",
    "AES_256_GCM_SHA384": "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM",
    "CHACHA20_POLY1305_SHA256": "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305",
}
# ngtcp2's tools write their log unbuffered: ~40 s for the hex dump of a 10 MB upload
# line by line, 2 s through a 8 MiB buffer (written out when the tool exits)
BUFFERED = ["stdbuf", "-o8M", "-e8M"]
_CLOSE = re.compile(
    r"frm (rx|tx) \d+ \S+ CONNECTION_CLOSE\(0x1[cd]\) error_code=\S*\(0x([0-9a-f]+)\)")
_ORDERED = re.compile(r"^Ordered STREAM data stream_id=0x([0-9a-f]+)$")
_STREAM_RESETS = re.compile(
    r"frm (rx|tx) \d+ \S+ (RESET_STREAM|STOP_SENDING)\(0x0[45]\) id=0x([0-9a-f]+) "
    r"app_error_code=\S*\(0x([0-9a-f]+)\)")
FRAME_GOAWAY = 0x7
_HEX_LINE = re.compile(r"^([0-9a-f]{8})  ((?:[0-9a-f]{2} {1,2}){1,16})")


def available() -> bool:
    return shutil.which(SERVER) is not None and shutil.which(CLIENT) is not None


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def udp_bound(port: int) -> bool:
    """Whether something listens on UDP ``port`` (read from /proc/net/udp)."""
    try:
        with open("/proc/net/udp") as f:
            rows = f.readlines()[1:]
    except OSError:
        return False
    return any(int(row.split()[1].rsplit(":", 1)[1], 16) == port for row in rows if row.strip())


def closes(log: str, direction: str) -> list[int]:
    """The codes of the CONNECTION_CLOSE frames ngtcp2 received (``rx``) or sent (``tx``)."""
    return [int(code, 16) for d, code in _CLOSE.findall(log) if d == direction]


def simulated_losses(log: str) -> tuple[int, int]:
    """(outgoing, incoming) packets ngtcp2 dropped on purpose (``--tx-loss``/``--rx-loss``;
    an outgoing GSO batch counts once)."""
    return (log.count("** Simulated outgoing packet loss **"),
            log.count("** Simulated incoming packet loss **"))


def stream_signals(log: str, direction: str) -> list[tuple[str, int, int]]:
    """(frame, stream id, application error code) of every RESET_STREAM and STOP_SENDING
    ngtcp2 received (``rx``) or sent (``tx``)."""
    return [(kind, int(sid, 16), int(code, 16))
            for d, kind, sid, code in _STREAM_RESETS.findall(log) if d == direction]


def stream_data(log: str, stream_id: int) -> bytes:
    """The ordered STREAM data of ``stream_id`` that ngtcp2 handed to HTTP/3 (from the
    hex dumps of its log)."""
    out = bytearray()
    lines = log.splitlines()
    i = 0
    while i < len(lines):
        m = _ORDERED.match(lines[i])
        i += 1
        if m is None or int(m.group(1), 16) != stream_id:
            continue
        chunk = bytearray()
        previous = b""
        while i < len(lines):
            line = lines[i]
            if line == "*":  # hexdump's "same line repeated" marker
                i += 1
                nxt = _HEX_LINE.match(lines[i]) if i < len(lines) else None
                end = int(nxt.group(1), 16) if nxt else len(chunk) + len(previous)
                while len(chunk) < end:
                    chunk += previous
                continue
            h = _HEX_LINE.match(line)
            if h is None:
                if re.fullmatch(r"[0-9a-f]{8}", line):  # the closing offset line
                    i += 1
                break
            previous = bytes.fromhex(h.group(2).replace(" ", ""))
            chunk += previous
            i += 1
        out += chunk
    return bytes(out)


def request_body(log: str, stream_id: int) -> bytes:
    """The body of the HTTP/3 request that arrived on ``stream_id``: its DATA frames."""
    parser = FrameParser()
    parser.feed(stream_data(log, stream_id))
    body = bytearray()
    while (frame := parser.next()) is not None:
        ftype, payload = frame
        if ftype == FRAME_DATA:
            body += payload
    return bytes(body)


def control_frames(log: str, stream_id: int) -> list[tuple[int, bytes]]:
    """The HTTP/3 frames ngtcp2 received on the peer's control stream ``stream_id`` (a
    unidirectional stream: its type byte, 0x00, comes first)."""
    data = stream_data(log, stream_id)
    assert data[:1] == b"\x00", f"stream {stream_id} is not a control stream: {data[:8]!r}"
    parser = FrameParser()
    parser.feed(data[1:])
    frames = []
    while (frame := parser.next()) is not None:
        frames.append(frame)
    return frames


def _tail(log: str, lines: int = 15) -> str:
    return "\n".join(log.rstrip().splitlines()[-lines:])


def check_downloads(into: Path, expected: dict[str, bytes], log: str) -> None:
    """Fail with a message saying what went wrong unless every file ``gtlsclient
    --download=into`` was to save is there with the expected bytes. gtlsclient exits 0
    even when a transfer stalled (its idle timeout just ends the run) or when it could
    not write a file, so its exit status proves nothing: sizes and SHA-256 do."""
    problems = []
    for name, want in expected.items():
        path = into / name
        if not path.exists():
            problems.append(f"{name}: never saved (0 of {len(want)} bytes)")
            continue
        got = path.read_bytes()
        if len(got) != len(want):
            problems.append(f"{name}: incomplete, {len(got)} of {len(want)} bytes "
                            "(the transfer stalled or was cut)")  # fmt: skip
        elif hashlib.sha256(got).digest() != hashlib.sha256(want).digest():
            problems.append(f"{name}: {len(got)} bytes as expected but the content differs")
    if problems:
        hints = [line for line in log.splitlines()
                 if "ERR_IDLE_CLOSE" in line or "Timeout" in line or line.startswith("open:")]
        raise AssertionError(
            "gtlsclient did not complete its transfer (it exits 0 even so):\n  "
            + "\n  ".join(problems)
            + "".join(f"\nits log says: {hint}" for hint in hints[:3])
            + f"\nlast lines of its log:\n{_tail(log)}")


class GtlsServer:
    """``async with GtlsServer(htdocs, cert, key, port, *options) as server``: gtlsserver on
    127.0.0.1:``port`` serving ``htdocs``; ``server.log()`` after exit has its frame log."""

    def __init__(self, htdocs: Path, cert: str, key: str, port: int, *options: str,
                 log_path: Path) -> None:  # fmt: skip
        self.command = [*BUFFERED, SERVER, "--no-http-dump", "-d", str(htdocs), *options,
                        "127.0.0.1", str(port), key, cert]  # fmt: skip
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> GtlsServer:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        for _ in range(500):
            if udp_bound(self.port):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"gtlsserver exited: {self.log()[-2000:]}")
            await asyncio.sleep(0.01)
        raise RuntimeError("gtlsserver did not bind its port within 5 s")

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:  # fmt: skip
        assert self.proc is not None
        await asyncio.sleep(0.1)  # let it log the CONNECTION_CLOSE it received
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # a clean exit writes out its log buffer
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def interrupt(self) -> None:
        """SIGINT: gtlsserver's only shutdown (it has no GOAWAY): it closes every
        connection at once and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)


async def gtlsclient(port: int, urls: list[str], *options: str, log_path: Path,
                     timeout: float = 30.0,
                     quic_dump: bool = False) -> tuple[int, str]:  # fmt: skip
    """Run gtlsclient against 127.0.0.1:``port`` until all its streams closed; returns
    (exit status, frame log). ``quic_dump`` keeps the hex dumps of the STREAM data it
    received in the log (see :func:`stream_data`)."""
    command = [*BUFFERED, CLIENT, "--no-http-dump", *([] if quic_dump else ["--no-quic-dump"]),
               "--exit-on-all-streams-close", "--timeout=10s",
               *options, "127.0.0.1", str(port), *urls]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "SSLKEYLOGFILE": ""})
        try:
            status = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    return status, log_path.read_text(errors="replace")


__all__ = ["CIPHERS", "GtlsServer", "available", "check_downloads", "closes", "control_frames",
           "gtlsclient", "request_body", "simulated_losses", "stream_data", "stream_signals",
           "udp_bound"]
