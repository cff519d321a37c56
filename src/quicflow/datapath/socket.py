"""``UdpTransport``: one non-blocking UDP socket that moves batches of datagrams.

Protocol-agnostic: it moves bytes, in GSO/GRO-shaped batches when the kernel allows, and
never loses what the caller gave it: when the kernel send buffer is full the rest of the
batch waits in a pending queue until the caller (on writability) calls ``flush_pending``.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import os
import socket
from typing import Any

from quicflow.datapath.backends import (
    GSO_REFUSED_ERRNOS,
    WOULD_BLOCK_ERRNOS,
    Address,
    DatapathCounters,
    RecvEntry,
    recv_into,
    resolve_backend,
    send_basic,
    send_gso,
)
from quicflow.datapath.constants import (
    ECN_MASK,
    IP_RECVTOS,
    IP_TOS,
    IPPROTO_IP,
    IPPROTO_IPV6,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
    IPV6_V6ONLY,
    MAX_GSO_BYTES_V4,
    SO_RCVBUFFORCE,
    SO_REUSEPORT,
    SO_SNDBUFFORCE,
    SOL_UDP,
    UDP_GRO,
)
from quicflow.datapath.probe import Capabilities, probe_capabilities

__all__ = ["UdpTransport", "normalize_address", "to_socket_address"]

_V4_MAPPED = "::ffff:"
#: One pending send: (data, start offset, segment size, address, ecn).
_Pending = tuple[bytes, int, int, Address | None, int]


def normalize_address(addr: tuple[Any, ...]) -> Address:
    """``(host, port)`` with an IPv4-mapped IPv6 host (``::ffff:a.b.c.d``) made plain IPv4.

    Extra fields of IPv6 socket addresses (flowinfo, scope id) are dropped.
    """
    host: str = addr[0]
    if host.startswith(_V4_MAPPED) and "." in host:
        host = host[len(_V4_MAPPED) :]
    return (host, int(addr[1]))


def to_socket_address(addr: tuple[Any, ...], family: int) -> Address:
    """The form of ``addr`` that a socket of ``family`` accepts: on an IPv6 (dual-stack)
    socket an IPv4 host becomes ``::ffff:a.b.c.d``; on an IPv4 socket a mapped host is
    unmapped."""
    host: str = addr[0]
    if family == socket.AF_INET6:
        if ":" not in host and _is_ipv4(host):
            host = _V4_MAPPED + host
    elif host.startswith(_V4_MAPPED):
        host = host[len(_V4_MAPPED) :]
    return (host, int(addr[1]))


@functools.lru_cache(maxsize=4096)
def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _set_buffers(sock: socket.socket, nbytes: int) -> None:
    privileged = os.geteuid() == 0
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        if privileged:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, nbytes)
                continue
            except OSError:
                pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, plain, nbytes)
        except OSError:
            pass  # keep the default: a smaller buffer is not an error


def _configure(sock: socket.socket, backend: str, caps: Capabilities) -> None:
    """Receive-side options: GRO for the gso backend (off otherwise) and ECN reporting."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1 if backend == "gso" and caps.gro else 0)
    except OSError:
        pass
    try:
        sock.setsockopt(IPPROTO_IP, IP_RECVTOS, 1)  # also covers IPv4 on dual-stack sockets
    except OSError:
        pass
    if sock.family == socket.AF_INET6:
        try:
            sock.setsockopt(IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
        except OSError:
            pass


class UdpTransport:
    """One non-blocking UDP socket with batch send/receive.

    Build it with :meth:`open`, or wrap an existing bound socket (one received from another
    process, say) with ``UdpTransport(sock, backend=...)``. The transport owns the socket:
    :meth:`close` closes it.
    """

    __slots__ = (
        "_sock",
        "_family",
        "_backend",
        "_gso",
        "_chunk_segments",
        "_tos",
        "_pending",
        "_pending_bytes",
        "counters",
        "capabilities",
    )

    def __init__(self, sock: socket.socket, *, backend: str = "auto", configure: bool = True):
        if sock.type != socket.SOCK_DGRAM:
            raise ValueError("UdpTransport needs a SOCK_DGRAM socket")
        self._sock = sock
        self._family = sock.family
        caps = probe_capabilities(sock.family)
        self.capabilities: Capabilities = caps
        self._backend = resolve_backend(backend, caps)
        self._gso = self._backend == "gso"
        self._chunk_segments = max(1, caps.max_segments)
        self._tos = -1
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_bytes = 0
        self.counters = DatapathCounters()
        sock.setblocking(False)
        if configure:
            _configure(sock, self._backend, caps)

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        backend: str = "auto",
        reuse_port: bool = False,
        connect_to: tuple[Any, ...] | None = None,
        buffer_bytes: int = 8 << 20,
    ) -> UdpTransport:
        """Create, configure, bind (then connect, if ``connect_to``) a UDP socket.

        ``host`` "::" makes a dual-stack socket (IPv4 peers appear as ``::ffff:a.b.c.d``;
        see :func:`normalize_address`). ``buffer_bytes`` <= 0 keeps the kernel defaults.
        """
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE
        )
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and host in ("::", ""):
                sock.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 0)
            if buffer_bytes > 0:
                _set_buffers(sock, buffer_bytes)
            transport = cls(sock, backend=backend, configure=False)
            _configure(sock, transport._backend, transport.capabilities)
            sock.bind(sockaddr)
            if connect_to is not None:
                sock.connect(to_socket_address(connect_to, family))
        except BaseException:
            sock.close()
            raise
        return transport

    # ------------------------------------------------------------------ properties

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def socket(self) -> socket.socket:
        """The underlying socket (for options the transport does not cover)."""
        return self._sock

    @property
    def family(self) -> int:
        return self._family

    @property
    def local_address(self) -> Address:
        return normalize_address(self._sock.getsockname())

    @property
    def peer_address(self) -> Address | None:
        """The connected peer (normalised), or None for an unconnected socket."""
        try:
            return normalize_address(self._sock.getpeername())
        except OSError:
            return None

    @property
    def backend(self) -> str:
        """The backend in use: "gso" or "basic" (after a GSO refusal: "basic")."""
        return "gso" if self._gso else "basic"

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> UdpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UdpTransport {self.backend} fd={self._sock.fileno()}>"

    # --------------------------------------------------------------------- receive

    def recv_batch(self, max_datagrams: int = 64) -> list[RecvEntry]:
        """Read buffers until EAGAIN or ``max_datagrams`` buffers; [] when nothing waits.

        Each entry is ``(data, segment_size, addr, ecn_bits)``; ``data`` may hold several
        GRO-coalesced segments of ``segment_size`` bytes (the last may be shorter);
        ``segment_size == len(data)`` for a plain datagram. A truncated buffer is counted
        (``counters.truncated``) and dropped, never delivered short.
        """
        out: list[RecvEntry] = []
        recv_into(self._sock, out, max_datagrams, self.counters)
        if out:
            self.counters.batches_received += 1
        return out

    # ------------------------------------------------------------------------ send

    def send_batch(
        self,
        data: bytes | bytearray | memoryview,
        segment_size: int,
        addr: tuple[Any, ...] | None,
        ecn: int = 0,
    ) -> bool:
        """Send ``data`` as datagrams of ``segment_size`` bytes (the last may be shorter).

        ``addr`` None sends on a connected socket. ``ecn`` is the ECN codepoint (ECT(0)=2).
        Returns False when the kernel buffer filled up: what was not sent is kept (copied)
        in the pending queue, in order; wait for writability and call :meth:`flush_pending`.
        Data given while a queue is pending goes behind it.
        """
        if segment_size <= 0:
            raise ValueError("segment_size must be positive")
        self.counters.batches_sent += 1
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if not len(view):
            return self.flush_pending()
        if addr is not None:
            addr = to_socket_address(addr, self._family)
        ecn &= ECN_MASK
        if self._pending and not self.flush_pending():
            self._queue(bytes(view), segment_size, addr, ecn)
            return False
        offset = self._send(view, 0, segment_size, addr, ecn)
        if offset < len(view):
            self._queue(bytes(view[offset:]), segment_size, addr, ecn)
            return False
        return True

    def has_pending(self) -> bool:
        return bool(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Bytes waiting in the pending queue."""
        return self._pending_bytes

    def flush_pending(self) -> bool:
        """Send what waits in the pending queue; True when it is empty afterwards."""
        pending = self._pending
        while pending:
            data, start, segment_size, addr, ecn = pending[0]
            view = memoryview(data)
            offset = self._send(view, start, segment_size, addr, ecn)
            self._pending_bytes -= offset - start
            if offset < len(view):
                pending[0] = (data, offset, segment_size, addr, ecn)
                return False
            pending.popleft()
        return True

    def _queue(self, data: bytes, segment_size: int, addr: Address | None, ecn: int) -> None:
        self._pending.append((data, 0, segment_size, addr, ecn))
        self._pending_bytes += len(data)

    def _set_tos(self, ecn: int) -> None:
        self._tos = ecn
        sock = self._sock
        if self._family == socket.AF_INET6:
            try:
                sock.setsockopt(IPPROTO_IPV6, IPV6_TCLASS, ecn)
            except OSError:
                pass
        try:
            sock.setsockopt(IPPROTO_IP, IP_TOS, ecn)  # IPv4, and IPv4-mapped on dual-stack
        except OSError:
            pass

    def _send(
        self, view: memoryview, offset: int, segment_size: int, addr: Address | None, ecn: int
    ) -> int:
        """Send ``view[offset:]``; return how far it got (== len(view) when all went)."""
        if ecn != self._tos:
            self._set_tos(ecn)
        total = len(view)
        sock = self._sock
        counters = self.counters
        while offset < total:
            if not (self._gso and total - offset > segment_size):
                offset, _ = send_basic(sock, view, offset, segment_size, addr, counters)
                return offset
            segments = min(self._chunk_segments, MAX_GSO_BYTES_V4 // segment_size)
            chunk = segment_size * max(1, segments)
            offset, code = send_gso(sock, view, offset, segment_size, addr, chunk, counters)
            if code == 0 or code in WOULD_BLOCK_ERRNOS:
                return offset
            if code in GSO_REFUSED_ERRNOS:
                self._gso = False
                counters.gso_fallbacks += 1
            # Send the chunk that failed one datagram at a time, then go on.
            limit = min(offset + chunk, total)
            offset, code = send_basic(sock, view, offset, segment_size, addr, counters, limit)
            if code:
                return offset
        return offset
