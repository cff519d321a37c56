"""quinn as the other end of interop tests: build the peer program, run it.

The peer (``tests/peers/quinn``, our own harness program) speaks hq-interop and reports
JSON lines on stdout (see its ``src/main.rs``). It is built with cargo offline against
Debian's crate registry (``librust-quinn-dev`` and its dependencies under
``/usr/share/cargo/registry``, configured as the replacement of crates.io in a
``CARGO_HOME`` of its own), once per cache key, outside the checkout::

    ~/.cache/quicflow-peers/quinn-<key>/quinn-peer      (or $QUICFLOW_PEER_CACHE/...)

The key hashes the Rust sources, ``cargo --version``/``rustc --version`` and the quinn
package's version. A first build takes about 1.5 minutes on this machine (2 cores).
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
from tests.support.peer_cache import command_output, digest, main, package_version, prepare

ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIR = ROOT / "tests" / "peers" / "quinn"
SOURCES = ("Cargo.toml", "src/main.rs")
REGISTRY = Path("/usr/share/cargo/registry")
QUINN_PACKAGE = "librust-quinn-dev"
BINARY_NAME = "quinn-peer"
CARGO_CONFIG = f"""\
[source.crates-io]
replace-with = "debian"
[source.debian]
directory = "{REGISTRY}"
[net]
offline = true
"""


def missing() -> str | None:
    """Why the peer cannot be built here, or None when it can."""
    if shutil.which("cargo") is None:
        return "program 'cargo' not found (Debian package cargo; make deps)"
    if not any(REGISTRY.glob("quinn-0.*")):
        return f"quinn's crate not found in {REGISTRY} (Debian package {QUINN_PACKAGE})"
    return None


def cache_key() -> str:
    return digest(*(SOURCE_DIR.joinpath(s).read_bytes() for s in SOURCES),
                  command_output("cargo", "--version").encode(),
                  command_output("rustc", "--version").encode(),
                  package_version(QUINN_PACKAGE).encode())  # fmt: skip


def _cargo_build(directory: Path, output: Path) -> None:
    source = directory / "src-copy"
    for name in SOURCES:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE_DIR / name, source / name)
    home = directory / "cargo-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(CARGO_CONFIG)
    env = dict(os.environ, CARGO_HOME=str(home), CARGO_TARGET_DIR=str(directory / "target"),
               CARGO_NET_OFFLINE="true")  # fmt: skip
    proc = subprocess.run(["cargo", "build", "--release", "--offline", "--quiet"],
                          cwd=source, env=env, capture_output=True, text=True,
                          timeout=1200)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"building the quinn peer failed:\n{proc.stderr[-4000:]}")
    shutil.copyfile(directory / "target" / "release" / BINARY_NAME, output)
    output.chmod(0o755)
    shutil.rmtree(directory / "target", ignore_errors=True)  # ~100 MB of intermediates


@cache
def build() -> Path:
    """The peer binary, built on first use (raises RuntimeError with cargo's output)."""
    return prepare(missing, "quinn", cache_key, BINARY_NAME, _cargo_build)


class QuinnProcess(AioquicProcess):
    """The quinn peer in a process of its own, started from a running event loop."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.library = "quinn"
        self.args = list(args)

    async def start(self) -> Self:
        binary = await asyncio.get_running_loop().run_in_executor(None, build)
        return await self._spawn(str(binary), *self.args)


if __name__ == "__main__":  # build the peer (if needed) and print its path
    main(build, "the quinn peer was not built")
