"""``UdpTransport``: one non-blocking UDP socket that moves batches of datagrams.

Protocol-agnostic: it moves bytes, in GSO/GRO-shaped batches when the kernel allows, and
never loses what the caller gave it: when the kernel send buffer is full the rest of the
batch waits in a pending queue until the caller (on writability) calls ``flush_pending``.
"""

from __future__ import annotations

import collections
import errno
import functools
import ipaddress
import os
import socket
import struct
from typing import Any

from quicflow.datapath.backends import (
    GSO_REFUSED_ERRNOS,
    WOULD_BLOCK_ERRNOS,
    Address,
    DatapathCounters,
    RecvEntry,
    gso_runs_sender_for,
    read_error_queue,
    receiver_for,
    resolve_backend,
    send_basic,
    send_gso,
)
from quicflow.datapath.constants import (
    ECN_MASK,
    IP_MTU,
    IP_MTU_DISCOVER,
    IP_PMTUDISC_DO,
    IP_RECVERR,
    IP_RECVTOS,
    IP_TOS,
    IPPROTO_IP,
    IPPROTO_IPV6,
    IPV6_MTU,
    IPV6_MTU_DISCOVER,
    IPV6_PMTUDISC_DO,
    IPV6_RECVERR,
    IPV6_RECVTCLASS,
    IPV6_TCLASS,
    IPV6_V6ONLY,
    MAX_GSO_BYTES_V4,
    SK_MEMINFO_DROPS,
    SK_MEMINFO_VARS,
    SO_MEMINFO,
    SO_RCVBUFFORCE,
    SO_REUSEPORT,
    SO_SNDBUFFORCE,
    SOL_UDP,
    UDP_GRO,
)
from quicflow.datapath.probe import Capabilities, probe_capabilities

__all__ = [
    "UdpTransport",
    "MtuEvent",
    "bind_reuseport",
    "normalize_address",
    "to_socket_address",
]

_V4_MAPPED = "::ffff:"
#: One pending send: (data, start offset, segment size, address, ecn).
_Pending = tuple[bytes, int, int, Address | None, int]
#: A path MTU learned for a destination: (destination, or None for the connected peer,
#: the MTU in bytes *including* the IP header, as the kernel reports it). A path MTU
#: belongs to the destination host: the port may be 0 (IPv4 local refusals carry none).
MtuEvent = tuple[Address | None, int]


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


def wildcard_host(family_or_host: int | str) -> str:
    """The local address a client socket binds to reach a peer of that address family
    (an ``AF_*`` constant) or of that host: ``0.0.0.0`` for IPv4 (an IPv4 literal),
    else ``::`` (dual-stack: a host name may resolve to either)."""
    if isinstance(family_or_host, str):
        return "0.0.0.0" if _is_ipv4(family_or_host) else "::"
    return "0.0.0.0" if family_or_host == socket.AF_INET else "::"


#: kernel receive and send buffer asked for a socket (``UdpTransport.open``)
SOCKET_BUFFER = 8 << 20


def _set_buffers(sock: socket.socket, nbytes: int) -> None:
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        _set_buffer(sock, force, plain, nbytes)


def _set_buffer(sock: socket.socket, force: int, plain: int, nbytes: int) -> None:
    """Ask for ``nbytes`` (past ``net.core.[rw]mem_max`` when privileged); the kernel
    may give less, which is not an error."""
    if os.geteuid() == 0:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, nbytes)
            return
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


def ensure_port_free(host: str, port: int) -> None:
    """Raise ``OSError(EADDRINUSE)`` naming ``host`` and ``port`` when a UDP socket is
    already bound there. A listener bound with SO_REUSEPORT would otherwise silently
    share the port with another server of the same user (the kernel then splits the
    clients between the two); a probe bind without SO_REUSEPORT fails instead. Port 0
    (any free port) needs no check: :func:`bind_reuseport` takes a port nobody holds."""
    if port == 0:
        return
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        if family == socket.AF_INET6 and host in ("::", ""):
            probe.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, 0)
        try:
            probe.bind(sockaddr)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise OSError(
                errno.EADDRINUSE,
                f"{host} port {port} is already in use (another server listens there)",
            ) from None


#: Free ports :func:`bind_reuseport` tries before giving up (another program may take
#: each one between the probe and the bind).
FREE_PORT_TRIES = 16


def bind_reuseport(sock: socket.socket, sockaddr: tuple[Any, ...]) -> None:
    """Bind ``sock``, which has SO_REUSEPORT set, to ``sockaddr``.

    Port 0 gets a port that no socket holds. Linux's search for a free port counts a port
    held only by SO_REUSEPORT sockets of the same user as free, so a plain bind to port 0
    can land on another server's port and silently join its reuseport group: the kernel
    then splits both servers' datagrams among all members (41 of 1,500 such binds on one
    address did, on this machine). A probe without SO_REUSEPORT conflicts with every
    socket on the port, so the kernel gives it a port nobody holds; ``sock`` then binds
    that port (a program that took it in between makes the bind fail: the next probe).
    """
    if sockaddr[1] != 0:
        sock.bind(sockaddr)
        return
    v6only = None
    if sock.family == socket.AF_INET6:
        v6only = sock.getsockopt(IPPROTO_IPV6, IPV6_V6ONLY)
    for attempt in range(FREE_PORT_TRIES):
        with socket.socket(sock.family, socket.SOCK_DGRAM) as probe:
            if v6only is not None:
                probe.setsockopt(IPPROTO_IPV6, IPV6_V6ONLY, v6only)
            probe.bind(sockaddr)
            port = probe.getsockname()[1]
        try:
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
            return
        except OSError as e:
            if e.errno != errno.EADDRINUSE or attempt == FREE_PORT_TRIES - 1:
                raise


@functools.cache  # (a hit is a C call: no Python frame per GSO send)
def _chunk_bytes(max_segments: int, segment_size: int) -> int:
    """Bytes one GSO ``sendmsg`` takes of datagrams of ``segment_size``, at most
    ``max_segments`` of them."""
    segments = min(max_segments, MAX_GSO_BYTES_V4 // segment_size)
    return segment_size * max(1, segments)


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
        "_recv",
        "_gso_runs",
        "counters",
        "capabilities",
        "_pmtu",
        "_path_mtu",
        "mtu_events",
        "unreachable_events",
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
        self._recv = receiver_for(sock)  # one recvmmsg per batch when the C part is built
        self._gso_runs = gso_runs_sender_for(sock)  # (the same: one call per build)
        self.counters = DatapathCounters()
        self._pmtu = False
        self._path_mtu: dict[str | None, int] = {}  # destination host (None: connected)
        #: Path MTU decreases learned since the owner last looked (it clears the list).
        self.mtu_events: list[MtuEvent] = []
        #: peers reported unreachable (ICMP port/host unreachable: ECONNREFUSED and
        #: EHOSTUNREACH / ENETUNREACH), None for a connected socket's peer
        self.unreachable_events: list[Address | None] = []
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
        buffer_bytes: int = SOCKET_BUFFER,
        pmtu_discovery: bool = False,
    ) -> UdpTransport:
        """Create, configure, bind (then connect, if ``connect_to``) a UDP socket.

        ``host`` "::" makes a dual-stack socket (IPv4 peers appear as ``::ffff:a.b.c.d``;
        see :func:`normalize_address`). ``buffer_bytes`` <= 0 keeps the kernel defaults.
        ``pmtu_discovery`` calls :meth:`enable_pmtu_discovery`.
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
            if pmtu_discovery:
                transport.enable_pmtu_discovery()
            if reuse_port:
                bind_reuseport(sock, sockaddr)
            else:
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

    @property
    def receive_buffer(self) -> int:
        """The kernel's receive buffer limit for this socket in bytes (SO_RCVBUF: what
        the kernel granted, twice the bytes asked for, as Linux counts its overhead)."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    @property
    def receive_drops(self) -> int:
        """Datagrams the kernel dropped for this socket since it was made, mostly for a
        full receive buffer (SO_MEMINFO's SK_MEMINFO_DROPS; 0 where not supported)."""
        try:
            raw = self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
        except OSError:
            return 0
        if len(raw) < 4 * SK_MEMINFO_VARS:
            return 0
        drops: int = struct.unpack_from("=I", raw, 4 * SK_MEMINFO_DROPS)[0]
        return drops

    def grow_receive_buffer(self, nbytes: int) -> None:
        """Ask for a receive buffer of ``nbytes`` unless it has one at least that large
        (the kernel caps the request at ``net.core.rmem_max`` without CAP_NET_ADMIN)."""
        if self.receive_buffer < 2 * nbytes:
            _set_buffer(self._sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, nbytes)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> UdpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<UdpTransport {self.backend} fd={self._sock.fileno()}>"

    # ----------------------------------------------------------------- path MTU

    def enable_pmtu_discovery(self) -> bool:
        """Never let the kernel fragment (DF set: IP_MTU_DISCOVER = IP_PMTUDISC_DO, and
        IPV6_MTU_DISCOVER on IPv6 sockets) and queue ICMP / local errors (IP_RECVERR,
        IPV6_RECVERR), so a datagram larger than the path MTU is refused with EMSGSIZE and
        the new MTU is learned: it is appended to :attr:`mtu_events` (and counted in
        ``counters.pmtu_drops``). QUIC needs this (RFC 9000 §14: no IP fragmentation).

        Off by default: a plain UdpTransport lets IPv4 fragment. Returns whether the
        kernel accepted the options.
        """
        sock = self._sock
        ok = True
        options = [(IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO), (IPPROTO_IP, IP_RECVERR, 1)]
        if self._family == socket.AF_INET6:
            # IPPROTO_IP options also cover IPv4(-mapped) traffic of a dual-stack socket
            options += [
                (IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO),
                (IPPROTO_IPV6, IPV6_RECVERR, 1),
            ]
        for level, name, value in options:
            try:
                sock.setsockopt(level, name, value)
            except OSError:
                ok = False
        self._pmtu = ok
        return ok

    @property
    def pmtu_discovery(self) -> bool:
        """Whether :meth:`enable_pmtu_discovery` succeeded."""
        return self._pmtu

    def path_mtu(self, addr: tuple[Any, ...] | None = None) -> int | None:
        """The last path MTU learned for ``addr`` (None: the connected peer), if any."""
        key = None if addr is None else normalize_address(addr)[0]
        return self._path_mtu.get(key)

    def _query_mtu(self) -> int:
        """The kernel's path MTU of a connected socket (IP_MTU / IPV6_MTU); 0 if unknown."""
        sock = self._sock
        try:
            if self._family == socket.AF_INET6:
                return int(sock.getsockopt(IPPROTO_IPV6, IPV6_MTU))
            return int(sock.getsockopt(IPPROTO_IP, IP_MTU))
        except OSError:
            return 0

    def _note_mtu(self, dest: Address | None, mtu: int) -> None:
        if mtu <= 0:
            return
        key = None if dest is None else dest[0]
        old = self._path_mtu.get(key)
        self._path_mtu[key] = mtu
        if old is None or mtu < old:
            self.mtu_events.append((dest, mtu))
            self.counters.pmtu_drops += 1

    def check_errors(self, connected: bool | None = None) -> None:
        """Read the error queue and learn the path MTUs it reports (EMSGSIZE entries:
        local refusals and ICMP "fragmentation needed" / "packet too big"). On a
        connected socket the kernel's IP_MTU is read as well and events carry ``None``.
        Cheap when the queue is empty (one failing syscall)."""
        if not self._pmtu:
            return
        entries = read_error_queue(self._sock, self.counters)
        if connected is None:
            connected = self.peer_address is not None if entries else False
        for dest, ee_errno, _origin, _type, _code, info in entries:
            if ee_errno == errno.EMSGSIZE and info > 0:
                self._note_mtu(None if connected or dest is None else normalize_address(dest),
                               info)
            elif ee_errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                self.counters.unreachable += 1
                self.unreachable_events.append(
                    None if connected or dest is None else normalize_address(dest)
                )
        if connected:
            self._note_mtu(None, self._query_mtu())

    # --------------------------------------------------------------------- receive

    def claim(self, entries: list[RecvEntry]) -> list[RecvEntry]:
        """Of ``entries`` (read elsewhere: strays of a per-connection socket bound to this
        socket's port), those this socket's endpoint should process; a worker's transport
        hands other workers' over (``datapath/handoff.py``). Here: all of them."""
        return entries

    def recv_batch(self, max_datagrams: int = 64) -> list[RecvEntry]:
        """Read buffers until EAGAIN or ``max_datagrams`` buffers; [] when nothing waits.

        Each entry is ``(data, segment_size, addr, ecn_bits)``; ``data`` may hold several
        GRO-coalesced segments of ``segment_size`` bytes (the last may be shorter);
        ``segment_size == len(data)`` for a plain datagram. A truncated buffer is counted
        (``counters.truncated``) and dropped, never delivered short.
        """
        out: list[RecvEntry] = []
        counters = self.counters
        errors = counters.recv_errors
        self._recv(self._sock, out, max_datagrams, counters)
        if out:
            counters.batches_received += 1
        # A queued ICMP error shows as a failed recv, or as a wake-up with nothing to read
        # (POLLERR stays up while the error queue holds something): drain the queue.
        if self._pmtu and (not out or counters.recv_errors != errors):
            self.check_errors()
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
        counters = self.counters
        counters.batches_sent += 1
        n = data.nbytes if data.__class__ is memoryview else len(data)
        if 0 < n <= segment_size and not self._pending and ecn & ECN_MASK == self._tos:
            # one datagram, nothing queued, ECN set: one send, without the general
            # path's layers (send_basic's counters); any error goes that way from scratch
            try:
                if addr is None:
                    self._sock.send(data)
                elif (self._family == socket.AF_INET and len(addr) == 2
                      and addr[1].__class__ is int and not addr[0].startswith(_V4_MAPPED)):
                    self._sock.sendto(data, addr)  # what to_socket_address would give
                else:
                    self._sock.sendto(data, to_socket_address(addr, self._family))
            except OSError as exc:
                code = exc.errno or 0
                if not isinstance(exc, InterruptedError) and code not in WOULD_BLOCK_ERRNOS:
                    counters.syscalls_send += 1
                    if addr is None and code != errno.EMSGSIZE:
                        counters.send_errors += 1  # as send_basic: counted and skipped
                        return True
                    # send_basic's one retry, done here: a pending socket error left by
                    # an earlier datagram's ICMP error fails one send
                    counters.send_retries += 1
            else:
                counters.syscalls_send += 1
                counters.datagrams_sent += 1
                counters.bytes_sent += n
                return True
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

    def send_runs(
        self,
        data: bytes | bytearray | memoryview,
        runs: list[tuple[int, int, int]],
        addr: tuple[Any, ...] | None,
        ecn: int = 0,
    ) -> bool:
        """Send several runs of ``data`` in order: ``(start, end, segment_size)`` each, as
        :meth:`send_batch` would send ``data[start:end]`` (each run counts as one batch in
        ``batches_sent``; the per-``sendmsg`` counters are the same).

        One call for a build's GSO sends: while nothing is queued, GSO is on and the run
        is more than one datagram, each run goes straight to ``send_gso`` (the layers of
        ``send_batch`` are paid once per call, not per run); a run of one datagram goes
        through ``send_batch``'s one-send path. A run that fails goes on
        through the general path from where it stopped; when the kernel buffer fills, what
        is left of it and every later run wait in the pending queue, in order (not tried
        again in this call). Returns False when the kernel buffer filled up.
        """
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if self._pending or not self._gso:
            ok = True
            for start, end, size in runs:
                if not self.send_batch(view[start:end], size, addr, ecn):
                    ok = False
            return ok
        to = to_socket_address(addr, self._family) if addr is not None else None
        ecn &= ECN_MASK
        if ecn != self._tos:
            self._set_tos(ecn)
        counters = self.counters
        sock = self._sock
        total = len(view)
        n = len(runs)
        i = 0
        while i < n:
            start, end, size = runs[i]
            if size <= 0:
                raise ValueError("segment_size must be positive")
            if end - start <= size or not self._gso:
                # one datagram (send_batch's one-send path, as a handshake flight's are),
                # or GSO turned off by a refusal earlier in this call
                if self.send_batch(view[start:end], size, addr, ecn):
                    i += 1
                    continue
                offset = end  # (send_batch queued the rest of its run itself)
            else:
                chunk = _chunk_bytes(self._chunk_segments, size)
                if to is None:
                    # a connected socket: this run and the next ones of its size in one
                    # call (send_gso_runs: the extension's loop when it is built)
                    i, offset, code = self._gso_runs(sock, view, runs, i, size, chunk,
                                                     counters)
                    if not code:
                        continue  # all sent up to run i, which is not of that kind
                    start, end, size = runs[i]
                    part = view if end == total else view[:end]
                else:
                    counters.batches_sent += 1
                    part = view if end == total else view[:end]
                    offset, code = send_gso(sock, part, start, size, to, chunk, counters)
                if code:  # the general path takes the rest of this run from here
                    offset = self._send(part, offset, size, to, ecn, code)
                if offset >= end:
                    i += 1
                    continue
                self._queue(bytes(view[offset:end]), size, to, ecn)
            # the buffer is full: the later runs wait behind what is queued, in order
            for start, end, size in runs[i + 1 :]:
                counters.batches_sent += 1
                self._queue(bytes(view[start:end]), size, to, ecn)
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
        self, view: memoryview, offset: int, segment_size: int, addr: Address | None, ecn: int,
        failed: int = 0,
    ) -> int:
        """Send ``view[offset:]``; return how far it got (== len(view) when all went).

        Datagrams refused for their size (EMSGSIZE) are counted (``send_errors``,
        ``send_emsgsize``) and skipped, and the new path MTU is learned. ``failed``: the
        errno a GSO send of ``view[offset:]`` just returned (``send_runs``), handled as
        if this call had made it (0: none)."""
        counters = self.counters
        refused = counters.send_emsgsize
        offset = self._send_inner(view, offset, segment_size, addr, ecn, failed)
        if counters.send_emsgsize != refused and self._pmtu:
            self.check_errors(connected=addr is None)
        return offset

    def _exceeds_path_mtu(self, segment_size: int, addr: Address | None) -> bool:
        """Whether ``segment_size`` is over the path MTU learned for ``addr`` (after reading
        the error queue, where an ICMP report may have just arrived)."""
        if not self._pmtu:
            return False
        self.check_errors(connected=addr is None)
        mtu = self.path_mtu(addr)
        if mtu is None:
            return False
        dest = addr if addr is not None else self.peer_address
        host = str(dest[0]) if dest is not None else ""
        ipv6 = self._family == socket.AF_INET6 and ":" in host and "." not in host
        return segment_size + (48 if ipv6 else 28) > mtu

    def _reports_came(self, reports: int, addr: Address | None) -> bool:
        """Whether ICMP reports were queued while this send was refused (``reports``:
        the error-queue entries read before the first refusal was looked into; -1: not
        looked into). With IP_RECVERR each queued report fails one later send, with
        EMSGSIZE for "fragmentation needed": after a path MTU drop the reports for
        datagrams already sent keep arriving (late under load), so a refusal then says
        nothing about GSO itself, and GSO stays on. A kernel that refuses GSO refuses
        it again on a later call with an empty queue."""
        if reports < 0:
            return False
        self.check_errors(connected=addr is None)  # those that came since as well
        return self.counters.errqueue_entries != reports

    def _send_inner(
        self, view: memoryview, offset: int, segment_size: int, addr: Address | None, ecn: int,
        failed: int = 0,
    ) -> int:
        if ecn != self._tos:
            self._set_tos(ecn)
        total = len(view)
        sock = self._sock
        counters = self.counters
        drained = False
        reports = -1  # error-queue entries read before the first refusal was looked into
        while offset < total:
            if not (self._gso and total - offset > segment_size):
                offset, _ = send_basic(sock, view, offset, segment_size, addr, counters)
                return offset
            chunk = _chunk_bytes(self._chunk_segments, segment_size)
            if failed:  # (send_runs' GSO send of this chunk failed with that errno)
                code, failed = failed, 0
            else:
                offset, code = send_gso(sock, view, offset, segment_size, addr, chunk,
                                        counters)
            if code == 0 or code in WOULD_BLOCK_ERRNOS:
                return offset
            if code in GSO_REFUSED_ERRNOS and self._pmtu and not drained:
                # With IP_RECVERR every queued ICMP error fails one later send (a router
                # sends one per oversized datagram): read them all, then try GSO again
                # before concluding that the kernel refuses GSO itself.
                drained = True
                reports = counters.errqueue_entries
                self.check_errors(connected=addr is None)
                if not self._exceeds_path_mtu(segment_size, addr):
                    continue
            # Send the chunk that failed one datagram at a time, then go on.
            limit = min(offset + chunk, total)
            start = offset
            refused = counters.send_emsgsize
            offset, basic_code = send_basic(
                sock, view, offset, segment_size, addr, counters, limit
            )
            if code in GSO_REFUSED_ERRNOS:
                if counters.send_emsgsize != refused or self._exceeds_path_mtu(
                    segment_size, addr
                ):
                    # The segments themselves exceed the path MTU (a PMTU drop; the kernel
                    # says EINVAL when gso_size is over the route's MTU): GSO is not at
                    # fault, keep it; the owner lowers its datagram size.
                    pass
                elif offset > start and not self._reports_came(reports, addr):
                    # Plain datagrams of this size go through: GSO itself is refused.
                    self._gso = False
                    counters.gso_fallbacks += 1
                # else nothing went (buffer full): decide on the next attempt
            if basic_code:
                return offset
        return offset
