"""Two network namespaces joined by a veth pair, for tests that need real links.

::

    with netns_pair(mtu=1280) as pair:
        pair.run(pair.a, ["ping", "-c1", "-W1", pair.b_ip])
        server = pair.popen(pair.b, [sys.executable, "-m", "quicflow", ...])

Namespace A holds ``10.77.0.1/24`` and namespace B ``10.77.0.2/24`` by default.  These
private addresses exist only inside the namespaces created here: never send to a 10.x
address from the host's own namespace.  Needs root (``ip netns``); the caller checks that
with ``require`` (see ``tests/support/prereq.py``).  Cleanup always runs, even when the
set-up fails half-way; ``ip netns exec`` is used since ``os.setns`` is not in Python 3.11.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
_counter = itertools.count()


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS`` in the host namespace."""
    return subprocess.run(
        ["ip", *args], check=check, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs *argv* inside namespace *ns*."""
    return ["ip", "netns", "exec", ns, *argv]


def run_in(
    ns: str, argv: Sequence[str], *, check: bool = True, timeout: float | None = 30, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace *ns* and wait for it (output captured as text)."""
    kw.setdefault("capture_output", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(exec_argv(ns, argv), check=check, timeout=timeout, text=True, **kw)


def popen_in(ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
    """Start a command inside namespace *ns* (the caller stops it)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(exec_argv(ns, argv), text=True, **kw)


def python_in(
    ns: str, code: str, *, timeout: float | None = 30, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c CODE`` (this interpreter, so this virtualenv) inside *ns*."""
    return run_in(ns, [sys.executable, "-c", code], timeout=timeout, check=check, **kw)


@dataclass
class NetnsPair:
    """Namespaces ``a`` and ``b`` joined by veth ``veth_a`` (in a) ↔ ``veth_b`` (in b)."""

    a_cidr: str = "10.77.0.1/24"
    b_cidr: str = "10.77.0.2/24"
    mtu: int = 1500
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}x{next(_counter)}")
    created: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for cidr in (self.a_cidr, self.b_cidr):
            if not cidr.startswith("10.77."):
                raise ValueError(f"use 10.77.x.y addresses inside test namespaces, got {cidr}")
        self.a = f"qfa{self.tag}"
        self.b = f"qfb{self.tag}"
        # Interface names: at most 15 bytes.
        self.veth_a = f"qfva{self.tag}"[:15]
        self.veth_b = f"qfvb{self.tag}"[:15]

    @property
    def a_ip(self) -> str:
        return self.a_cidr.split("/")[0]

    @property
    def b_ip(self) -> str:
        return self.b_cidr.split("/")[0]

    def create(self) -> NetnsPair:
        try:
            for ns in (self.a, self.b):
                ip("netns", "add", ns)
                self.created.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            ip(
                "link",
                "add",
                self.veth_a,
                "netns",
                self.a,
                "mtu",
                str(self.mtu),
                "type",
                "veth",
                "peer",
                "name",
                self.veth_b,
                "netns",
                self.b,
                "mtu",
                str(self.mtu),
            )
            for ns, dev, cidr in (
                (self.a, self.veth_a, self.a_cidr),
                (self.b, self.veth_b, self.b_cidr),
            ):
                ip("-n", ns, "addr", "add", cidr, "dev", dev)
                ip("-n", ns, "link", "set", dev, "up")
        except subprocess.CalledProcessError as exc:
            self.remove()
            raise RuntimeError(
                f"creating namespaces failed: {' '.join(map(str, exc.cmd))}: {exc.stderr.strip()}"
            ) from exc
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Delete both namespaces (which deletes the veth pair); never raises."""
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created.clear()
        # If the veth was left in the host namespace somehow, remove it too.
        ip("link", "del", self.veth_a, check=False)

    def set_mtu(self, mtu: int) -> None:
        for ns, dev in ((self.a, self.veth_a), (self.b, self.veth_b)):
            ip("-n", ns, "link", "set", dev, "mtu", str(mtu))
        self.mtu = mtu

    def run(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_in(ns, argv, **kw)

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[str]:
        return popen_in(ns, argv, **kw)

    def python(self, ns: str, code: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return python_in(ns, code, **kw)

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


@contextmanager
def netns_pair(
    mtu: int = 1500, a_cidr: str = "10.77.0.1/24", b_cidr: str = "10.77.0.2/24"
) -> Iterator[NetnsPair]:
    """Create two namespaces joined by a veth pair; always removes them on exit."""
    pair = NetnsPair(a_cidr=a_cidr, b_cidr=b_cidr, mtu=mtu)
    with pair:
        yield pair


# ---------------------------------------------------------------------- private namespace

CLONE_NEWNET = 0x40000000


def run_in_private_netns(setup: Sequence[Sequence[str]], fn: Callable[[], T]) -> T:
    """Run ``fn()`` in a thread that first enters a new, private network namespace.

    Only that thread moves (``unshare(CLONE_NEWNET)``); the process and the test thread
    stay where they are.  The namespace's ``lo`` is brought up, then the ``setup``
    commands (``ip``, ``tc``...) run inside it (children inherit the thread's namespace).
    Sockets made by ``fn`` — an ``asyncio.run(...)`` works — live in that namespace; it
    disappears when the thread ends and the last of them is closed.  ``fn``'s exception,
    if any, is raised again here.  Needs root (the caller checks, with ``require``).
    """
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            if libc.unshare(CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)}")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, capture_output=True)
            for cmd in setup:
                subprocess.run(list(cmd), check=True, capture_output=True)
            result.append(fn())
        except BaseException as exc:  # handed to the calling thread
            error.append(exc)

    thread = threading.Thread(target=run, name="private-netns")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
