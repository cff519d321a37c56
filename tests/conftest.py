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
def _wakeup_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With ``QUICFLOW_WAKEUP_CHECK=1``: the lost wake-up check (tests/support/wakeups.py)
    on the loop of every runner the test makes; the test fails if it found any."""
    if os.environ.get("QUICFLOW_WAKEUP_CHECK") != "1":
        yield
        return
    from tests.support import wakeups  # (imported only when asked for)

    checks = wakeups.watch_runners(monkeypatch)
    yield
    found = [c.report() for c in checks if c.violations]
    if found:
        pytest.fail("lost wake-ups:\n" + "\n".join(found), pytrace=False)
