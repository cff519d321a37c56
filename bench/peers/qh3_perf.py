"""perf (ALPN perf) server and client on qh3; see perfpeer.py for usage."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from perfpeer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("qh3"))
