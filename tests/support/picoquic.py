"""picoquic as the other end of interop tests, through PyPI ``aiopquic`` (a binding that
bundles picoquic; it needs Python >= 3.12, newer than the project's floor).

The peer (``tests/peers/picoquic_peer.py``) runs in a Python 3.12 virtualenv of its own,
created once per cache key outside the checkout (``tests/support/peer_cache.py``)::

    ~/.cache/quicflow-peers/picoquic-<key>/venv      (or $QUICFLOW_PEER_CACHE/...)

with ``aiopquic`` pinned to :data:`AIOPQUIC`, installed by pip from the configured index.
The key hashes the pinned version and the interpreter's version. The interpreter is
``python3.12`` (or newer) from PATH or from pyenv's versions (``~/.pyenv/versions``).
``python -m tests.support.picoquic`` creates the venv and prints its interpreter.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Self

from tests.support.aioquic_peer import AioquicProcess
from tests.support.peer_cache import command_output, digest, main, prepare

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "tests" / "peers" / "picoquic_peer.py"
AIOPQUIC = "aiopquic==0.6.1"
MARKER = "python-path"


@cache
def interpreter() -> str | None:
    """A working Python >= 3.12 to make the venv with (None when there is none). pyenv's
    versions come first: its ``python3.12`` shim on PATH fails unless that version is
    selected."""
    home = os.path.expanduser("~/.pyenv/versions")
    candidates = [c for pattern in ("3.12*", "3.13*")
                  for c in sorted(glob.glob(os.path.join(home, pattern, "bin", "python3")))]
    candidates += [c for c in (shutil.which("python3.12"), shutil.which("python3.13")) if c]
    for candidate in candidates:
        try:
            ok = subprocess.run([candidate, "-c", "import sys; assert sys.version_info >= (3, 12)"],
                                capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return candidate
    return None


def missing() -> str | None:
    if interpreter() is None:
        return "no Python >= 3.12 found (aiopquic needs it; pyenv install 3.12)"
    return None


def _make_venv(directory: Path, output: Path) -> None:
    python = interpreter()
    assert python is not None
    venv = directory / "venv"
    steps = [[python, "-m", "venv", "--clear", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", AIOPQUIC]]
    for step in steps:
        proc = subprocess.run(step, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{proc.stderr[-4000:]}")
    output.write_text(str(venv / "bin" / "python"))


@cache
def build() -> Path:
    """The venv's interpreter (made on first use; RuntimeError with pip's output)."""
    return prepare(missing, "picoquic", _cache_key, MARKER, _make_venv, marker=True)


def _cache_key() -> str:
    python = interpreter()
    assert python is not None
    return digest(AIOPQUIC.encode(), command_output(python, "--version").encode())


class PicoquicProcess(AioquicProcess):
    """The picoquic peer in a process of its own (``hq_peers`` JSON-lines protocol).

    Its server is given a port (``--port``, picked free by the caller): aiopquic does not
    report the port it bound."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.library = "picoquic"
        self.args = list(args)
        if self.args[0] == "server" and "--port" not in self.args:
            self.args += ["--port", str(free_udp_port())]

    async def start(self) -> Self:
        python = await asyncio.get_running_loop().run_in_executor(None, build)
        return await self._spawn(str(python), str(PEER), *self.args)


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


if __name__ == "__main__":  # make the venv (if needed) and print its interpreter
    main(build, "the picoquic peer was not set up")
