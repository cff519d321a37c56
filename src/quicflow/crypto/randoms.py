"""Random bytes from the kernel read in batches: one ``os.urandom`` per 64 values.

For values made per connection or per handshake (CID random parts, token nonces, a TLS
server's ServerHello random and ticket entropy): each value is handed out once, and a
forked child never hands out what its parent holds.
"""

from __future__ import annotations

import os

#: values of one length read from the kernel at once (one getrandom call per 64)
RANDOM_BATCH = 64
#: unused values by length; ``list.pop`` hands each out once (atomic under the GIL, so
#: threads never share one); cleared in a forked child, so that parent and child never
#: hand out the same bytes
_SPARE: dict[int, list[bytes]] = {}
os.register_at_fork(after_in_child=_SPARE.clear)


def random_part(length: int) -> bytes:
    """``length`` random bytes (from ``os.urandom``, read in batches)."""
    try:
        return _SPARE[length].pop()
    except (KeyError, IndexError):  # (empty: refill; a thread racing us gets its own)
        if length <= 0:
            return b""
        block = os.urandom(length * RANDOM_BATCH)
        parts = [block[i : i + length] for i in range(0, len(block), length)]
        _SPARE[length] = parts
        return parts.pop()
