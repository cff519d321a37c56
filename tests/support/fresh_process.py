"""Run a script in a fresh Python process whose malloc is glibc's default (no MALLOC_*
variables, no GLIBC_TUNABLES unless given), importing quicflow from this checkout: what
the process-wide GC and malloc policies do is measured there, not in the test runner."""

from __future__ import annotations

import os
import subprocess
import sys

import quicflow

SRC = os.path.dirname(os.path.dirname(os.path.abspath(quicflow.__file__)))


def run_script(script: str, *args: str, tunables: str | None = None) -> str:
    """``script``'s standard output (it must exit 0 within 60 s)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = SRC
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout
