"""QPACK (RFC 9204) through ``pylsqpack``, the optional ``quicflow[h3]`` extra."""

from __future__ import annotations

import importlib
from typing import Any

INSTALL_HINT = "HTTP/3 needs the QPACK library pylsqpack: pip install 'quicflow[h3]'"


def require_pylsqpack() -> Any:
    """The pylsqpack module, or ImportError naming ``pip install 'quicflow[h3]'``."""
    try:
        return importlib.import_module("pylsqpack")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
