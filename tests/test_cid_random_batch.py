"""The random parts of our CIDs are read from the kernel in batches (endpoint/cids.py):
still never handed out twice, not across threads, and not by a forked child and its
parent; and the stateless reset token of a CID is the same HMAC with or without the C
extension."""

from __future__ import annotations

import hmac
import os
import threading

import pytest

from quicflow.crypto import stateless_reset
from quicflow.endpoint.cids import RANDOM_BATCH, CidGenerator, RandomCidGenerator, random_part
from quicflow.endpoint.quiclb import ServerIdLayout


def test_parts_are_distinct_and_random_across_batches() -> None:
    parts = [random_part(8) for _ in range(RANDOM_BATCH * 5 + 3)]
    assert len(set(parts)) == len(parts)
    assert all(len(p) == 8 for p in parts)
    assert random_part(0) == b""
    gen = CidGenerator.from_layout(ServerIdLayout())
    cids = {gen.generate() for _ in range(RANDOM_BATCH * 3)}
    assert len(cids) == RANDOM_BATCH * 3 and all(gen.is_ours(c) for c in cids)
    assert len({RandomCidGenerator(12).generate() for _ in range(200)}) == 200


def test_threads_never_share_a_part() -> None:
    got: list[list[bytes]] = [[] for _ in range(4)]

    def take(out: list[bytes]) -> None:
        for _ in range(RANDOM_BATCH * 4):
            out.append(random_part(5))

    threads = [threading.Thread(target=take, args=(out,)) for out in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [p for out in got for p in out]
    assert len(set(every)) == len(every) == 4 * RANDOM_BATCH * 4


def test_a_forked_child_does_not_repeat_the_parents_parts() -> None:
    random_part(8)  # a batch is held now: the child inherits a copy of it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send 10 parts, leave at once
        try:
            os.write(write, b"".join(random_part(8) for _ in range(10)))
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while len(data) < 80:
        chunk = os.read(read, 80 - len(data))
        if not chunk:
            break
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child = {data[i : i + 8] for i in range(0, len(data), 8)}
    parent = {random_part(8) for _ in range(10)}
    assert len(child) == 10
    assert not child & parent


def test_reset_token_is_the_hmac_with_and_without_the_extension(
        monkeypatch: pytest.MonkeyPatch) -> None:
    key, cid = b"k" * 32, bytes(range(8))
    want = hmac.digest(key, b"quicflow stateless reset" + cid, "sha256")[:16]
    assert stateless_reset.stateless_reset_token(key, cid) == want
    monkeypatch.setattr(stateless_reset, "_NATIVE", None)
    assert stateless_reset.stateless_reset_token(key, cid) == want
