"""The optional C extension ``quicflow.crypto._native``, loaded once for the package.

``EXT`` is the module or ``None`` (not built: no compiler, no libssl-dev, or
``QUICFLOW_NO_NATIVE``); ``IMPORT_ERROR`` says why. ``python_forced()`` is true when
``QUICFLOW_ENGINE=python`` asks for the pure-Python code everywhere.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

ENGINE_ENV = "QUICFLOW_ENGINE"

EXT: Any
IMPORT_ERROR: str | None
try:
    EXT = importlib.import_module("quicflow.crypto._native")
    IMPORT_ERROR = None
except ImportError as exc:
    EXT = None
    IMPORT_ERROR = str(exc)


def python_forced() -> bool:
    """``QUICFLOW_ENGINE=python`` (or ``software``/``py``) is set."""
    return os.environ.get(ENGINE_ENV, "").strip().lower() in ("python", "software", "py")


def native_for_keys() -> Any:
    """The extension for per-connection key set-up (long-header protection, key
    derivation), or ``None`` when it is missing or the pure-Python code is forced."""
    return None if EXT is None or python_forced() else EXT
