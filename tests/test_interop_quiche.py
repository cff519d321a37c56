"""Interoperability with quiche (npm ``@matrixai/quic``, run by Node) as the client of
quicflow's hq-interop server.

quiche's client is our own Node script (``tests/peers/quiche/peer.mjs``, package installed
once per cache key by ``tests/support/quiche.py``); quicflow's server runs in the test's
event loop (``tests/support/hq_peers.py``). Every file is compared by SHA-256 with the
served one, and the files quiche wrote too. The binding offers no server role that speaks
to an arbitrary client here and no cipher/key-update knobs, so the cases are the
client's: handshake, transfers, close with code 0, loss.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.apps import hq
from tests.support import hq_peers, quiche
from tests.support.hq_peers import Outcome, Site, make_site
from tests.support.quiche import QuicheProcess

pytestmark = pytest.mark.interop
KB, MB = 1024, 1024 * 1024


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    why = quiche.missing()
    require(why is None, why or "")
    quiche.build()
    return make_site(tmp_path)


def exchange(site: Site, timeout: float = 60, **kw: Any) -> Outcome:
    return hq_peers.exchange(QuicheProcess, "qf-server", site, timeout, **kw)


def test_quiche_client_handshake_transfers_and_close_with_code_0(site: Site) -> None:
    for i, size in enumerate([0, 13, 1200, 64 * KB + 1, 1 * MB, 3 * MB]):
        site.add(f"f{i}.bin", size)
    out = exchange(site)
    assert out.peer["handshake"]["alpn"] == hq.ALPN
    assert out.conn_stats["alpn"] == hq.ALPN
    # quiche closed with an application close, code 0, and we saw exactly that
    assert out.close is not None and out.close.by_peer and out.close.application
    assert out.close.error_code == 0


def test_quiche_client_key_updates_started_by_quicflow(site: Site) -> None:
    for name in ("a.bin", "b.bin", "c.bin"):
        site.add(name, 1 * MB)
    out = exchange(site, key_updates=True)
    assert out.conn_stats["key_updates_received"] == 3  # quiche answered each


def test_quiche_client_loss_and_reordering(site: Site) -> None:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    for i in range(4):
        site.add(f"l{i}.bin", 256 * KB)
    exchange(site, loss=0.05, timeout=90)
