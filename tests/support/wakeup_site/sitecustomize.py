"""The lost wake-up check in a Python process the tests started (test-only).

``tests/support/takeover.py`` puts this directory on a perf server's ``PYTHONPATH``
when the test runs with ``QUICFLOW_WAKEUP_CHECK=1`` (``tests/conftest.py`` sets
``QUICFLOW_WAKEUP_SPOOL``): Python imports this module at start-up, and every runner of
the process gets the check (tests/support/wakeups.py), which writes what it finds to
the spool; the test that started the process fails on it.
"""

import os
import sys

if os.environ.get("QUICFLOW_WAKEUP_CHECK") == "1" and os.environ.get("QUICFLOW_WAKEUP_SPOOL"):
    sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))))
    from tests.support.wakeups import install_in_process

    install_in_process(os.environ["QUICFLOW_WAKEUP_SPOOL"])
