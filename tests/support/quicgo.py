"""quic-go as the other end of interop tests: build the peer program, run it.

The peer (``tests/peers/quicgo/main.go``, our own harness program) speaks hq-interop and
reports JSON lines on stdout (see its header comment). It is built offline in GOPATH mode
against Debian's packaged quic-go sources (``golang-go``,
``golang-github-lucas-clemente-quic-go-dev`` under ``/usr/share/gocode``), once per cache
key, into a directory outside the checkout::

    ~/.cache/quicflow-peers/quicgo-<key>/quicgo-peer     (or $QUICFLOW_PEER_CACHE/...)

The key hashes the Go source, ``go version`` and the quic-go package's version, so an edit
or a package upgrade rebuilds it, and nothing else does. A lock file serialises builds of
concurrent test runs.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.support.aioquic_peer import AioquicProcess

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "peers" / "quicgo" / "main.go"
DEBIAN_GOPATH = Path("/usr/share/gocode")
QUICGO_DIR = DEBIAN_GOPATH / "src" / "github.com" / "lucas-clemente" / "quic-go"
QUICGO_PACKAGE = "golang-github-lucas-clemente-quic-go-dev"
BINARY_NAME = "quicgo-peer"


def cache_root() -> Path:
    """Where compiled peers are kept: $QUICFLOW_PEER_CACHE or ~/.cache/quicflow-peers."""
    env = os.environ.get("QUICFLOW_PEER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quicflow-peers"


def missing() -> str | None:
    """Why the peer cannot be built here, or None when it can."""
    if shutil.which("go") is None:
        return "program 'go' not found (Debian package golang-go; make deps)"
    if not (QUICGO_DIR / "server.go").is_file():
        return f"quic-go sources not found in {QUICGO_DIR} (Debian package {QUICGO_PACKAGE})"
    return None


def _package_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", QUICGO_PACKAGE],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return str((QUICGO_DIR / "go.mod").stat().st_mtime_ns)


def cache_key() -> str:
    go = subprocess.run(["go", "version"], capture_output=True, text=True, timeout=30).stdout
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), go.encode(), _package_version().encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


@cache
def build() -> Path:
    """The peer binary, built on first use (raises RuntimeError with go's output)."""
    why = missing()
    if why is not None:
        raise RuntimeError(why)
    directory = cache_root() / f"quicgo-{cache_key()}"
    binary = directory / BINARY_NAME
    if binary.is_file():
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():  # built by a concurrent run meanwhile
            return binary
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
        tmp = directory / (BINARY_NAME + ".tmp")
        proc = subprocess.run(
            ["go", "build", "-o", str(tmp), "."],
            cwd=package, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"building the quic-go peer failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, binary)
    return binary


class QuicGoProcess(AioquicProcess):
    """The quic-go peer in a process of its own, started from a running event loop.

    ``async with QuicGoProcess("server", "-cert", c, "-key", k, "-root", d) as peer:``
    then ``peer.port``, ``await peer.next_event("closed")``, ``peer.events``.
    """

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.library = "quic-go"
        self.args = list(args)

    async def start(self) -> QuicGoProcess:
        binary = await asyncio.get_running_loop().run_in_executor(None, build)
        self.proc = await asyncio.create_subprocess_exec(
            str(binary), *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader_task = asyncio.ensure_future(self._read())
        if self.args[0] == "server":
            ready = await self.next_event("ready", timeout=30)
            self.port = int(ready["port"])
        return self

    async def __aenter__(self) -> QuicGoProcess:
        return await self.start()


if __name__ == "__main__":  # python -m tests.support.quicgo: build and print the path
    print(build())
    sys.exit(0)
