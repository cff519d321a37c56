"""Single use of snapshots: the record that refuses replays (DESIGN.md, migration).

Why: restoring a snapshot of a connection that has moved on (an older capture, or the
same one a second time) makes the copy seal 1-RTT packets with packet numbers that were
already used under the same key: AES-GCM nonce reuse. So a connection may only be
restored from its *latest* capture, once.

How: every capture gets the connection's next serial (``capture_id`` random per
connection, ``serial`` counting up; both in the authenticated snapshot header, with the
capturer's wall-clock time) and the captured connection is released, so it never sends
again. A :class:`SnapshotGuard` keeps, per ``capture_id``, the lowest serial it still
accepts: a capture of serial s (noted where it is taken) raises it to s, a restore of s
to s + 1, so only the latest capture restores, once. It also refuses snapshots older
than ``max_age``; entries older than that are dropped (a snapshot they would refuse is
refused by its age anyway), and when ``max_entries`` live entries exist, further
restores are refused rather than an entry evicted early. The guard is plain data: a
process hands it to its successor together with the connections (``export``/``merge``),
so the record follows the chain of processes that held the connection.

Limits (documented in README): the guarantee holds among the processes that share the
record (a chain of handoffs, or hosts that pass it along with the snapshots) and hold
the sealing key; two independent restorers given copies of one sealed snapshot, each
with its own record, are not detected — keep the key to one chain. Wall clocks of
hosts must agree within ``max_skew``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from .codec import SnapshotError

DEFAULT_MAX_AGE = 300.0
DEFAULT_MAX_SKEW = 5.0
DEFAULT_MAX_ENTRIES = 1_000_000


@dataclass(slots=True, eq=False)
class SnapshotGuard:
    """Lowest acceptable serial per connection (capture id), with the wall time it was
    recorded."""

    max_age: float = DEFAULT_MAX_AGE
    max_skew: float = DEFAULT_MAX_SKEW
    max_entries: int = DEFAULT_MAX_ENTRIES
    latest: dict[str, tuple[int, float]] = field(default_factory=dict)
    pruned_at: float = -math.inf

    def check(self, header: dict[str, Any], wall_time: float) -> tuple[str, int]:
        """Raise :class:`SnapshotError` unless the snapshot of ``header`` may be restored
        at ``wall_time``; returns ``(capture_id, serial)``. Records nothing."""
        capture_id, serial = header.get("capture_id"), header.get("serial")
        taken = header.get("wall_time")
        if type(capture_id) is not str or len(capture_id) != 32 or type(serial) is not int:
            raise SnapshotError("snapshot header lacks its capture id and serial")
        if type(taken) is not float or not math.isfinite(taken):
            raise SnapshotError("snapshot header lacks its capture time (wall clock)")
        if taken > wall_time + self.max_skew:
            raise SnapshotError("snapshot was taken in the future (clock skew?)")
        if wall_time - taken > self.max_age:
            raise SnapshotError(
                f"snapshot is too old ({wall_time - taken:.0f} s > {self.max_age:.0f} s)"
            )
        seen = self.latest.get(capture_id)
        if seen is not None and serial < seen[0]:
            raise SnapshotError(
                f"snapshot replayed: serial {serial} of this connection was restored already "
                f"or is older than its latest capture (lowest acceptable serial {seen[0]})"
            )
        return capture_id, serial

    def record_capture(self, capture_id: str, serial: int, wall_time: float) -> None:
        """Serial ``serial`` of ``capture_id`` was captured: older ones are refused."""
        self._raise_floor(capture_id, serial, wall_time)

    def record_restore(self, capture_id: str, serial: int, wall_time: float) -> None:
        """Serial ``serial`` of ``capture_id`` was restored: it and older are refused."""
        self._raise_floor(capture_id, serial + 1, wall_time)

    def _raise_floor(self, capture_id: str, floor: int, wall_time: float) -> None:
        if wall_time - self.pruned_at > 1.0 or len(self.latest) >= self.max_entries:
            self.prune(wall_time)  # at most once a second: O(1) per record on average
        seen = self.latest.get(capture_id)
        if seen is None and len(self.latest) >= self.max_entries:
            raise SnapshotError("replay record is full: refusing to restore more connections")
        if seen is None or floor > seen[0]:
            self.latest[capture_id] = (floor, wall_time)

    def prune(self, wall_time: float) -> None:
        self.pruned_at = wall_time
        horizon = wall_time - self.max_age - self.max_skew
        stale = [k for k, (_, t) in self.latest.items() if t < horizon]
        for k in stale:
            del self.latest[k]

    # ------------------------------------------------------------------ hand along

    def export(self) -> bytes:
        """The record as JSON bytes (it holds no secret; send it with the snapshots)."""
        return json.dumps({k: list(v) for k, v in self.latest.items()}).encode()

    def merge(self, data: bytes) -> None:
        """Take over a record from ``export`` (keeping the higher serial per connection)."""
        try:
            doc = json.loads(data)
        except ValueError:
            raise SnapshotError("replay record is not valid JSON") from None
        if type(doc) is not dict:
            raise SnapshotError("replay record is not an object")
        for key, value in doc.items():
            if (type(value) is not list or len(value) != 2 or type(value[0]) is not int
                    or type(value[1]) not in (int, float)):
                raise SnapshotError("malformed replay record entry")
            seen = self.latest.get(key)
            if seen is None or value[0] > seen[0]:
                self.latest[key] = (value[0], float(value[1]))
