"""quiche as the other end of interop tests, through npm ``@matrixai/quic`` (a Node binding
that ships a prebuilt quiche), as an hq-interop client (``tests/peers/quiche/peer.mjs``).

The package is installed once per cache key with ``npm install`` into a directory outside
the checkout (``tests/support/peer_cache.py``)::

    ~/.cache/quicflow-peers/quiche-node-<key>/node_modules   (or $QUICFLOW_PEER_CACHE/...)

The key hashes the pinned package version and ``node --version``.
``python -m tests.support.quiche`` installs it and prints the node_modules path.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.support.aioquic_peer import AioquicProcess
from tests.support.peer_cache import cached_build, command_output, digest

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT / "tests" / "peers" / "quiche" / "peer.mjs"
PACKAGE = "@matrixai/quic@2.0.9"
MARKER = "node-modules-path"


def missing() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found (Debian packages nodejs, npm)"
    return None


def _npm_install(directory: Path, output: Path) -> None:
    step = ["npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix",
            str(directory), PACKAGE]  # fmt: skip
    proc = subprocess.run(step, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(step)} failed:\n{proc.stderr[-4000:]}")
    output.write_text(str(directory / "node_modules"))


@cache
def build() -> Path:
    """The cached node_modules holding the package (installed on first use)."""
    why = missing()
    if why is not None:
        raise RuntimeError(why)
    key = digest(PACKAGE.encode(), command_output("node", "--version").encode())
    marker = cached_build("quiche-node", key, MARKER, _npm_install)
    return Path(marker.read_text().strip())


class QuicheProcess(AioquicProcess):
    """The quiche client in a process of its own (``hq_peers`` JSON-lines protocol)."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.library = "quiche"
        self.args = list(args)

    async def start(self) -> QuicheProcess:
        modules = await asyncio.get_running_loop().run_in_executor(None, build)
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(PEER), *self.args,
            env={**os.environ, "QUICHE_PEER_MODULES": str(modules)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader_task = asyncio.ensure_future(self._read())
        return self

    async def __aenter__(self) -> QuicheProcess:
        return await self.start()


if __name__ == "__main__":  # install (if needed) and print the node_modules path
    try:
        print(build())
    except RuntimeError as exc:
        print(f"the quiche peer was not set up: {exc}", file=sys.stderr)
        sys.exit(1)
