"""Connection ID helpers for tests."""

from __future__ import annotations

import os


class FixedFirstCid:
    """A client CID generator whose first CID (the source CID of its Initials) is fixed,
    the rest random: what a client copying another's CID does."""

    def __init__(self, first: bytes) -> None:
        self.first: bytes | None = first
        self.cid_length = len(first)

    def generate(self) -> bytes:
        first, self.first = self.first, None
        return first if first is not None else os.urandom(self.cid_length)

    def is_ours(self, cid: bytes) -> bool:
        return len(cid) == self.cid_length
