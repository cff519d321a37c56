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
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class CidRoute:
    """Where the worker byte of this host's plaintext QUIC-LB CIDs sits.

    ``cid_length``: our CIDs' length; ``config_id``: their first three bits;
    ``host_part``: the server-ID bytes before the worker byte (this host's ID);
    ``worker_cid_offset``: the worker byte's CID offset (``1 + len(host_part)``).
    """

    cid_length: int
    config_id: int
    host_part: bytes
    workers: int

    @property
    def worker_cid_offset(self) -> int:
        return 1 + len(self.host_part)

    def owner(self, data: bytes | memoryview, pos: int, end: int) -> int:
        """The worker that owns the packet at ``data[pos:end]``, or -1 when the DCID is
        not one of this host's worker CIDs (a client-chosen Initial DCID, say)."""
        first = data[pos]
        if first & 0x80:
            if end - pos < 6 or data[pos + 5] != self.cid_length:
                return -1
            cid = pos + 6
        else:
            cid = pos + 1
        at = cid + 1 + len(self.host_part)
        if at >= end or data[cid] >> 5 != self.config_id:
            return -1
        if self.host_part and data[cid + 1 : at] != self.host_part:
            return -1
        worker = data[at]
        return worker if worker < self.workers else -1


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

    def _sort(self, entry: RecvEntry, out: list[RecvEntry]) -> None:
        data, segment_size, addr, ecn = entry
        owner = self.route.owner
        me = self.worker_id
        total = len(data)
        if segment_size >= total:
            target = owner(data, 0, total) if total else -1
            if target < 0 or target == me:
                out.append(entry)
            else:
                self._hand_over(target, data, segment_size, addr, ecn, 1)
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
