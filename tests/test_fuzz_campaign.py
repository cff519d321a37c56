"""`make fuzz` (bench/fuzz.py) keeps working: a short campaign of both phases runs to its
report, and the server it attacks raised nothing, kept no connection past its idle
timeout and still served a legitimate client intact. (The campaign once failed before
its first input for weeks: it read a field that a refactor had renamed.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(180)
def test_short_fuzz_campaign_runs_clean() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--inproc-seconds", "2",
         "--udp-seconds", "2", "--seed", "11"],
        capture_output=True, text=True, timeout=170, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    inproc, udp = report["inproc"], report["udp"]
    for kind in ("random", "mutated", "initial", "one_rtt"):
        assert inproc["by_kind"][kind] > 100
        assert udp["by_kind"][kind] > 10
    assert inproc["exceptions"] == 0 and udp["server_exceptions"] == 0
    assert inproc["connections_left_after_idle_timeout"] == 0
    assert udp["connections_left_after_idle_timeout"] == 0
    assert udp["handshakes"] > 0
    assert udp["legit_transfer"]["download_intact"] and udp["legit_transfer"]["upload_intact"]
