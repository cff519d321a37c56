"""The malloc policy (aio/mallocpolicy.py): after a runner starts, a process that
allocates and frees megabytes of receive-sized buffers turn after turn keeps its heap
instead of faulting the same pages in again each turn; a process whose environment tunes
malloc itself is left alone. Counted in page faults (``ru_minflt``) of a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import quicflow

SRC = os.path.dirname(os.path.dirname(os.path.abspath(quicflow.__file__)))

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
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = SRC
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", TURNS, policy], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return int(out.stdout)


def test_the_heap_is_kept_between_receive_turns() -> None:
    without = _faults("off")
    assert without >= 2048  # glibc's defaults: the freed 8 MiB went back each turn
    assert _faults("on") < without // 20


def test_an_environment_that_tunes_malloc_is_left_alone() -> None:
    # the environment asks for glibc's default trim threshold: the policy must not
    # override it, so the heap still goes back each turn
    assert _faults("on", "glibc.malloc.trim_threshold=131072") >= 2048
