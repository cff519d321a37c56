"""Stream send and receive buffers (RFC 9000 §2-§4), plain data for snapshots."""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field

from .errors import FINAL_SIZE_ERROR, FLOW_CONTROL_ERROR, STREAM_STATE_ERROR, QuicError
from .rangeset import RangeSet

_COMPACT_MIN = 1 << 16


@dataclass(slots=True)
class SendStream:
    """Bytes the application wrote, from the first unacknowledged offset on."""

    buffer: bytearray = field(default_factory=bytearray)
    buffer_start: int = 0  # index in ``buffer`` of offset ``acked_offset``
    acked_offset: int = 0  # every byte below is acknowledged
    next_offset: int = 0  # first byte never sent
    write_offset: int = 0  # end of written data
    max_data: int = 0  # peer's MAX_STREAM_DATA for this stream
    acked: RangeSet = field(default_factory=RangeSet)
    lost: RangeSet = field(default_factory=RangeSet)
    fin_written: bool = False
    fin_sent: bool = False
    fin_lost: bool = False
    fin_acked: bool = False
    reset_code: int | None = None
    reset_pending: bool = False
    reset_acked: bool = False
    stop_sending_code: int | None = None
    blocked_sent_at: int = -1  # limit for which STREAM_DATA_BLOCKED was sent

    @property
    def buffered(self) -> int:
        """Bytes written but not yet acknowledged."""
        return self.write_offset - self.acked_offset

    def write(self, data: bytes | bytearray | memoryview, fin: bool = False) -> None:
        if self.fin_written or self.reset_code is not None:
            raise QuicError(STREAM_STATE_ERROR, "stream already closed for writing")
        if data:
            self.buffer += data
            self.write_offset += len(data)
        if fin:
            self.fin_written = True

    def has_data_to_send(self) -> bool:
        if self.reset_code is not None:
            return False
        if self.lost or self.fin_lost:
            return True
        if self.next_offset < self.write_offset and self.next_offset < self.max_data:
            return True
        return self.fin_written and not self.fin_sent

    def is_flow_blocked(self) -> bool:
        return self.next_offset < self.write_offset and self.next_offset >= self.max_data

    def _slice(self, start: int, end: int) -> bytes:
        base = self.buffer_start - self.acked_offset
        return bytes(self.buffer[base + start : base + end])

    def next_chunk(self, max_len: int, conn_credit: int) -> tuple[int, bytes, bool, int] | None:
        """Next (offset, data, fin, new_bytes) to send; retransmissions come first.

        ``new_bytes`` is how much of the chunk counts against connection flow control
        (0 for retransmissions).
        """
        if self.reset_code is not None or max_len <= 0:
            return None
        if self.lost:
            start = self.lost.starts[0]
            end = min(self.lost.ends[0], start + max_len)
            self.lost.subtract(start, end)
            fin = False
            if self.fin_lost and end == self.write_offset:
                fin = True
                self.fin_lost = False
            return start, self._slice(start, end), fin, 0
        if self.fin_lost and self.next_offset == self.write_offset:
            self.fin_lost = False
            return self.write_offset, b"", True, 0
        start = self.next_offset
        end = min(self.write_offset, self.max_data, start + max_len, start + conn_credit)
        if end <= start:
            if self.fin_written and not self.fin_sent and start == self.write_offset:
                self.fin_sent = True
                return start, b"", True, 0
            return None
        self.next_offset = end
        fin = False
        if self.fin_written and end == self.write_offset:
            fin = True
            self.fin_sent = True
        return start, self._slice(start, end), fin, end - start

    def on_acked(self, offset: int, length: int, fin: bool) -> None:
        if fin:
            self.fin_acked = True
        end = offset + length
        if end > self.acked_offset:
            acked = self.acked
            acked.add(max(offset, self.acked_offset), end)
            if acked.starts[0] <= self.acked_offset < acked.ends[0]:
                new_acked = acked.ends[0]
                self.buffer_start += new_acked - self.acked_offset
                self.acked_offset = new_acked
                acked.shift_below(new_acked)
                if self.buffer_start >= _COMPACT_MIN and self.buffer_start * 2 >= len(self.buffer):
                    del self.buffer[: self.buffer_start]
                    self.buffer_start = 0

    def on_lost(self, offset: int, length: int, fin: bool) -> None:
        if self.reset_code is not None:
            return
        if fin and not self.fin_acked:
            self.fin_lost = True
        if length:
            start = max(offset, self.acked_offset)
            end = offset + length
            if start < end:
                self.lost.add(start, end)
                for s, e in list(self.acked):
                    self.lost.subtract(s, e)

    def is_complete(self) -> bool:
        """All data and FIN acknowledged (or the reset acknowledged)."""
        if self.reset_code is not None:
            return self.reset_acked
        return self.fin_acked and self.acked_offset >= self.write_offset

    def take_back(self) -> int:
        """Withdraw what was written but never sent (and an unsent FIN); returns the
        offset where writing continues. Sent bytes stay (they may be in flight)."""
        if self.reset_code is None and self.next_offset < self.write_offset:
            base = self.buffer_start - self.acked_offset
            del self.buffer[base + self.next_offset :]
            self.write_offset = self.next_offset
        if self.fin_written and not self.fin_sent:
            self.fin_written = False
        return self.write_offset

    def compact(self) -> None:
        """Drop the acknowledged bytes still held at the front of the buffer."""
        if self.buffer_start:
            del self.buffer[: self.buffer_start]
            self.buffer_start = 0

    def reset(self, code: int) -> None:
        if self.reset_code is None and not self.is_complete():
            self.reset_code = code
            self.reset_pending = True
            self.buffer = bytearray()
            self.buffer_start = 0
            self.lost = RangeSet()


@dataclass(slots=True)
class RecvStream:
    """Received bytes not yet read, out-of-order chunks and receive flow control.

    In-order data is kept as a list of chunks (``ready[ready_head:]``, the first one
    consumed up to ``ready_pos``), so neither receiving nor reading moves the bytes
    already buffered.
    """

    ready: list[bytes] = field(default_factory=list)
    ready_head: int = 0
    ready_pos: int = 0
    ready_bytes: int = 0
    read_offset: int = 0  # bytes consumed by the application
    highest_offset: int = 0  # largest end offset seen
    final_size: int | None = None
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # sorted out-of-order data
    max_data: int = 0  # our advertised MAX_STREAM_DATA
    window: int = 0
    window_max: int = 0
    last_update_time: float = 0.0
    reset_code: int | None = None
    stop_sending_code: int | None = None
    stop_sending_pending: bool = False
    fin_read: bool = False

    @property
    def contiguous_end(self) -> int:
        return self.read_offset + self.ready_bytes

    @property
    def readable(self) -> int:
        return self.ready_bytes

    def at_eof(self) -> bool:
        return self.final_size is not None and self.contiguous_end == self.final_size

    def receive(self, offset: int, data: bytes | memoryview, fin: bool) -> int:
        """Take a STREAM frame; returns by how much ``highest_offset`` grew."""
        end = offset + len(data)
        if self.final_size is not None:
            if end > self.final_size or (fin and end != self.final_size):
                raise QuicError(FINAL_SIZE_ERROR, "data beyond the final size")
        if fin:
            if end < self.highest_offset:
                raise QuicError(FINAL_SIZE_ERROR, "final size below received data")
            self.final_size = end
        if end > self.max_data:
            raise QuicError(FLOW_CONTROL_ERROR, "stream flow control limit exceeded")
        grown = max(0, end - self.highest_offset)
        if grown:
            self.highest_offset = end
        if self.reset_code is not None or self.stop_sending_code is not None:
            return grown
        contiguous = self.read_offset + self.ready_bytes
        if end <= contiguous or not data:
            return grown
        if offset <= contiguous:
            piece = bytes(data[contiguous - offset :])
            self.ready.append(piece)
            self.ready_bytes += len(piece)
            if self.chunks:
                self._drain_chunks()
        else:
            insort(self.chunks, (offset, bytes(data)))
        return grown

    def _drain_chunks(self) -> None:
        chunks = self.chunks
        while chunks:
            offset, data = chunks[0]
            contiguous = self.read_offset + self.ready_bytes
            if offset > contiguous:
                break
            chunks.pop(0)
            if offset + len(data) > contiguous:
                piece = data[contiguous - offset :]
                self.ready.append(piece)
                self.ready_bytes += len(piece)

    def read(self, max_bytes: int = -1) -> bytes:
        available = self.ready_bytes
        n = available if max_bytes < 0 else min(max_bytes, available)
        if n <= 0:
            if available == 0 and self.at_eof():
                self.fin_read = True  # nothing left to read and the end is known
            return b""
        ready = self.ready
        head = self.ready_head
        pos = self.ready_pos
        parts: list[bytes] = []
        need = n
        while need:
            chunk = ready[head]
            left = len(chunk) - pos
            if left <= need:
                parts.append(chunk[pos:] if pos else chunk)
                need -= left
                head += 1
                pos = 0
            else:
                parts.append(chunk[pos : pos + need])
                pos += need
                need = 0
        if head >= 256 and head * 2 >= len(ready):
            del ready[:head]
            head = 0
        self.ready_head = head
        self.ready_pos = pos
        self.ready_bytes -= n
        self.read_offset += n
        if not self.ready_bytes:
            ready.clear()
            self.ready_head = 0
            self.ready_pos = 0
            if self.at_eof():
                self.fin_read = True
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def should_update_window(self) -> bool:
        if self.final_size is not None:
            return False
        return self.max_data - self.read_offset <= self.window // 2

    def new_limit(self, now: float, srtt: float) -> int:
        """Grow the window when updates come faster than two RTTs (BDP autotuning)."""
        if self.last_update_time and now - self.last_update_time < 2 * srtt:
            self.window = min(self.window * 2, self.window_max)
        self.last_update_time = now
        self.max_data = self.read_offset + self.window
        return self.max_data

    def on_reset(self, code: int, final_size: int) -> int:
        if self.final_size is not None and self.final_size != final_size:
            raise QuicError(FINAL_SIZE_ERROR, "reset final size differs")
        if final_size < self.highest_offset:
            raise QuicError(FINAL_SIZE_ERROR, "reset final size below received data")
        if final_size > self.max_data:
            raise QuicError(FLOW_CONTROL_ERROR, "reset final size beyond flow limit")
        grown = final_size - self.highest_offset
        self.highest_offset = final_size
        self.final_size = final_size
        if self.reset_code is None:
            self.reset_code = code
        self.ready = []
        self.ready_head = 0
        self.ready_pos = 0
        self.ready_bytes = 0
        self.chunks = []
        return grown


@dataclass(slots=True)
class Stream:
    stream_id: int
    send: SendStream | None
    recv: RecvStream | None
    local: bool  # opened by us
