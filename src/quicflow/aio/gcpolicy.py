"""Keep Python's cyclic garbage collector off the per-handshake path of a big server.

A full (generation 2) collection walks every tracked object of the process. With 10,000
connections held that is over a million objects, and collections triggered by the
allocations of new handshakes made each new handshake cost 4.65 ms of server CPU instead
of 1.30 ms with none held (1.25 ms with the collector off; ``bench/handshake.py --idle
10000``, bench/RESULTS.md).

The policy: whenever the number of live connections in this process doubles past
``FREEZE_FROM`` (1,024, 2,048, 4,096, ...), collect once and move every surviving object
into the collector's permanent generation (:func:`gc.freeze`), which later collections do
not walk. The cost is one collection per doubling, so O(1) amortised per connection.
Frozen objects are still freed by reference counting; only reference cycles among them
wait. To bound those, the frozen set is released (:func:`gc.unfreeze`, then collected
normally) when the connections fall below a quarter of what they were at the last freeze.

Process-wide, like the collector itself: every :class:`EndpointRunner` reports the
connections it adds and forgets. ``set_enabled(False)`` turns the policy off (e.g. for an
application that manages the collector itself).
"""

from __future__ import annotations

import gc

FREEZE_FROM = 1024


class FreezeOnGrowth:
    __slots__ = ("enabled", "live", "frozen_at", "freezes", "unfreezes")

    def __init__(self) -> None:
        self.enabled = True
        self.live = 0  # connections held by the runners of this process
        self.frozen_at = 0  # connections held at the last freeze (0: nothing frozen)
        self.freezes = 0
        self.unfreezes = 0

    def added(self) -> None:
        self.live += 1
        if self.enabled and self.live >= max(FREEZE_FROM, 2 * self.frozen_at):
            self._freeze()

    def removed(self) -> None:
        self.live -= 1
        if self.frozen_at and self.live < self.frozen_at // 4:
            gc.unfreeze()
            self.frozen_at = 0
            self.unfreezes += 1

    def _freeze(self) -> None:
        gc.unfreeze()  # cycles that died among the previously frozen objects go now
        gc.collect()
        gc.freeze()
        self.frozen_at = self.live
        self.freezes += 1


POLICY = FreezeOnGrowth()


def set_enabled(enabled: bool) -> None:
    """Turn the policy on or off for this process (off releases what it froze)."""
    POLICY.enabled = enabled
    if not enabled and POLICY.frozen_at:
        gc.unfreeze()
        POLICY.frozen_at = 0
