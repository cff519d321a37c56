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
from functools import cache
from pathlib import Path
from typing import Self

from tests.support.aioquic_peer import AioquicProcess
from tests.support.peer_cache import command_output, digest, main, prepare

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
    return prepare(missing, "quiche-node", _cache_key, MARKER, _npm_install, marker=True)


def _cache_key() -> str:
    return digest(PACKAGE.encode(), command_output("node", "--version").encode())


class QuicheProcess(AioquicProcess):
    """The quiche client in a process of its own (``hq_peers`` JSON-lines protocol)."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.library = "quiche"
        self.args = list(args)

    async def start(self) -> Self:
        modules = await asyncio.get_running_loop().run_in_executor(None, build)
        return await self._spawn("node", str(PEER), *self.args,
                                 env={**os.environ, "QUICHE_PEER_MODULES": str(modules)})


if __name__ == "__main__":  # install (if needed) and print the node_modules path
    main(build, "the quiche peer was not set up")
