"""Shared fixtures and the prerequisite policy (see ``tests/support/prereq.py``).

``require(condition, why)`` skips a test whose prerequisite is missing, or fails it when
``QUICFLOW_REQUIRE_ALL=1`` (CI).  Markers (registered in pyproject.toml): ``interop``,
``netns`` (needs root: enforced here through ``require``), ``slow``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator

import pytest

from tests.support import prereq


@pytest.fixture
def require() -> Callable[[bool, str], None]:
    """``require(condition, why)``: skip/fail the test when a prerequisite is missing."""
    return prereq.require


@pytest.fixture
def require_root() -> None:
    prereq.require_root()


@pytest.fixture(params=["native", "python"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
           require: Callable[[bool, str], None]) -> str:
    """Each test twice: with the native engine, and with the pure-Python one
    (``QUICFLOW_ENGINE=python``, read when a connection makes its engine)."""
    if request.param == "python":
        monkeypatch.setenv("QUICFLOW_ENGINE", "python")
    else:
        from quicflow.crypto.extension import EXT

        require(EXT is not None, "the native extension is not built (make venv)")
    return str(request.param)


@pytest.fixture
def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``netns`` need root: skip them (or fail, under REQUIRE_ALL) without it."""
    if item.get_closest_marker("netns") is not None:
        prereq.require(prereq.is_root(), "needs root to create network namespaces")


@pytest.fixture(autouse=True)
def _wakeup_check(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """With ``QUICFLOW_WAKEUP_CHECK=1``: the lost wake-up check (tests/support/wakeups.py)
    on the loop of every runner the test makes, on every connection restored from a
    snapshot, and in the processes the test starts (forked workers, perf servers: they
    write to a spool directory, ``QUICFLOW_WAKEUP_SPOOL``); the test fails if it found
    any. ``QUICFLOW_WAKEUP_COVERAGE=FILE``: one JSON line per test there, saying what
    was checked (loops, connections, restores, in this process and the others)."""
    if os.environ.get("QUICFLOW_WAKEUP_CHECK") != "1":
        yield
        return
    from tests.support import wakeups  # (imported only when asked for)

    spool = str(tmp_path_factory.mktemp("wakeups"))
    monkeypatch.setenv("QUICFLOW_WAKEUP_SPOOL", spool)
    checks = wakeups.watch_runners(monkeypatch, spool)
    yield
    found = [c.report() for c in checks if c.violations]
    lines = wakeups.read_spool(spool)
    found += [f"(process {line['pid']}) {line['text']}" for line in lines
              if line["kind"] == "violation"]
    coverage = os.environ.get("QUICFLOW_WAKEUP_COVERAGE")
    if coverage:
        import json

        with open(coverage, "a") as f:
            f.write(json.dumps({
                "test": request.node.nodeid, "loops": len(checks),
                "connections": sum(len(c.connections_seen) for c in checks),
                "restores": sum(c.restores for c in checks),
                "checks": sum(c.checks for c in checks),
                "processes": len({line["pid"] for line in lines}),
                "process_connections": sum(line["kind"] == "seen" for line in lines),
                "process_restores": sum(line["kind"] == "restored" for line in lines),
                "violations": len(found)}) + "\n")
    if found:
        pytest.fail("lost wake-ups:\n" + "\n".join(found), pytrace=False)
