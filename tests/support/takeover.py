"""Processes for same-host takeover tests: a ``quicflow perf server --handoff`` (or
``quicflow hq server``) and a successor started with ``--takeover`` early (imports done)
that takes over only when told, so the switch lands mid-transfer at a chosen moment.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from quicflow.apps.perf import PATTERN
from quicflow.tls.certs import certificate_pem, generate_self_signed, private_key_pem

ROOT = Path(__file__).resolve().parents[2]
_WAIT_THEN_RUN = (
    "import sys; from quicflow.cli.main import main; sys.stdin.readline(); "
    "sys.exit(main(sys.argv[1:]))"
)


def write_certificate(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for localhost/127.0.0.1 in ``directory``: (cert, key)."""
    cert, key = generate_self_signed(["localhost", "127.0.0.1"])
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate_pem(cert))
    key_path.write_bytes(private_key_pem(key))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)


def perf_sha256(size: int) -> str:
    """SHA-256 of a perf response of ``size`` bytes (the repeated pattern)."""
    h = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    block = PATTERN * 64
    for _ in range(full // 64):
        h.update(block)
    for _ in range(full % 64):
        h.update(PATTERN)
    h.update(PATTERN[:rest])
    return h.hexdigest()


#: what a server's stderr shows when an exception escaped to the event loop or a bug
#: was met taking a packet (transport/receive.py ``close_for_bug``)
_ERROR_MARKS = ("Traceback (most recent call last)", "internal error taking a packet")


class ServerProc:
    """A perf server process (``command=("hq", "server")``: an hq one); ``lines``
    collects its stderr, ``stdout()`` its stdout.

    ``finish`` (and ``stop``) fail when the server's stderr shows an exception: one that
    escaped to the event loop is logged there and the server goes on, so nothing else in
    a test would notice (the picoquic takeover stall of 2026-12-02 was one, printed by
    the successor in every failing run)."""

    def __init__(self, args: list[str], *, wait_for_go: bool = False,
                 prefix: list[str] | None = None,
                 command: tuple[str, ...] = ("perf", "server")) -> None:
        cmd = [*(prefix or []), sys.executable]
        cmd += ["-c", _WAIT_THEN_RUN] if wait_for_go else ["-m", "quicflow.cli.main"]
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        if os.environ.get("QUICFLOW_WAKEUP_SPOOL"):  # the lost wake-up check runs there too
            env["PYTHONPATH"] += os.pathsep + str(ROOT / "tests" / "support" / "wakeup_site")
        self.proc = subprocess.Popen(
            [*cmd, *command, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def go(self) -> None:
        """Let a ``wait_for_go`` process take over now."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_line(self, prefix: str, timeout: float = 60.0) -> str:
        """The first line starting with ``prefix`` (seen already, or waited for)."""
        for line in self.seen:
            if line.startswith(prefix):
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"server exited early: {self.seen}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line within {timeout} s: {self.seen}")

    def port(self) -> int:
        return int(self.wait_line("listening on ").split()[2].rsplit(":", 1)[1])

    def finish(self, timeout: float = 60.0) -> tuple[int, dict[str, Any] | None]:
        """Wait for exit: (status, the JSON object it printed, if any)."""
        assert self.proc.stdout is not None
        self.proc.wait(timeout=timeout)
        out = self.proc.stdout.read()
        while True:  # the rest of stderr
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        doc = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
        first = next((i for i, line in enumerate(self.seen)
                      if any(mark in line for mark in _ERROR_MARKS)), None)
        if first is not None:
            raise AssertionError("the server logged an exception:\n"
                                 + "\n".join(self.seen[max(0, first - 2):first + 30]))
        return self.proc.returncode, doc

    def stop(self) -> tuple[int, dict[str, Any] | None]:
        """SIGTERM, then wait (its --json summary)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
