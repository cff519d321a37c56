"""The prerequisite policy: skip normally, fail under ``QUICFLOW_REQUIRE_ALL=1``.

A test that needs something the machine may lack (root, a program such as ``gtlsserver``
or ``tshark``, a Python package such as ``aioquic`` or ``qh3``) calls ``require`` — the
fixture from ``tests/conftest.py`` or this module's function, which is the same thing::

    def test_against_aioquic(require):
        require(have_module("aioquic"), "aioquic is not installed (pip install -e '.[test]')")

Normally a missing prerequisite skips the test.  With ``QUICFLOW_REQUIRE_ALL=1`` (as in
CI, see ``.ci/run``) it fails the test with the reason: in CI a skip is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

REQUIRE_ALL_ENV = "QUICFLOW_REQUIRE_ALL"


def require_all() -> bool:
    """True when every prerequisite must be present (missing ones fail, not skip)."""
    return os.environ.get(REQUIRE_ALL_ENV, "").strip().lower() not in ("", "0", "false", "no")


def require(condition: bool, why: str) -> None:
    """Skip (or, with QUICFLOW_REQUIRE_ALL=1, fail) the current test unless *condition*."""
    if condition:
        return
    if require_all():
        pytest.fail(f"missing prerequisite ({REQUIRE_ALL_ENV}=1): {why}", pytrace=False)
    pytest.skip(f"missing prerequisite: {why}")


def is_root() -> bool:
    return os.geteuid() == 0


def have_binary(name: str) -> bool:
    return shutil.which(name) is not None


def have_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require_root() -> None:
    require(is_root(), "needs root (run the tests as root, as CI does)")


def require_binary(name: str, package: str) -> None:
    require(have_binary(name), f"program {name!r} not found (Debian package {package}; make deps)")


def require_module(name: str) -> None:
    require(have_module(name), f"Python package {name!r} not installed (make venv)")
