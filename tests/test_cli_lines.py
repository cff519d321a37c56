"""Status lines on stderr are written whole, in one call each.

``quicflow serve --workers N`` runs N worker processes on one stderr. ``print`` writes a
text and its newline in two calls; with unbuffered stderr (PYTHONUNBUFFERED, as under
this suite and many process managers) another worker's line could land between them, and
two "successor connected" lines read as one (tests/test_h3_takeover.py waited for two
and timed out). A line written in one call of at most PIPE_BUF bytes reaches a pipe
whole.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from quicflow.cli.common import _fail, say


class _Calls(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, s: str) -> int:
        self.calls.append(s)
        return super().write(s)


def test_say_and_fail_write_each_line_in_one_call(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = _Calls()
    monkeypatch.setattr(sys, "stderr", out)
    say("successor connected: handing off after 2 request(s) in progress finish")
    assert _fail("handoff   failed:\n  gone") == 1
    assert out.calls == [
        "successor connected: handing off after 2 request(s) in progress finish\n",
        "quicflow: handoff failed: gone\n",
    ]


def test_lines_of_two_unbuffered_processes_never_merge() -> None:
    """Two processes with unbuffered stderr on one pipe, 1000 lines each: every line read
    back is one of theirs."""
    code = ("from quicflow.cli.common import say\n"
            "import sys\n"
            "for i in range(1000): say(f'worker {sys.argv[1]} line {i} ' + 'x' * 60)\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    read, write = os.pipe()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)], stderr=write, env=env)
             for w in (0, 1)]
    os.close(write)
    with os.fdopen(read) as f:
        lines = f.read().splitlines()
    assert all(p.wait(timeout=30) == 0 for p in procs)
    expected = {f"worker {w} line {i} " + "x" * 60 for w in (0, 1) for i in range(1000)}
    assert sorted(lines) == sorted(expected)
