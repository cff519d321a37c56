"""Interoperability with picoquic (PyPI ``aiopquic``, in a Python 3.12 venv of its own), in
both roles, over hq-interop.

picoquic runs as our own peer script (``tests/peers/picoquic_peer.py``, venv made once per
cache key by ``tests/support/picoquic.py``); quicflow runs in the test's event loop
(``tests/support/hq_peers.py``). Every file is compared by SHA-256 with the served one.
Roles: ``qf-client`` is quicflow's hq client against picoquic's server, ``qf-server``
picoquic's client against quicflow's hq server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.apps import hq
from quicflow.crypto.suites import CipherSuite
from tests.support import hq_peers, picoquic
from tests.support.hq_peers import ROLES, Outcome, Site, make_site
from tests.support.picoquic import PicoquicProcess

pytestmark = pytest.mark.interop

KB, MB = 1024, 1024 * 1024
SUITES = {
    "aes128": CipherSuite.AES_128_GCM_SHA256,
    "aes256": CipherSuite.AES_256_GCM_SHA384,
    "chacha20": CipherSuite.CHACHA20_POLY1305_SHA256,
}


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    why = picoquic.missing()
    require(why is None, why or "")
    picoquic.build()
    return make_site(tmp_path)


def exchange(role: str, site: Site, timeout: float = 60, **kw: Any) -> Outcome:
    return hq_peers.exchange(PicoquicProcess, role, site, timeout, **kw)


@pytest.mark.parametrize("role", ROLES)
def test_handshake_transfer_and_close_with_code_0(site: Site, role: str) -> None:
    for i, size in enumerate([0, 13, 1200, 64 * KB + 1, 1 * MB, 3 * MB]):
        site.add(f"f{i}.bin", size)
    out = exchange(role, site)
    assert out.peer["handshake"]["alpn"] == hq.ALPN
    assert out.conn_stats["alpn"] == hq.ALPN
    assert out.peer["code"] == 0  # the close picoquic reports
    if role == "qf-server":
        assert out.close is not None and out.close.by_peer and out.close.error_code == 0


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("role", ROLES)
def test_cipher_suite_alone(site: Site, role: str, suite: str) -> None:
    """The client offers one suite only (quicflow's cipher_suites, aiopquic's
    cipher_suite); the connection uses it and the file arrives intact."""
    site.add("data.bin", 512 * KB)
    if role == "qf-client":
        out = exchange(role, site, cipher_suites=[SUITES[suite]])
    else:
        out = exchange(role, site, peer_args=("--cipher-suite", str(int(SUITES[suite]))))
    assert out.conn_stats["cipher_suite"] == int(SUITES[suite])


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicflow(site: Site, role: str) -> None:
    for name in ("a.bin", "b.bin", "c.bin"):
        site.add(name, 1 * MB)
    out = exchange(role, site, key_updates=True)
    assert out.conn_stats["key_updates_received"] == 3  # picoquic answered each


def test_retry_from_picoquic_server(site: Site) -> None:
    """picoquic's server answers the first Initial with a Retry: quicflow's client follows
    it and the transfer completes."""
    site.add("a.bin", 1 * MB)
    out = exchange("qf-client", site, peer_args=("--retry",))
    assert out.conn_stats["retried"] is True


@pytest.mark.parametrize("role", ROLES)
def test_loss_and_reordering(site: Site, role: str) -> None:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    for i in range(4):
        site.add(f"l{i}.bin", 256 * KB)
    exchange(role, site, loss=0.05, timeout=90)
