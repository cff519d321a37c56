"""The malloc policy (aio/mallocpolicy.py): after a runner starts, a process that
allocates and frees megabytes of receive-sized buffers turn after turn keeps its heap
instead of faulting the same pages in again each turn; a process whose environment tunes
malloc itself is left alone. Counted in page faults (``ru_minflt``) of a fresh process."""

from __future__ import annotations

import asyncio

import quicflow
from quicflow.aio import mallocpolicy
from tests.support import echo_proto
from tests.support.fresh_process import run_script
from tests.support.quic_helpers import client_config, run, server_config

TURNS = """
import resource, sys
from quicflow.aio import mallocpolicy
if sys.argv[1] == "on":
    mallocpolicy.POLICY.runner_started()  # what the first EndpointRunner does

def turn():  # a receive turn: 8 MiB of 64 KiB buffers (GRO-sized), then all freed
    buffers = [b"x" * 65536 for _ in range(128)]
    del buffers

for _ in range(3):
    turn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    turn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(policy: str, tunables: str | None = None) -> int:
    return int(run_script(TURNS, policy, tunables=tunables))


def test_the_heap_is_kept_between_receive_turns() -> None:
    without = _faults("off")
    assert without >= 2048  # glibc's defaults: the freed 8 MiB went back each turn
    assert _faults("on") < without // 20


def test_an_environment_that_tunes_malloc_is_left_alone() -> None:
    # the environment asks for glibc's default trim threshold: the policy must not
    # override it, so the heap still goes back each turn
    assert _faults("on", "glibc.malloc.trim_threshold=131072") >= 2048


WINDOWS = """
import resource, sys
from quicflow.aio import mallocpolicy
policy = mallocpolicy.POLICY
policy.runner_started()
held = int(sys.argv[1])  # bytes of receive windows the runners' connections hold

def turn():  # 64 MiB of received data waiting at once (64 KiB runs), then all read
    buffers = [b"x" * 65536 for _ in range(1024)]
    del buffers

def faults():
    turn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        turn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

policy.windows_changed(held)
print(faults(), policy.trim)
policy.windows_changed(-held)  # the connections went: the heap goes back again
print(faults(), policy.trim)
"""


def _window_faults(held: int) -> list[tuple[int, int]]:
    out = run_script(WINDOWS, str(held))
    return [(int(a), int(b)) for a, b in (line.split() for line in out.splitlines())]


def test_the_heap_kept_follows_the_connections_receive_windows() -> None:
    # 64 connections with 4 MiB windows may make us hold 256 MiB: 64 MiB of waiting
    # data freed each turn stays in the heap
    (with_windows, trim), (after, trim_after) = _window_faults(64 * (4 << 20))
    assert trim == mallocpolicy.RETAIN_CAP
    assert with_windows < 2048
    # once they are gone, the threshold is the fixed one again and the heap goes back
    assert trim_after == mallocpolicy.TRIM_THRESHOLD
    assert after >= 8 * 4096  # (32 MiB above the fixed threshold, each turn)
    # one connection's window: the fixed threshold, and 64 MiB is given back each turn
    (one, trim_one), _ = _window_faults(4 << 20)
    assert trim_one == mallocpolicy.TRIM_THRESHOLD
    assert one >= 8 * 4096


def test_the_heap_kept_stays_bounded_whatever_the_windows_add_up_to() -> None:
    # 10,000 connections with 16 MiB windows (160 GiB a peer set could claim): the free
    # heap kept stops at the cap (RETAIN_CAP, or 1/16 of the machine's memory when that
    # is less), and falls back to the fixed threshold once they are gone
    (_, trim), (_, trim_after) = _window_faults(10_000 * (16 << 20))
    assert mallocpolicy.TRIM_THRESHOLD <= trim <= mallocpolicy.RETAIN_CAP
    assert trim_after == mallocpolicy.TRIM_THRESHOLD


RELEASED = """
import os, sys
from quicflow.aio import mallocpolicy
policy = mallocpolicy.POLICY
policy.runner_started()

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

held = 64 * (4 << 20)  # 64 connections' windows: the heap kept rises to the cap
policy.windows_changed(held)
buffers = [b"x" * 65536 for _ in range(3200)]  # 200 MiB of received data, then read
del buffers
kept = rss_mb()
if sys.argv[1] == "mallopt-only":
    policy.malloc_trim = None  # (what lowering the threshold alone does)
policy.windows_changed(-held)  # the connections end
print(int(kept - rss_mb()), policy.trim)
"""


def _released_when_lowered(mode: str) -> tuple[int, int]:
    freed, trim = run_script(RELEASED, mode).split()
    return int(freed), int(trim)


def test_the_heap_goes_back_when_the_connections_that_held_it_end() -> None:
    freed, trim = _released_when_lowered("release")
    assert trim == mallocpolicy.TRIM_THRESHOLD
    assert freed >= 128  # MiB of the 200 freed (what is above the fixed threshold)
    freed, _ = _released_when_lowered("mallopt-only")
    assert freed < 32  # a lowered threshold alone trims nothing until a later free


def test_runners_count_their_connections_windows_until_they_end() -> None:
    policy = mallocpolicy.POLICY
    start = policy.windows

    held: list[int] = []
    all_read = asyncio.Event()
    measured = asyncio.Event()

    async def download(port: int, seed: int) -> None:
        async with quicflow.connect("127.0.0.1", port, configuration=client_config()) as conn:
            reader, writer = await conn.create_stream()
            result = await echo_proto.client_exchange(
                reader, writer, upload=b"", download=3 << 20, seed=seed
            )
            assert result["ok"], result
            # each client connection counts its window as it stands after the reads
            # (grown from the configured 4 MiB when the reader kept up)
            assert conn.held_window == conn.conn.flow.window >= 4 << 20
            held.append(conn.held_window)
            if len(held) == 4:
                all_read.set()
            await measured.wait()  # open until the sum was checked

    async def main() -> None:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config()
        )
        try:
            tasks = [asyncio.ensure_future(download(server.address[1], s)) for s in range(4)]
            await all_read.wait()
            # the four clients' windows, plus the server's four connections
            assert policy.windows - start >= sum(held)
            measured.set()
            await asyncio.gather(*tasks)
        finally:
            server.close()

    run(main(), 60)
    assert policy.windows == start  # every connection ended: none counted
