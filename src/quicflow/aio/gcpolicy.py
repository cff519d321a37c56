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

A busy endpoint's youngest generation: a handshake's state (hundreds of tracked objects)
lives until its connection ends (draining: 3 PTO), so with Python's default threshold of
700 net allocations a server at ~1,000 handshakes per second collected generation 0
every few handshakes, promoted every live connection's state to the older generations
and ran full collections over it: 9-12 % of the server's CPU per handshake at 128
concurrent handshakes (``server_gc_in_loop`` of ``bench/handshake.py``). When the first
runner of the process starts, the policy raises the generation-0 threshold to
:data:`GEN0_THRESHOLD` (20,000), above what the live set of short connections swings by,
so objects of finished handshakes die by reference count before a collection walks them
(0.06 -> 0.003 ms per handshake there). Only Python's default threshold is raised: an
application that set its own keeps it. Reference cycles wait at most that many
allocations longer; each collection walks only the young objects still alive.

That threshold then follows the live connections: a young collection walks the young
objects still alive, which are mostly the state of the connections opened since the last
one (~80-100 tracked objects each), so with a fixed threshold below the live set (128
concurrent handshakes plus the draining ones: ~600 connections, ~60,000 objects) each
collection walked ~20,000 live objects (5-8 ms on this machine) every few hundred
handshakes: ~0.02 ms, 3-4 % of a server handshake. Whenever the live connections reach
``threshold / GEN0_PER_CONNECTION``, the threshold becomes twice ``GEN0_PER_CONNECTION``
times them (at most :data:`GEN0_MAX`; so it stays between one and two times that per
connection, set once per doubling), and it comes down again when they fall below a
quarter of where it was raised: the collector's work per allocation stays O(1) as
the live set grows, and reference cycles wait at most in proportion to what is held.
Changing a threshold collects nothing; a threshold the application set in between is
left alone from then on.

After a burst the memory goes back. A connection's own state dies by reference count
when it ends (the library breaks its cycles then), but what is left in cycles (an
application's objects, a handler's exception and its traceback) waits for a full
collection, which the raised thresholds put off; and freed memory stays in the heap.
So when the live connections fall below a quarter of their peak since the last
release, once that peak reached :data:`RELEASE_FROM`, the policy releases what it
froze, collects once (walking at most a quarter of the peak's live state, plus the
dead) and has the malloc policy give the freed heap back
(``mallocpolicy.POLICY.release``); the peak restarts from the live count, so the cost
is O(1) amortised per connection ended, as for the freezes.

Process-wide, like the collector itself: every :class:`EndpointRunner` reports its start
and the connections it adds and forgets. ``set_enabled(False)`` turns the policy off
(e.g. for an application that manages the collector itself) and puts the default
threshold back if the policy raised it.
"""

from __future__ import annotations

import gc

from .mallocpolicy import POLICY as MALLOC_POLICY

FREEZE_FROM = 1024
#: Python's default generation-0 threshold, and the one the policy sets instead
PYTHON_GEN0_THRESHOLD = 700
GEN0_THRESHOLD = 20_000
#: the generation-0 threshold per live connection once they outgrow GEN0_THRESHOLD
GEN0_PER_CONNECTION = 128
GEN0_MAX = 1 << 17  # 131,072
#: the live connections a process must have reached for a fall to a quarter of them to
#: collect and give the freed memory back
RELEASE_FROM = FREEZE_FROM


class FreezeOnGrowth:
    __slots__ = ("enabled", "live", "frozen_at", "freezes", "unfreezes", "raised", "gen0",
                 "gen0_at", "gen0_next", "gen0_changes", "peak", "releases")

    def __init__(self) -> None:
        self.enabled = True
        self.live = 0  # connections held by the runners of this process
        self.frozen_at = 0  # connections held at the last freeze (0: nothing frozen)
        self.freezes = 0
        self.unfreezes = 0
        self.raised = False  # the generation-0 threshold was raised by the policy
        self.gen0 = 0  # the generation-0 threshold the policy set last (while raised)
        self.gen0_at = 0  # live connections when it was raised above GEN0_THRESHOLD
        self.gen0_next = GEN0_THRESHOLD // GEN0_PER_CONNECTION  # raise it again here
        self.gen0_changes = 0
        self.peak = 0  # the most live connections since the last release
        self.releases = 0

    def runner_started(self) -> None:
        """A runner starts: raise Python's default generation-0 threshold (once)."""
        if self.enabled and not self.raised:
            gen0, gen1, gen2 = gc.get_threshold()
            if gen0 == PYTHON_GEN0_THRESHOLD:
                gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
                self.raised = True
                self.gen0 = GEN0_THRESHOLD
                self._follow_live()

    def added(self) -> None:
        self.live += 1
        if self.live > self.peak:
            self.peak = self.live
        if self.live >= self.gen0_next and self.raised:
            self._follow_live()
        if self.enabled and self.live >= max(FREEZE_FROM, 2 * self.frozen_at):
            self._freeze()

    def removed(self) -> None:
        self.live -= 1
        if self.gen0_at and self.live < self.gen0_at // 4:
            self._follow_live()
        if self.frozen_at and self.live < self.frozen_at // 4:
            self._unfreeze()
        if self.peak >= RELEASE_FROM and self.live < self.peak // 4:
            self._release()

    def _unfreeze(self) -> None:
        gc.unfreeze()
        self.frozen_at = 0
        self.unfreezes += 1

    def _release(self) -> None:
        """The live connections fell below a quarter of their peak: collect what the
        ended ones left in cycles and give the freed heap back (see the module text)."""
        self.peak = self.live
        self.releases += 1
        if self.enabled:
            if self.frozen_at:  # (the connections frozen then are mostly gone)
                self._unfreeze()
            gc.collect()
        MALLOC_POLICY.release()

    def _follow_live(self) -> None:
        """The generation-0 threshold for ``live`` connections (see the module text)."""
        gen0, gen1, gen2 = gc.get_threshold()
        if gen0 != self.gen0:  # the application set its own since: keep it
            self.raised = False
            self.gen0_at = 0
            return
        wanted = min(GEN0_MAX, max(GEN0_THRESHOLD, 2 * GEN0_PER_CONNECTION * self.live))
        self.gen0_at = self.live if wanted > GEN0_THRESHOLD else 0
        self.gen0_next = wanted // GEN0_PER_CONNECTION if wanted < GEN0_MAX else 1 << 62
        if wanted != gen0:
            gc.set_threshold(wanted, gen1, gen2)
            self.gen0 = wanted
            self.gen0_changes += 1

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
    if not enabled and POLICY.raised:
        gen0, gen1, gen2 = gc.get_threshold()
        if gen0 == POLICY.gen0:  # (not changed by the application since)
            gc.set_threshold(PYTHON_GEN0_THRESHOLD, gen1, gen2)
        POLICY.raised = False
        POLICY.gen0_at = 0
