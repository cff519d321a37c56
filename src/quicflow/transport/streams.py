"""Stream send and receive buffers (RFC 9000 §2-§4), plain data for snapshots."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from .errors import FINAL_SIZE_ERROR, FLOW_CONTROL_ERROR, STREAM_STATE_ERROR, QuicError
from .rangeset import RangeSet

#: A write of at least this many bytes is kept as its own chunk (``bytes`` uncopied).
CHUNK_MIN = 1 << 16
#: Smaller writes are copied into a trailing chunk of at most this many bytes.
CHUNK_MAX = 1 << 20
#: What one stored out-of-order piece is charged against the receive window, at least:
#: so a stream holds at most window / PIECE_COST pieces, and tiny pieces cannot make the
#: bookkeeping outgrow the bytes the peer was allowed to send.
PIECE_COST = 1024
#: Most separate ranges (gaps) of out-of-order data per stream: a new piece is a binary
#: search plus a list insertion that moves at most this many entries.
MAX_RANGES = 4096
_NO_LIMIT = 1 << 62


class ReassemblyFull(Exception):
    """An out-of-order piece does not fit the reassembly budget. Nothing was changed:
    the packet that carried it is dropped unacknowledged, so the peer sends it again
    (by then the gap before it may be filled)."""


@dataclass(slots=True, eq=False)
class SendStream:
    """Bytes the application wrote, from the first unacknowledged offset on.

    The bytes are held as a list of chunks (``chunks``, ``chunk_ends[i]`` the stream
    offset where ``chunks[i]`` ends), not one growing buffer: a write of ``CHUNK_MIN``
    bytes or more keeps the caller's ``bytes`` object as it is (no copy), smaller writes
    are copied into a trailing ``bytearray`` of at most ``CHUNK_MAX`` bytes, and an
    acknowledgement drops whole chunks from the front. So neither writing nor
    acknowledging moves or reallocates the bytes already buffered (a growing buffer
    did, and with many connections each write paid fresh pages and copies). A chunk
    is never empty; the first one starts ``buffer_start`` bytes before ``acked_offset``.
    """

    chunks: list[bytes | bytearray] = field(default_factory=list)
    chunk_ends: list[int] = field(default_factory=list)
    buffer_start: int = 0  # index in ``chunks[0]`` of offset ``acked_offset``
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
        n = len(data)
        if n:
            self.write_offset += n
            chunks = self.chunks
            if n >= CHUNK_MIN:
                chunks.append(data if type(data) is bytes else bytes(data))
                self.chunk_ends.append(self.write_offset)
            elif chunks and type(tail := chunks[-1]) is bytearray and len(tail) + n <= CHUNK_MAX:
                tail += data
                self.chunk_ends[-1] = self.write_offset
            else:
                chunks.append(bytearray(data))
                self.chunk_ends.append(self.write_offset)
        if fin:
            self.fin_written = True

    def chunk_at(self, offset: int) -> tuple[bytes | bytearray, int, int]:
        """(chunk, index in it of ``offset``, stream offset where it ends) for a written,
        unacknowledged ``offset``."""
        ends = self.chunk_ends
        i = bisect_right(ends, offset)
        chunk = self.chunks[i]
        end = ends[i]
        return chunk, offset - (end - len(chunk)), end

    def has_data_to_send(self) -> bool:
        if self.reset_code is not None:
            return False
        if self.lost.starts or self.fin_lost:  # (not RangeSet.__bool__: a call per test)
            return True
        if self.next_offset < self.write_offset:
            return self.next_offset < self.max_data
        # a FIN alone only once every byte before it went (else it waits with them)
        return self.fin_written and not self.fin_sent

    def is_flow_blocked(self) -> bool:
        return self.next_offset < self.write_offset and self.next_offset >= self.max_data

    def _slice(self, start: int, end: int) -> bytes:
        chunk, at, chunk_end = self.chunk_at(start)
        if end <= chunk_end:
            return bytes(chunk[at : at + end - start])
        parts = [chunk[at:]]
        while chunk_end < end:
            chunk, at, chunk_end = self.chunk_at(chunk_end)
            parts.append(chunk[: len(chunk) - max(0, chunk_end - end)])
        return b"".join(parts)

    def next_chunk(self, max_len: int, conn_credit: int) -> tuple[int, bytes, bool, int] | None:
        """Next (offset, data, fin, new_bytes) to send; retransmissions come first.

        ``new_bytes`` is how much of the chunk counts against connection flow control
        (0 for retransmissions).
        """
        if self.reset_code is not None or max_len <= 0:
            return None
        lost = self.lost
        if lost.starts and lost.starts[0] < self.acked_offset:  # (no RangeSet.__bool__)
            lost.shift_below(self.acked_offset)  # acknowledged since: nothing to resend
        if lost.starts:
            start = lost.starts[0]
            end = min(lost.ends[0], start + max_len)
            lost.subtract(start, end)
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

    def on_acked(self, offset: int, length: int, fin: bool) -> int:
        """Take an acknowledged range; returns by how much ``acked_offset`` moved (the
        written bytes this releases), 0 on a reset stream (its buffer is gone)."""
        if fin:
            self.fin_acked = True
        end = offset + length
        released = 0
        acked_offset = self.acked_offset
        if end > acked_offset:
            acked = self.acked
            if self.lost.starts:  # a late ACK for data declared lost: do not resend it
                self.lost.subtract(offset, end)
            if offset <= acked_offset and not acked.starts:
                new_acked = end  # in order, nothing acknowledged above: the usual case
            else:
                # (a FIN alone, at the end, adds nothing: the set may stay empty)
                acked.add(max(offset, acked_offset), end)
                new_acked = -1
                if acked.starts and acked.starts[0] <= acked_offset < acked.ends[0]:
                    new_acked = acked.ends[0]
                    acked.shift_below(new_acked)
            if new_acked >= 0:
                released = new_acked - acked_offset
                self.acked_offset = new_acked
                ends = self.chunk_ends
                if ends:
                    if ends[0] <= new_acked:  # whole chunks acknowledged: drop them
                        drop = bisect_right(ends, new_acked)
                        del self.chunks[:drop]
                        del ends[:drop]
                    if ends:
                        self.buffer_start = new_acked - (ends[0] - len(self.chunks[0]))
                    else:
                        self.buffer_start = 0
        return released if self.reset_code is None else 0

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
            keep_to = self.next_offset
            ends = self.chunk_ends
            i = bisect_right(ends, keep_to)
            chunk = self.chunks[i]
            keep = keep_to - (ends[i] - len(chunk))
            if keep_to == self.acked_offset:  # nothing unacknowledged stays
                i = keep = 0
            if keep:
                self.chunks[i] = bytearray(chunk[:keep])
                ends[i] = keep_to
                i += 1
            del self.chunks[i:]
            del ends[i:]
            if not ends:
                self.buffer_start = 0
            self.write_offset = keep_to
        if self.fin_written and not self.fin_sent:
            self.fin_written = False
        return self.write_offset

    def compact(self) -> None:
        """Drop the acknowledged bytes still held at the front of the buffer."""
        if self.buffer_start:
            self.chunks[0] = bytearray(self.chunks[0][self.buffer_start :])
            self.buffer_start = 0

    def reset(self, code: int) -> int:
        """Abandon the stream; returns the written bytes this releases."""
        if self.reset_code is None and not self.is_complete():
            released = self.write_offset - self.acked_offset
            self.reset_code = code
            self.reset_pending = True
            self.chunks = []
            self.chunk_ends = []
            self.buffer_start = 0
            self.lost = RangeSet()
            return released
        return 0


@dataclass(slots=True, eq=False)
class RecvStream:
    """Received bytes not yet read, out-of-order pieces and receive flow control.

    In-order data is kept as a list of chunks (``ready[ready_head:]``, the first one
    consumed up to ``ready_pos``), so neither receiving nor reading moves the bytes
    already buffered.

    Out-of-order data is stored once: ``chunk_ranges`` holds the byte ranges stored
    above the contiguous end, ``chunks`` one piece per uncovered part of a frame, keyed
    by its offset (pieces never overlap and tile ``chunk_ranges`` exactly). A frame costs
    a binary search plus one piece per gap it fills; draining pops pieces by offset and
    drops all the ranges it passed at once. Each piece is charged at least
    :data:`PIECE_COST` against the stream's window (and the caller's connection budget):
    a piece over the budget raises :class:`ReassemblyFull` before anything changes.
    """

    ready: list[bytes] = field(default_factory=list)
    ready_head: int = 0
    ready_pos: int = 0
    ready_bytes: int = 0
    read_offset: int = 0  # bytes consumed by the application
    highest_offset: int = 0  # largest end offset seen
    final_size: int | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)  # out-of-order pieces by offset
    chunk_ranges: RangeSet = field(default_factory=RangeSet)  # what ``chunks`` covers
    chunk_bytes: int = 0  # bytes in ``chunks``
    chunk_cost: int = 0  # their charge: sum of max(len(piece), PIECE_COST)
    #: the overcharge (chunk_cost - chunk_bytes) the last pass over the pieces left
    #: (``_make_room``: a pass costs O(pieces) and is made again only once it has grown)
    joined_over: int = 0
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

    @property
    def out_of_order_bytes(self) -> int:
        """Bytes received above a gap, waiting for it to be filled."""
        return self.chunk_bytes

    @property
    def out_of_order_pieces(self) -> int:
        return len(self.chunks)

    def at_eof(self) -> bool:
        return self.final_size is not None and self.contiguous_end == self.final_size

    def receive(
        self, offset: int, data: bytes | memoryview, fin: bool, budget: int = _NO_LIMIT
    ) -> int:
        """Take a STREAM frame; returns by how much ``highest_offset`` grew.

        ``budget`` is how much more out-of-order charge the caller (the connection)
        allows. Raises :class:`ReassemblyFull` (with no change made) for an out-of-order
        piece over the budget.
        """
        end = offset + len(data)
        if self.final_size is not None:
            if end > self.final_size or (fin and end != self.final_size):
                raise QuicError(FINAL_SIZE_ERROR, "data beyond the final size")
        if fin and end < self.highest_offset:
            raise QuicError(FINAL_SIZE_ERROR, "final size below received data")
        if end > self.max_data:
            raise QuicError(FLOW_CONTROL_ERROR, "stream flow control limit exceeded")
        contiguous = self.read_offset + self.ready_bytes
        if end > contiguous and data and self.reset_code is None and (
            self.stop_sending_code is None
        ):
            if offset > contiguous:
                self._store(offset, data, end, budget)
            elif self.chunks:
                self._fill(offset, data, end, contiguous)
            else:
                piece = bytes(data[contiguous - offset :])
                self.ready.append(piece)
                self.ready_bytes += len(piece)
        return self._advance(end, fin)

    def receive_pieces(
        self, offset: int, pieces: list[bytes], fin: bool, budget: int = _NO_LIMIT
    ) -> int:
        """``receive(offset, b"".join(pieces), fin, budget)``: the same checks, errors and
        result, for data given as non-empty pieces that follow each other (the batch
        path's run of one stream through several GRO buffers). In order, the pieces go
        to the reader as they are (``read`` joins what it returns, as it would the
        frames'); anything else takes ``receive`` with the pieces joined."""
        size = 0
        for piece in pieces:
            size += len(piece)
        end = offset + size
        if (offset != self.read_offset + self.ready_bytes or self.chunks
                or self.final_size is not None or end > self.max_data
                or (fin and end < self.highest_offset)
                or self.reset_code is not None or self.stop_sending_code is not None):
            return self.receive(offset, b"".join(pieces), fin, budget)
        self.ready.extend(pieces)
        self.ready_bytes += size
        return self._advance(end, fin)

    def _advance(self, end: int, fin: bool) -> int:
        """A frame that ended at ``end`` was taken: its final size, and by how much
        ``highest_offset`` grew (what ``receive`` returns)."""
        if fin:
            self.final_size = end
        grown = end - self.highest_offset
        if grown > 0:
            self.highest_offset = end
            return grown
        return 0

    def _store(self, offset: int, data: bytes | memoryview, end: int, budget: int) -> None:
        """Keep the parts of an out-of-order frame not stored yet."""
        ranges = self.chunk_ranges
        starts, ends = ranges.starts, ranges.ends
        n = len(starts)
        if not n or offset >= ends[-1]:  # the common case: beyond everything stored
            if n >= MAX_RANGES and offset > ends[-1]:
                raise ReassemblyFull("too many gaps in the out-of-order data")
            size = end - offset
            cost = size if size > PIECE_COST else PIECE_COST
            if cost > min(budget, self.max_data - self.read_offset - self.chunk_cost):
                self._make_room(cost, budget, offset, end)
            self.chunks[offset] = data if type(data) is bytes else bytes(data)
            self.chunk_bytes += size
            self.chunk_cost += cost
            if n and offset == ends[-1]:
                ends[-1] = end
            else:
                starts.append(offset)
                ends.append(end)
            return
        i = bisect_right(ends, offset)  # first range ending after ``offset``
        if i < n and starts[i] <= offset and end <= ends[i]:
            return  # a duplicate: every byte is stored already
        if n >= MAX_RANGES:  # only frames that touch a stored range (no new gap)
            j = bisect_left(ends, offset)
            if j >= n or starts[j] > end:
                raise ReassemblyFull("too many gaps in the out-of-order data")
        gaps: list[tuple[int, int]] = []
        cost = 0
        pos = offset
        while pos < end:
            if i < n and starts[i] <= pos:
                pos = ends[i]
                i += 1
                continue
            stop = end if i >= n else min(end, starts[i])
            gaps.append((pos, stop))
            cost += max(stop - pos, PIECE_COST)
            pos = stop
        if cost > min(budget, self.max_data - self.read_offset - self.chunk_cost):
            self._make_room(cost, budget, offset, end)
        chunks = self.chunks
        stored = 0
        for start, stop in gaps:
            if start == offset and stop == end and type(data) is bytes:
                chunks[start] = data
            else:
                chunks[start] = bytes(data[start - offset : stop - offset])
            stored += stop - start
        self.chunk_bytes += stored
        self.chunk_cost += cost
        ranges.add(offset, end)

    def _make_room(self, cost: int, budget: int, offset: int, end: int) -> None:
        """Room for a new piece ``[offset, end)`` charged ``cost`` that the stored pieces'
        charge leaves no room for. Join the small stored pieces
        (:meth:`_join_runs`) if that frees enough. Else a piece that touches a
        stored range (it adds no gap) is taken anyway, the small pieces joined; only a
        piece that opens a new gap raises :class:`ReassemblyFull`, with nothing changed.

        The charge of a piece under ``PIECE_COST`` is more than its bytes: a peer that
        resends in pieces of a few hundred bytes (picoquic does, under loss) filled a
        stream's charge with bytes well within the flow-control window, and every later
        piece was refused, down to the 9 bytes between two stored ranges; with the gap's
        bytes always in a packet that also held a refused piece, the stream never moved
        again (RFC 9000 §2.2: data received out of order is buffered up to the advertised
        limit). A piece that touches a stored range costs no new gap, and its bytes are
        within the window (flow control); joined, the pieces are charged their bytes plus
        at most ``PIECE_COST`` per stored range, so they stay bounded by the window and
        MAX_RANGES. A pass over the pieces is made only when the overcharge has grown
        since the last one (``joined_over``), so neither a packet full of tiny frames nor
        a stream of refused ones makes each frame walk every stored piece."""
        starts, ends = self.chunk_ranges.starts, self.chunk_ranges.ends
        over = self.chunk_cost - self.chunk_bytes  # the most a pass can free
        if over < self.joined_over:
            self.joined_over = over  # pieces were read since the last pass
        # A pass walks every piece. It is made only when the overcharge grew by more than
        # PIECE_COST per 16 stored pieces since the last pass: each piece adds less than
        # PIECE_COST, so a pass is paid for by n/16 new pieces, and a peer's tiny frames
        # (each packet full of them, or each refused) cost O(1) each, amortized.
        worth = over - self.joined_over > PIECE_COST * (1 + len(self.chunks) // 16)
        j = bisect_left(ends, offset)  # the first range that ends at or after ``offset``
        if j < len(starts) and starts[j] <= end:  # touches it: no new gap
            if worth:
                self._join_runs(*self._small_runs())
            return
        if worth:
            short = cost - min(budget, self.max_data - self.read_offset - self.chunk_cost)
            if short <= over:
                runs, saving = self._small_runs()
                after = self.chunk_cost - saving
                if cost <= min(budget + saving, self.max_data - self.read_offset - after):
                    self._join_runs(runs, saving)
                    return
            self.joined_over = over  # (refused: nothing else changes, the charge stays)
        raise ReassemblyFull("out-of-order data over the reassembly budget")

    def _small_runs(self) -> tuple[list[tuple[int, list[int]]], int]:
        """The runs :meth:`_join_runs` joins, (offset of the first piece, offsets of the
        pieces), and by how much joining them lowers ``chunk_cost``: in each stored range
        a piece under ``PIECE_COST`` and the pieces after it while the run is under
        ``PIECE_COST`` (so each joined piece but a range's last is charged its bytes, and
        a byte is copied again only when a small piece arrives in front of it)."""
        chunks = self.chunks
        runs: list[tuple[int, list[int]]] = []
        saving = 0
        for start, stop in zip(self.chunk_ranges.starts, self.chunk_ranges.ends, strict=True):
            pos = start
            while pos < stop:
                size = len(chunks[pos])
                if size >= PIECE_COST:
                    pos += size
                    continue
                run = [pos]
                charged = PIECE_COST  # what the run's pieces are charged apart
                pos += size
                while size < PIECE_COST and pos < stop:
                    run.append(pos)
                    step = len(chunks[pos])
                    charged += step if step > PIECE_COST else PIECE_COST
                    size += step
                    pos += step
                if len(run) > 1:
                    runs.append((run[0], run))
                    saving += charged - (size if size > PIECE_COST else PIECE_COST)
        return runs, saving

    def _join_runs(self, runs: list[tuple[int, list[int]]], saving: int) -> None:
        """Join each run of :meth:`_small_runs` into one piece (the stored bytes and
        ranges stay as they are) and lower the charge by its ``saving``; then the pass's
        overcharge is what the next pass is measured from."""
        chunks = self.chunks
        for first, run in runs:
            chunks[first] = b"".join([chunks.pop(at) for at in run])
        self.chunk_cost -= saving
        self.joined_over = self.chunk_cost - self.chunk_bytes

    def _fill(self, offset: int, data: bytes | memoryview, end: int, contiguous: int) -> None:
        """In-order data while pieces are stored: take the new bytes and every stored
        range they reach, in order; ranges passed are dropped in one step."""
        ranges = self.chunk_ranges
        starts, ends = ranges.starts, ranges.ends
        chunks = self.chunks
        ready = self.ready
        n = len(starts)
        i = 0
        pos = contiguous
        freed = 0
        freed_cost = 0
        while True:
            if i < n and starts[i] <= pos:  # a stored range starts here: take it
                stop = ends[i]
                while pos < stop:
                    piece = chunks.pop(pos)
                    size = len(piece)
                    ready.append(piece)
                    pos += size
                    freed += size
                    freed_cost += size if size > PIECE_COST else PIECE_COST
                i += 1
                continue
            if pos >= end:
                break
            stop = end if i >= n else min(end, starts[i])
            ready.append(bytes(data[pos - offset : stop - offset]))
            pos = stop
        if i:
            del starts[:i]
            del ends[:i]
        self.chunk_bytes -= freed
        self.chunk_cost -= freed_cost
        self.ready_bytes += pos - contiguous

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
        self.chunks = {}
        self.chunk_ranges = RangeSet()
        self.chunk_bytes = 0
        self.chunk_cost = 0
        return grown


@dataclass(slots=True, eq=False)
class Stream:
    stream_id: int
    send: SendStream | None
    recv: RecvStream | None
    local: bool  # opened by us
