"""Where compiled foreign peers (quic-go, quinn) are kept, and building each once.

A peer is built into ``<cache root>/<name>-<key>/`` where the key hashes everything the
build depends on (the peer's source, the toolchain's version, the library's package
version): it is rebuilt only when one of them changes. The cache root is
``$QUICFLOW_PEER_CACHE`` or ``~/.cache/quicflow-peers`` (``$XDG_CACHE_HOME`` honoured),
outside the checkout. A lock file serialises builds of concurrent test runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("QUICFLOW_PEER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quicflow-peers"


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def package_version(package: str) -> str:
    """The installed version of a Debian package ("" when dpkg cannot tell)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def command_output(*command: str) -> str:
    try:
        return subprocess.run(list(command), capture_output=True, text=True,
                              timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""


def cached_build(name: str, key: str, binary_name: str,
                 build: Callable[[Path, Path], None]) -> Path:  # fmt: skip
    """``<cache>/<name>-<key>/<binary_name>``, made by ``build(directory, output)`` (which
    writes ``output``) unless it exists already."""
    directory = cache_root() / f"{name}-{key}"
    binary = directory / binary_name
    if binary.is_file():
        return binary
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():  # built by a concurrent run meanwhile
            return binary
        tmp = directory / (binary_name + ".tmp")
        print(f"building {binary} (once per cache key)", file=sys.stderr, flush=True)
        build(directory, tmp)
        os.replace(tmp, binary)
    return binary


def prepare(missing: Callable[[], str | None], name: str, key: Callable[[], str],
            file_name: str, build: Callable[[Path, Path], None], *,
            marker: bool = False) -> Path:  # fmt: skip
    """``cached_build(name, key(), file_name, build)`` once ``missing()`` says nothing is
    missing (else RuntimeError with its reason); with ``marker`` the built file holds the
    path of what was set up, and that path is returned."""
    why = missing()
    if why is not None:
        raise RuntimeError(why)
    path = cached_build(name, key(), file_name, build)
    return Path(path.read_text().strip()) if marker else path


def main(build: Callable[[], Path], failure: str) -> None:
    """``python -m tests.support.<peer>``: build the peer if needed and print its path, or
    print ``failure: <why>`` on stderr and exit 1."""
    try:
        print(build())
    except RuntimeError as exc:
        print(f"{failure}: {exc}", file=sys.stderr)
        sys.exit(1)
