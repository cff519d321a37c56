"""Same-host handoff: a unix socket over which a process gives its connections away.

The old process offers (:class:`HandoffListener`) a unix stream socket at a path, mode
0600; a successor connects (:func:`take_over`). Both sides check the other's uid with
SO_PEERCRED and refuse any other user. The exchange:

1. successor -> old: ``HELLO`` and a fresh 32-byte snapshot key (the snapshots are
   sealed with a key only the successor knows, so they are useless to anyone else, at
   rest or in transit);
2. old -> successor: a header (JSON: how many sockets, the caller's fields), the sockets
   themselves (SCM_RIGHTS, with the header), then each sealed snapshot as soon as it is
   captured, length-prefixed (so the successor restores while the old one captures),
   then an end mark and a trailer (JSON: e.g. the replay record); between snapshots,
   datagrams the old process read for connections it has handed over already
   (``Offer.datagrams``: forwarded, in the order read);
3. successor -> old: an acknowledgment (JSON), after which the old process exits.

The old process serves every connection until its own turn comes (so each pauses only
for its own capture and restore): it keeps reading the listening socket and forwards
what arrives for connections already handed over; a connection's own socket is read by
the old process until its capture and by the successor from its restore (meanwhile
datagrams wait in the kernel queue). After the end mark the old process reads nothing;
the successor reads the listening socket from then on. This module moves bytes and file
descriptors only; what the snapshots hold is the caller's business
(``quicflow.aio.handover``).
"""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..datapath.backends import RecvEntry
from ..datapath.handoff import decode_handoff, encode_handoff

HELLO = b"QFHANDOFF1\n"
MOVE_HELLO = b"QFMOVEREQ1\n"  # same length as HELLO
GROUP_HELLO = b"QFGROUPHO1\n"  # a worker group's successor (migration.group)
KEY_LEN = 32
#: SO_PEERCRED (Linux): the connected peer's (pid, uid, gid)
SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
MAX_FDS = 250  # per SCM_RIGHTS message (the kernel's SCM_MAX_FD is 253)
MAX_HEADER = 64 << 20
MAX_SNAPSHOT = 1 << 30
_LEN = struct.Struct("!I")
#: length bit of a frame of forwarded datagrams (snapshots stay below MAX_SNAPSHOT)
_DATAGRAMS = 0x80000000
MAX_DATAGRAMS_FRAME = 16 << 20


class HandoffError(Exception):
    """The handoff failed or was refused (wrong user, bad message, timeout)."""


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


def _check_peer(sock: socket.socket) -> None:
    uid = peer_uid(sock)
    if uid != os.getuid():
        raise HandoffError(f"handoff peer runs as uid {uid}, not {os.getuid()}: refused")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise HandoffError("handoff peer closed the connection early")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _recv_frame(sock: socket.socket, limit: int) -> bytes:
    (length,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if length > limit:
        raise HandoffError(f"handoff message of {length} bytes is over the limit")
    return _recv_exact(sock, length)


def _send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_LEN.pack(len(data)) + data)


_END = 0xFFFFFFFF  # length value that ends the snapshots; the trailer follows


class Offer:
    """The old process's side of one handoff, on an accepted channel: ``begin`` (header
    and sockets), ``snapshot`` for each sealed snapshot, ``finish`` (trailer, then the
    successor's acknowledgment). Blocking, with ``timeout`` per operation."""

    def __init__(self, channel: socket.socket, timeout: float = 60.0) -> None:
        self.channel = channel
        channel.settimeout(timeout)
        self.sent = 0
        #: how many snapshots the successor says it has restored (``progress``)
        self.restored = 0
        self._pending = b""  # bytes of the successor's messages read, not yet used

    def progress(self) -> int:
        """Read the successor's progress reports that have arrived (without waiting);
        returns how many snapshots it has restored so far."""
        while select.select([self.channel], [], [], 0)[0]:  # (the channel has a timeout)
            try:
                chunk = self.channel.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise HandoffError(f"the successor's channel failed: {exc}") from exc
            if not chunk:
                break
            self._pending += chunk
        while len(self._pending) >= _LEN.size:
            (value,) = _LEN.unpack_from(self._pending)
            if not value & _DATAGRAMS:
                break  # the final answer: ``finish`` reads it
            self.restored = value & ~_DATAGRAMS
            self._pending = self._pending[_LEN.size :]
        return self.restored

    def begin(self, header: dict[str, Any], sockets: list[socket.socket]) -> None:
        doc = dict(header)
        doc["sockets"] = len(sockets)
        raw = json.dumps(doc).encode()
        fds = [s.fileno() for s in sockets]
        try:
            # the header and the first fds travel together; the rest in further messages
            socket.send_fds(self.channel, [_LEN.pack(len(raw)) + raw], fds[:MAX_FDS])
            rest = fds[MAX_FDS:]
            while rest:
                socket.send_fds(self.channel, [b"F"], rest[:MAX_FDS])
                rest = rest[MAX_FDS:]
        except OSError as exc:
            self.close()
            raise HandoffError(f"handoff to the successor failed: {exc}") from exc

    def snapshot(self, blob: bytes) -> None:
        try:
            _send_frame(self.channel, blob)
        except OSError as exc:
            self.close()
            raise HandoffError(f"handoff to the successor failed: {exc}") from exc
        self.sent += 1

    def datagrams(self, entries: list[tuple[bytes, int, tuple[Any, ...], int]]) -> None:
        """Forward datagrams ``(data, segment_size, address, ecn)`` read for connections
        handed over already (the successor processes them as if it had read them)."""
        parts: list[bytes] = []
        for data, segment_size, addr, ecn in entries:
            message = encode_handoff(data, segment_size, (str(addr[0]), int(addr[1])), ecn)
            parts.append(_LEN.pack(len(message)))
            parts.append(message)
        raw = b"".join(parts)
        try:
            self.channel.sendall(_LEN.pack(_DATAGRAMS | len(raw)) + raw)
        except OSError as exc:
            self.close()
            raise HandoffError(f"handoff to the successor failed: {exc}") from exc

    def finish(self, trailer: dict[str, Any]) -> dict[str, Any]:
        """Send the end mark and ``trailer``; return the successor's acknowledgment."""
        try:
            self.channel.sendall(_LEN.pack(_END))
            _send_frame(self.channel, json.dumps(trailer).encode())
            while True:  # progress reports, then the answer
                while len(self._pending) < _LEN.size:
                    chunk = self.channel.recv(4096)
                    if not chunk:
                        raise HandoffError("handoff peer closed the connection early")
                    self._pending += chunk
                (value,) = _LEN.unpack_from(self._pending)
                self._pending = self._pending[_LEN.size :]
                if not value & _DATAGRAMS:
                    break
            if value > MAX_HEADER:
                raise HandoffError("handoff answer over the limit")
            answer = self._pending[:value]
            self._pending = b""
            if len(answer) < value:
                answer += _recv_exact(self.channel, value - len(answer))
        except OSError as exc:
            raise HandoffError(f"handoff to the successor failed: {exc}") from exc
        finally:
            self.close()
        result: dict[str, Any] = json.loads(answer)
        return result

    def close(self) -> None:
        self.channel.close()


@dataclass(slots=True, eq=False)
class Received:
    """What the successor got: the header and the sockets (owned by the caller now);
    ``snapshots()`` yields the sealed snapshots as they arrive, then ``trailer`` is set;
    ``acknowledge`` tells the old process the result and lets it go."""

    header: dict[str, Any]
    sockets: list[socket.socket]
    channel: socket.socket
    key: bytes
    trailer: dict[str, Any] | None = None
    acknowledged: bool = field(default=False)

    def snapshots(self) -> Iterator[bytes]:
        """The sealed snapshots (forwarded datagrams are skipped)."""
        for kind, payload in self.frames():
            if kind == "snapshot":
                assert isinstance(payload, bytes)
                yield payload

    def frames(self) -> Iterator[tuple[str, bytes | list[RecvEntry]]]:
        """``("snapshot", sealed)`` and ``("datagrams", [(data, segment_size, address,
        ecn), ...])`` in the order sent, until the end mark (then ``trailer`` is set)."""
        try:
            while True:
                (length,) = _LEN.unpack(_recv_exact(self.channel, _LEN.size))
                if length == _END:
                    self.trailer = json.loads(_recv_frame(self.channel, MAX_HEADER))
                    return
                if length & _DATAGRAMS:
                    length &= ~_DATAGRAMS
                    if length > MAX_DATAGRAMS_FRAME:
                        raise HandoffError(f"datagram frame of {length} bytes is over the limit")
                    yield "datagrams", _split_datagrams(_recv_exact(self.channel, length))
                    continue
                if length > MAX_SNAPSHOT:
                    raise HandoffError(f"snapshot of {length} bytes is over the limit")
                yield "snapshot", _recv_exact(self.channel, length)
        except (OSError, ValueError) as exc:
            raise HandoffError(f"receiving the snapshots failed: {exc}") from exc

    def report_progress(self, restored: int) -> None:
        """Tell the old process how many snapshots have been restored so far (it keeps
        only a few captured connections waiting for their restore)."""
        try:
            self.channel.sendall(_LEN.pack(_DATAGRAMS | restored))
        except OSError:
            pass  # the old process's error shows at the end

    def frame_parser(self) -> FrameParser:
        """An incremental parser of the rest of the channel (for reading it from an
        event loop instead of ``frames()``)."""
        return FrameParser(self)

    def acknowledge(self, result: dict[str, Any]) -> None:
        if self.acknowledged:
            return
        self.acknowledged = True
        try:
            _send_frame(self.channel, json.dumps(result).encode())
        finally:
            self.channel.close()


class FrameParser:
    """``Received.frames()`` without blocking: ``feed(bytes)`` returns the frames
    complete so far (``("snapshot", sealed)``, ``("datagrams", entries)``), then
    ``("end", trailer)`` once (also setting ``Received.trailer``)."""

    def __init__(self, received: Received) -> None:
        self.received = received
        self._buffer = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        buf = self._buffer
        buf += data
        out: list[tuple[str, Any]] = []
        pos = 0
        while not self.ended and len(buf) - pos >= _LEN.size:
            (length,) = _LEN.unpack_from(buf, pos)
            start = pos + _LEN.size
            if length == _END:
                if len(buf) - start < _LEN.size:
                    break
                (size,) = _LEN.unpack_from(buf, start)
                if size > MAX_HEADER:
                    raise HandoffError("handoff trailer over the limit")
                end = start + _LEN.size + size
                if len(buf) < end:
                    break
                trailer = json.loads(bytes(buf[start + _LEN.size : end]))
                self.received.trailer = trailer
                self.ended = True
                out.append(("end", trailer))
                pos = end
                break
            kind = "snapshot"
            if length & _DATAGRAMS:
                length &= ~_DATAGRAMS
                kind = "datagrams"
                if length > MAX_DATAGRAMS_FRAME:
                    raise HandoffError(f"datagram frame of {length} bytes is over the limit")
            elif length > MAX_SNAPSHOT:
                raise HandoffError(f"snapshot of {length} bytes is over the limit")
            end = start + length
            if len(buf) < end:
                break
            payload = bytes(buf[start:end])
            out.append((kind, payload if kind == "snapshot" else _split_datagrams(payload)))
            pos = end
        del buf[:pos]
        return out


class HandoffListener:
    """The old process's side: a unix socket at ``path`` (mode 0600) for one successor
    at a time. Non-blocking: poll :meth:`accept` when ``fileno()`` is readable."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.refused = 0  # connection attempts by other users
        _remove_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot offer a handoff there ({e.strerror})",
                          path) from None
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(4)
        sock.setblocking(False)
        self._sock = sock
        self._inode = os.stat(path).st_ino

    def fileno(self) -> int:
        return self._sock.fileno()

    def accept(
        self, timeout: float = 10.0
    ) -> tuple[socket.socket, str, bytes | dict[str, Any]] | None:
        """Someone of our uid who connected and said hello: ``(channel, "takeover",
        key)`` for a successor, ``(channel, "move", request)`` for a move command,
        ``(channel, "group", request)`` for a worker group's successor; None when no one
        is waiting or the one who came was refused (other uid, bad hello)."""
        try:
            channel, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        try:
            channel.settimeout(timeout)
            _check_peer(channel)
            hello = _recv_exact(channel, len(HELLO))
            if hello == HELLO:
                return channel, "takeover", _recv_exact(channel, KEY_LEN)
            if hello == MOVE_HELLO or hello == GROUP_HELLO:
                request = json.loads(_recv_frame(channel, MAX_HEADER))
                if type(request) is not dict:
                    raise HandoffError("bad move request")
                return channel, "move" if hello == MOVE_HELLO else "group", request
            raise HandoffError("not a quicflow handoff request")
        except (HandoffError, OSError, ValueError):
            self.refused += 1
            channel.close()
            return None

    def close(self, *, unlink: bool = True) -> None:
        """Stop offering; with ``unlink``, remove the path if it is still ours. After a
        successful handoff pass ``unlink=False``: the successor binds its own socket at
        the same path at about the same time, and a check-then-unlink here could remove
        the successor's socket (it did, now and then, in tests)."""
        self._sock.close()
        if not unlink:
            return
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass


def take_over(path: str, timeout: float = 60.0) -> Received:
    """Connect to the process offering a handoff at ``path`` and receive its sockets and
    sealed snapshots (blocking; call before serving). The caller restores them as
    ``Received.snapshots()`` yields them and then calls ``Received.acknowledge``."""
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.settimeout(timeout)
    try:
        channel.connect(path)
        _check_peer(channel)
        key = os.urandom(KEY_LEN)
        channel.sendall(HELLO + key)
        data, fds, _, _ = socket.recv_fds(channel, 1 << 20, MAX_FDS)
        received_sockets = [_adopt_fd(fd) for fd in fds]
        if len(data) < _LEN.size:
            raise HandoffError("handoff header truncated")
        (length,) = _LEN.unpack(data[:_LEN.size])
        if length > MAX_HEADER:
            raise HandoffError("handoff header over the limit")
        raw = data[_LEN.size:]
        if len(raw) < length:
            raw += _recv_exact(channel, length - len(raw))
        elif len(raw) > length:
            raise HandoffError("handoff header longer than announced")
        header: dict[str, Any] = json.loads(raw)
        if "error" in header:  # refused, e.g. a worker group (see migration.group)
            raise HandoffError(str(header["error"]))
        want = int(header.get("sockets", 0))
        while len(received_sockets) < want:
            _, more, _, _ = socket.recv_fds(channel, 1, MAX_FDS)
            if not more:
                raise HandoffError("handoff peer sent fewer sockets than announced")
            received_sockets += [_adopt_fd(fd) for fd in more]
    except (OSError, ValueError, KeyError, HandoffError) as exc:
        channel.close()
        if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            raise HandoffError(
                f"no server offers a handoff at {path} ({exc.strerror})") from exc
        raise HandoffError(f"taking over from {path} failed: {exc}") from exc
    except BaseException:
        channel.close()
        raise
    return Received(header, received_sockets, channel, key)


def request_move(path: str, request: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """Ask the server offering a handoff at ``path`` to move connections to another host
    (``request``: ``to``, ``cert``, ``key``, ``ca``, optional ``server_name``, ``count``);
    returns its answer (``moved`` or ``error``)."""
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.settimeout(timeout)
    try:
        channel.connect(path)
        _check_peer(channel)
        channel.sendall(MOVE_HELLO)
        _send_frame(channel, json.dumps(request).encode())
        answer: dict[str, Any] = json.loads(_recv_frame(channel, MAX_HEADER))
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            raise HandoffError(
                f"no server offers a handoff at {path} ({exc.strerror})") from exc
        raise HandoffError(f"move request to {path} failed: {exc}") from exc
    finally:
        channel.close()
    return answer


def refuse(channel: socket.socket, message: str) -> None:
    """Refuse a successor (of either kind) with ``message`` and close its channel: the
    answer has the form of a handoff header, so ``take_over`` raises it."""
    raw = json.dumps({"error": message}).encode()
    try:
        channel.sendall(_LEN.pack(len(raw)) + raw)
    except OSError:
        pass
    finally:
        channel.close()


def reply(channel: socket.socket, answer: dict[str, Any]) -> None:
    """Answer a move request and close its channel."""
    try:
        _send_frame(channel, json.dumps(answer).encode())
    except OSError:
        pass
    finally:
        channel.close()


def _split_datagrams(raw: bytes) -> list[RecvEntry]:
    out: list[RecvEntry] = []
    pos = 0
    while pos < len(raw):
        if pos + _LEN.size > len(raw):
            raise HandoffError("datagram frame truncated")
        (n,) = _LEN.unpack_from(raw, pos)
        pos += _LEN.size
        try:
            entry = decode_handoff(raw[pos : pos + n])
        except ValueError:  # a host that is not text
            entry = None
        pos += n
        if entry is None or pos > len(raw):
            raise HandoffError("malformed forwarded datagram")
        out.append(entry)
    return out


def _adopt_fd(fd: int) -> socket.socket:
    return socket.socket(fileno=fd)


def _remove_stale(path: str) -> None:
    """Remove a leftover unix socket at ``path`` (never a regular file)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise HandoffError(f"{path} exists and is not a unix socket")
    os.unlink(path)


__all__ = [
    "HandoffError",
    "HandoffListener",
    "Offer",
    "Received",
    "peer_uid",
    "refuse",
    "reply",
    "request_move",
    "take_over",
    "SO_PEERCRED",
]
