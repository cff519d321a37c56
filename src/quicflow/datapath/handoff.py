"""Handing misrouted datagrams to the worker that owns their connection.

Every worker of a reuseport group has an inbox: a unix datagram socket pair made by the
group's owner before the workers start (``HandoffInboxes``), so it survives a worker's
restart (what was handed over meanwhile waits in the inbox). A worker reads UDP
datagrams through a ``SteeringTransport``: before they reach its endpoint, each segment
whose DCID is a QUIC-LB CID of this host naming another worker is sent to that worker's
inbox with the client's address and ECN bits, and counted (``misrouted_datagrams``);
what arrives in its own inbox is delivered as if read from the UDP socket
(``handed_over_datagrams``). The owner then answers from its own socket, which is bound
to the same address and port.

One inbox message: ``!HHBB`` (client port, segment size, ECN bits, length of the host
text), the host text, then the datagram(s) — a GRO run keeps its segment size.
"""

from __future__ import annotations

import socket
import struct

from .backends import RecvEntry
from .socket import UdpTransport

__all__ = ["HandoffInboxes", "CidRoute", "SteeringTransport", "encode_handoff", "decode_handoff"]

_HEADER = struct.Struct("!HHBB")
#: Inbox socket buffers: a few GRO batches.
INBOX_BUFFER_BYTES = 4 << 20


def encode_handoff(data: bytes | memoryview, segment_size: int, addr: tuple[str, int],
                   ecn: int) -> bytes:
    host = addr[0].encode()
    return b"".join((_HEADER.pack(addr[1], segment_size, ecn, len(host)), host, data))


def decode_handoff(message: bytes) -> RecvEntry | None:
    """The ``(data, segment_size, addr, ecn)`` of one inbox message; None if malformed."""
    if len(message) < _HEADER.size:
        return None
    port, segment_size, ecn, host_len = _HEADER.unpack_from(message)
    start = _HEADER.size + host_len
    if len(message) <= start:
        return None
    data = message[start:]
    if not 0 < segment_size <= len(data):
        segment_size = len(data)
    return (data, segment_size, (message[_HEADER.size : start].decode(), port), ecn)


class HandoffInboxes:
    """One unix datagram socket pair per worker: ``receivers[i]`` is worker i's inbox,
    ``senders[i]`` (usable by every worker) writes to it."""

    def __init__(self, workers: int) -> None:
        self.receivers: list[socket.socket] = []
        self.senders: list[socket.socket] = []
        for _ in range(workers):
            rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for s in (rx, tx):
                s.setblocking(False)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, INBOX_BUFFER_BYTES)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, INBOX_BUFFER_BYTES)
                except OSError:
                    pass
            self.receivers.append(rx)
            self.senders.append(tx)

    def close(self) -> None:
        for s in (*self.receivers, *self.senders):
            s.close()
        self.receivers = []
        self.senders = []


class CidRoute:
    """Where the worker byte of this host's plaintext QUIC-LB CIDs sits.

    ``cid_length``: our CIDs' length; ``config_id``: their first three bits;
    ``host_part``: the server-ID bytes before the worker byte (this host's ID);
    ``workers``: how many workers there are. The worker byte is at CID offset
    ``worker_cid_offset`` (``1 + len(host_part)``).
    """

    __slots__ = ("cid_length", "config_id", "host_part", "workers", "worker_cid_offset",
                 "_config_bytes")  # fmt: skip

    def __init__(self, cid_length: int, config_id: int, host_part: bytes, workers: int) -> None:
        self.cid_length = cid_length
        self.config_id = config_id
        self.host_part = bytes(host_part)
        self.workers = workers
        self.worker_cid_offset = 1 + len(self.host_part)
        #: the first CID bytes of this config (config id in the top three bits)
        self._config_bytes = bytes(range(config_id << 5, (config_id + 1) << 5))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CidRoute) and (
            self.cid_length, self.config_id, self.host_part, self.workers
        ) == (other.cid_length, other.config_id, other.host_part, other.workers)

    def __hash__(self) -> int:
        return hash((self.cid_length, self.config_id, self.host_part, self.workers))

    def owner(self, data: bytes | memoryview, pos: int, end: int) -> int:
        """The worker that owns the packet at ``data[pos:end]``, or -1 when the DCID is
        not one of this host's worker CIDs (a client-chosen Initial DCID, say)."""
        if data[pos] & 0x80:
            if end - pos < 6 or data[pos + 5] != self.cid_length:
                return -1
            cid = pos + 6
        else:
            cid = pos + 1
        at = cid + self.worker_cid_offset
        if at >= end or data[cid] >> 5 != self.config_id:
            return -1
        host = self.host_part
        if host and (
            data[cid + 1] != host[0] if len(host) == 1 else data[cid + 1 : at] != host
        ):
            return -1
        worker = data[at]
        return worker if worker < self.workers else -1

    def all_short_and_owned_by(self, data: bytes | memoryview, segment_size: int,
                               worker: int) -> bool:
        """Whether every segment of a GRO buffer is a short header whose DCID names
        ``worker``: strided slices checked by C loops (``isascii``, ``translate``,
        ``count``), no Python loop over segments (the common case)."""
        raw = data if isinstance(data, bytes) else bytes(data)
        n = -(-len(raw) // segment_size)
        if not raw[0::segment_size].isascii():  # a first byte >= 0x80: a long header
            return False
        cfg = raw[1::segment_size]
        if len(cfg) != n or cfg.translate(None, self._config_bytes):
            return False  # a DCID of another config (or a segment too short)
        for i, byte in enumerate(self.host_part):
            if raw[2 + i :: segment_size].count(byte) != n:
                return False
        return raw[1 + self.worker_cid_offset :: segment_size].count(worker) == n


class SteeringTransport(UdpTransport):
    """A worker's UDP transport: hands other workers' datagrams over, takes its own
    from its inbox (see the module docstring)."""

    __slots__ = (
        "route",
        "worker_id",
        "inbox",
        "outboxes",
        "misrouted_datagrams",
        "handed_over_datagrams",
        "handoff_dropped",
        "_short_worker_at",
        "_cfg",
    )

    def __init__(
        self,
        sock: socket.socket,
        route: CidRoute,
        worker_id: int,
        inboxes: HandoffInboxes,
        *,
        backend: str = "auto",
    ) -> None:
        super().__init__(sock, backend=backend)
        self.route = route
        self.worker_id = worker_id
        self._short_worker_at = 1 + route.worker_cid_offset  # payload offset, short header
        self._cfg = route.config_id
        self.inbox = inboxes.receivers[worker_id]
        self.outboxes = inboxes.senders
        #: segments that reached this worker but belong to another (handed over)
        self.misrouted_datagrams = 0
        #: segments other workers handed to this one
        self.handed_over_datagrams = 0
        #: segments that could not be handed over (the owner's inbox was full)
        self.handoff_dropped = 0

    def inbox_fileno(self) -> int:
        return self.inbox.fileno()

    def recv_batch(self, max_datagrams: int = 64) -> list[RecvEntry]:
        out: list[RecvEntry] = []
        for entry in super().recv_batch(max_datagrams):
            self._sort(entry, out)
        self._read_inbox(out, max_datagrams)
        return out

    def claim(self, entries: list[RecvEntry]) -> list[RecvEntry]:
        out: list[RecvEntry] = []
        for entry in entries:
            self._sort(entry, out)
        return out

    def _sort(self, entry: RecvEntry, out: list[RecvEntry]) -> None:
        data, segment_size, addr, ecn = entry
        owner = self.route.owner
        me = self.worker_id
        total = len(data)
        if segment_size >= total:
            # the common case first: a short header naming this worker
            at = self._short_worker_at
            if total > at and data[at] == me and data[0] < 0x80 and data[1] >> 5 == self._cfg:
                host = self.route.host_part
                if not host or data[2 : 2 + len(host)] == host:
                    out.append(entry)
                    return
            target = owner(data, 0, total) if total else -1
            if target < 0 or target == me:
                out.append(entry)
            else:
                self._hand_over(target, data, segment_size, addr, ecn, 1)
            return
        if self.route.all_short_and_owned_by(data, segment_size, me):
            out.append(entry)
            return
        # A GRO run: split it where the owner changes.
        run_start = 0
        run_target = -2
        pos = 0
        while pos < total:
            end = min(pos + segment_size, total)
            target = owner(data, pos, end)
            if target == me:
                target = -1
            if target != run_target:
                if pos > run_start:
                    self._emit(data, run_start, pos, segment_size, addr, ecn, run_target, out)
                run_start = pos
                run_target = target
            pos = end
        self._emit(data, run_start, total, segment_size, addr, ecn, run_target, out)

    def _emit(
        self, data: bytes | memoryview, start: int, end: int, segment_size: int,
        addr: tuple[str, int], ecn: int, target: int, out: list[RecvEntry],
    ) -> None:
        piece = data if start == 0 and end == len(data) else data[start:end]
        size = min(segment_size, end - start)
        if target < 0:
            out.append((piece, size, addr, ecn))
        else:
            self._hand_over(target, piece, size, addr, ecn, -(-(end - start) // segment_size))

    def _hand_over(
        self, target: int, data: bytes | memoryview, segment_size: int,
        addr: tuple[str, int], ecn: int, segments: int,
    ) -> None:
        self.misrouted_datagrams += segments
        try:
            self.outboxes[target].send(encode_handoff(data, segment_size, addr, ecn))
        except OSError:
            self.handoff_dropped += segments  # the owner's inbox is full: QUIC resends

    def _read_inbox(self, out: list[RecvEntry], max_datagrams: int) -> None:
        inbox = self.inbox
        for _ in range(max_datagrams):
            try:
                message = inbox.recv(1 << 17)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            entry = decode_handoff(message)
            if entry is None:
                continue
            data, segment_size = entry[0], entry[1]
            self.handed_over_datagrams += -(-len(data) // segment_size)
            out.append(entry)
