"""The process's GC policy (aio/gcpolicy.py): long-lived connection state is frozen out of
the collector's full collections as a server grows, and released when it shrinks."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest

import quicflow
from quicflow.aio import gcpolicy
from tests.support.fresh_process import run_script
from tests.support.transfer import client_configuration, server_configuration


@pytest.fixture
def policy(monkeypatch: pytest.MonkeyPatch) -> Iterator[gcpolicy.FreezeOnGrowth]:
    fresh = gcpolicy.FreezeOnGrowth()
    monkeypatch.setattr(gcpolicy, "POLICY", fresh)
    thresholds = gc.get_threshold()
    yield fresh
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_the_first_runner_raises_only_pythons_default_gen0_threshold(
        policy: gcpolicy.FreezeOnGrowth) -> None:
    gc.set_threshold(gcpolicy.PYTHON_GEN0_THRESHOLD, 10, 10)
    policy.runner_started()
    assert gc.get_threshold() == (gcpolicy.GEN0_THRESHOLD, 10, 10)
    gc.set_threshold(1234, 10, 10)  # the application's own choice from now on
    policy.runner_started()
    assert gc.get_threshold() == (1234, 10, 10)
    gc.set_threshold(gcpolicy.GEN0_THRESHOLD, 10, 10)
    gcpolicy.set_enabled(False)  # turning the policy off puts the default back
    try:
        assert gc.get_threshold() == (gcpolicy.PYTHON_GEN0_THRESHOLD, 10, 10)
        policy.runner_started()  # and a runner started then changes nothing
        assert gc.get_threshold() == (gcpolicy.PYTHON_GEN0_THRESHOLD, 10, 10)
    finally:
        gcpolicy.set_enabled(True)


def test_an_application_threshold_is_left_alone(policy: gcpolicy.FreezeOnGrowth) -> None:
    gc.set_threshold(5000, 20, 30)
    policy.runner_started()
    assert gc.get_threshold() == (5000, 20, 30) and not policy.raised


def test_freezes_at_each_doubling_and_releases_when_small(policy: gcpolicy.FreezeOnGrowth) -> None:
    for _ in range(gcpolicy.FREEZE_FROM - 1):
        policy.added()
    assert policy.freezes == 0 and gc.get_freeze_count() == 0
    policy.added()
    assert policy.freezes == 1 and policy.frozen_at == gcpolicy.FREEZE_FROM
    assert gc.get_freeze_count() > 0
    for _ in range(gcpolicy.FREEZE_FROM):  # up to twice as many: the second freeze
        policy.added()
    assert policy.freezes == 2
    while policy.live >= policy.frozen_at // 4:
        policy.removed()
    assert policy.unfreezes == 1 and gc.get_freeze_count() == 0


def test_a_server_reports_its_connections(monkeypatch: pytest.MonkeyPatch,
                                          policy: gcpolicy.FreezeOnGrowth) -> None:
    monkeypatch.setattr(gcpolicy, "FREEZE_FROM", 8)
    from quicflow.aio import runner as runner_module

    monkeypatch.setattr(runner_module, "GC_POLICY", policy)

    async def echo(reader: quicflow.QuicStreamReader, writer: quicflow.QuicStreamWriter) -> None:
        writer.write(await reader.read())
        writer.write_eof()

    async def main() -> tuple[int, int]:
        server = await quicflow.serve(echo, "127.0.0.1", 0,
                                      configuration=server_configuration())
        port = server.address[1]
        async with quicflow.client_endpoint(configuration=client_configuration()) as ep:
            async with AsyncExitStack() as stack:
                faces = [await stack.enter_async_context(ep.connect("127.0.0.1", port))
                         for _ in range(12)]
                for face in faces:
                    reader, writer = await face.create_stream()
                    writer.write(b"ping")
                    writer.write_eof()
                    assert await reader.read() == b"ping"
                held = policy.live
        await asyncio.sleep(0.2)
        server.close()
        return held, policy.freezes

    held, freezes = asyncio.run(main())
    assert held >= 12  # the server's 12 (and the client's, in this same process)
    assert freezes >= 1
    assert policy.live == 0


def test_gen0_threshold_follows_the_live_connections(policy: gcpolicy.FreezeOnGrowth,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpolicy, "FREEZE_FROM", 1 << 30)  # (no freezes in this test)
    gc.set_threshold(gcpolicy.PYTHON_GEN0_THRESHOLD, 10, 10)
    policy.runner_started()
    per = gcpolicy.GEN0_PER_CONNECTION
    start = gcpolicy.GEN0_THRESHOLD // per
    for _ in range(start - 1):
        policy.added()
    assert gc.get_threshold() == (gcpolicy.GEN0_THRESHOLD, 10, 10)  # room for them: kept
    policy.added()
    assert gc.get_threshold() == (2 * per * policy.live, 10, 10)
    while gc.get_threshold()[0] < gcpolicy.GEN0_MAX:  # doubling by doubling, then capped
        before = gc.get_threshold()[0]
        policy.added()
        now = gc.get_threshold()[0]
        assert now in (before, min(gcpolicy.GEN0_MAX, 2 * per * policy.live))
        assert now >= min(gcpolicy.GEN0_MAX, per * policy.live)  # never below per connection
    changes = policy.gen0_changes
    for _ in range(4 * gcpolicy.GEN0_MAX // per):
        policy.added()
    assert gc.get_threshold()[0] == gcpolicy.GEN0_MAX and policy.gen0_changes == changes
    while policy.live:  # back down to the library's threshold as they go
        policy.removed()
    assert gc.get_threshold() == (gcpolicy.GEN0_THRESHOLD, 10, 10)
    assert policy.gen0_changes <= 2 * changes + 2  # a few steps, not one per connection


def test_gen0_threshold_set_by_the_application_meanwhile_is_kept(
        policy: gcpolicy.FreezeOnGrowth) -> None:
    gc.set_threshold(gcpolicy.PYTHON_GEN0_THRESHOLD, 10, 10)
    policy.runner_started()
    gc.set_threshold(3000, 10, 10)  # the application's own choice
    for _ in range(4 * gcpolicy.GEN0_THRESHOLD // gcpolicy.GEN0_PER_CONNECTION):
        policy.added()
    assert gc.get_threshold() == (3000, 10, 10) and not policy.raised
    while policy.live:
        policy.removed()
    assert gc.get_threshold() == (3000, 10, 10)


def test_a_fall_to_a_quarter_of_the_peak_releases_once(
        policy: gcpolicy.FreezeOnGrowth, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpolicy, "FREEZE_FROM", 1 << 30)  # (no freezes in this test)
    peak = gcpolicy.RELEASE_FROM
    for _ in range(peak):
        policy.added()
    while policy.live >= peak // 4:
        policy.removed()
        assert policy.releases == 0 or policy.live < peak // 4
    assert policy.releases == 1 and policy.peak == policy.live
    for _ in range(100):  # coming and going below the peak: no more collections
        policy.added()
        policy.removed()
    while policy.live:
        policy.removed()
    assert policy.releases == 1
    below = peak - 1  # a process that never held RELEASE_FROM connections: never
    fresh = gcpolicy.FreezeOnGrowth()
    for _ in range(below):
        fresh.added()
    while fresh.live:
        fresh.removed()
    assert fresh.releases == 0


RELEASE = """
import gc, os, sys
from quicflow.aio import gcpolicy, mallocpolicy
mallocpolicy.POLICY.runner_started()  # what the first EndpointRunner does
gcpolicy.POLICY.runner_started()
count = gcpolicy.RELEASE_FROM
if sys.argv[1] == "off":
    gcpolicy.RELEASE_FROM = 1 << 30

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

class State:  # a connection's state: objects that refer to each other, and its buffers
    __slots__ = ("other", "buffers")

held = []
for _ in range(count):
    a, b = State(), State()
    a.other, b.other = b, a
    a.buffers = [b"x" * 65536 for _ in range(2)]  # 128 KiB each, heap-allocated
    held.append(a)
    gcpolicy.POLICY.added()
peak = rss_mb()
while held:  # the connections end: their state is now garbage in reference cycles
    held.pop()
    gcpolicy.POLICY.removed()
print(int(peak - rss_mb()), gcpolicy.POLICY.releases, mallocpolicy.POLICY.releases)
"""


def _released(mode: str) -> tuple[int, int, int]:
    freed, collections, trims = (int(x) for x in run_script(RELEASE, mode).split())
    return freed, collections, trims


def test_memory_goes_back_when_the_connections_fall() -> None:
    # 1,024 connections of 128 KiB each (128 MiB) end; their state is in reference cycles
    # that no collection would reach soon (the raised generation-0 threshold)
    freed, collections, trims = _released("on")
    assert collections == 1 and trims == 1
    assert freed >= 64  # MiB: collected, and the heap given back (but the trim threshold)
    freed, collections, trims = _released("off")
    assert collections == 0 and trims == 0
    assert freed < 32  # without the release, the dead state stays resident
