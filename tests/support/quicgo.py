"""quic-go as the other end of interop tests: build the peer program, run it.

The peer (``tests/peers/quicgo/main.go``, our own harness program) speaks hq-interop and
reports JSON lines on stdout (see its header comment). It is built offline in GOPATH mode
against Debian's packaged quic-go sources (``golang-go``,
``golang-github-lucas-clemente-quic-go-dev`` under ``/usr/share/gocode``), once per cache
key, into a directory outside the checkout (``tests/support/peer_cache.py``)::

    ~/.cache/quicflow-peers/quicgo-<key>/quicgo-peer     (or $QUICFLOW_PEER_CACHE/...)

The key hashes the Go source, ``go version`` and the quic-go package's version, so an edit
or a package upgrade rebuilds it, and nothing else does.
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
from tests.support.peer_cache import (
    cache_root,
    command_output,
    digest,
    main,
    package_version,
    prepare,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "peers" / "quicgo" / "main.go"
DEBIAN_GOPATH = Path("/usr/share/gocode")
QUICGO_DIR = DEBIAN_GOPATH / "src" / "github.com" / "lucas-clemente" / "quic-go"
QUICGO_PACKAGE = "golang-github-lucas-clemente-quic-go-dev"
BINARY_NAME = "quicgo-peer"


def missing() -> str | None:
    """Why the peer cannot be built here, or None when it can."""
    if shutil.which("go") is None:
        return "program 'go' not found (Debian package golang-go; make deps)"
    if not (QUICGO_DIR / "server.go").is_file():
        return f"quic-go sources not found in {QUICGO_DIR} (Debian package {QUICGO_PACKAGE})"
    return None


def cache_key() -> str:
    return digest(SOURCE.read_bytes(), command_output("go", "version").encode(),
                  package_version(QUICGO_PACKAGE).encode())  # fmt: skip


def _go_build(directory: Path, output: Path) -> None:
    package = directory / "gopath" / "src" / "quicflowpeer"
    package.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE, package / "main.go")
    env = dict(os.environ)
    env.update({
        "GO111MODULE": "off",  # GOPATH mode: Debian's sources, no module download
        "GOPATH": f"{directory / 'gopath'}{os.pathsep}{DEBIAN_GOPATH}",
        "GOCACHE": str(cache_root() / "gocache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    })  # fmt: skip
    proc = subprocess.run(["go", "build", "-o", str(output), "."], cwd=package, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"building the quic-go peer failed:\n{proc.stderr[-4000:]}")


@cache
def build() -> Path:
    """The peer binary, built on first use (raises RuntimeError with go's output)."""
    return prepare(missing, "quicgo", cache_key, BINARY_NAME, _go_build)


class QuicGoProcess(AioquicProcess):
    """The quic-go peer in a process of its own, started from a running event loop.

    ``async with QuicGoProcess("server", "-cert", c, "-key", k, "-root", d) as peer:``
    then ``peer.port``, ``await peer.next_event("closed")``, ``peer.events``.
    """

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.library = "quic-go"
        self.args = list(args)

    async def start(self) -> Self:
        binary = await asyncio.get_running_loop().run_in_executor(None, build)
        return await self._spawn(str(binary), *self.args)


if __name__ == "__main__":  # build the peer (if needed) and print its path
    main(build, "the quic-go peer was not built")
