"""Interoperability with quiche (npm ``@matrixai/quic`` 2.0.9, a Node binding with a
prebuilt quiche and BoringSSL), hq-interop in both roles.

quiche's client and server are our own Node script (``tests/peers/quiche/peer.mjs``,
package installed once per cache key by ``tests/support/quiche.py``); quicflow runs in
the test's event loop (``tests/support/hq_peers.py``). Every file is compared by SHA-256
with the served one, and the files quiche wrote too.

Certificates: the server certificate is issued by a test CA, and quiche's client
verifies it against that CA. The tests' usual self-signed leaf cannot be used as its own
trust anchor by this BoringSSL: a certificate is accepted as its own issuer only when its
keyUsage (if present) allows keyCertSign, and the leaf's allows digitalSignature only, so
verification ends in unknown_ca (TLS alert 48, CRYPTO_ERROR 0x130). Tried: the same
self-signed leaf with keyCertSign added, or without a keyUsage extension, verifies; a CA
and a leaf it issued, the real-world set-up, verifies too and is what these tests use.

What the binding cannot do, so it is not tested: choose TLS 1.3 cipher suites (BoringSSL
has no setting for them and the binding's Config none; so "each suite alone" is quicflow
offering or accepting one suite, in both roles), start a key update (quiche has no API
for it: the binding's Connection methods are setKeylog, setSession, recv, send*,
stream*, dgram*, timeout, onTimeout, probePath, migrate*, *Cid*, close, the getters,
stats, pathStats, sendAckEliciting: no key update; quiche only answers them). Its server
(``QUICServer``) always sends a Retry, so every case with our client follows one.

The peer script works around two defects on quiche's side, found by these tests: a FIN
written after all of a stream's data went out is never sent (quiche only sends a FIN
that finds data still unsent; a response whose FIN was written a moment late never
ended), so the script hands quiche the last bytes and the FIN together; and the binding
sometimes loses quiche's expired timer (after a tail loss its server sent nothing more,
not even a probe: a capture showed 7.7 s of silence with data outstanding), so the
script drives an expired timer itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.apps import hq
from tests.support import hq_peers, quiche
from tests.support.hq_peers import ROLES, SUITES, Outcome, Site, make_site
from tests.support.quiche import QuicheProcess

pytestmark = pytest.mark.interop
KB, MB = 1024, 1024 * 1024


def _require(require: Callable[[bool, str], None]) -> None:
    why = quiche.missing()
    require(why is None, why or "")
    quiche.build()


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    _require(require)
    return make_site(tmp_path, ca_name="quiche")


def exchange(role: str, site: Site, timeout: float = 60, **kw: Any) -> Outcome:
    return hq_peers.exchange(QuicheProcess, role, site, timeout, **kw)


def closed_with_code_0(role: str, out: Outcome) -> None:
    """The application close with code 0, seen by both sides."""
    assert hq_peers.peer_saw_close_0(out.peer)
    if role == "qf-server":  # quiche's client closed: we saw exactly that
        assert out.close is not None and out.close.by_peer and out.close.application
        assert out.close.error_code == 0
    else:  # we closed: quiche's server saw it as the peer's close
        assert out.peer["remote"] is True


@pytest.mark.parametrize("role", ROLES)
def test_handshake_transfers_and_close_with_code_0(site: Site, role: str) -> None:
    for i, size in enumerate([0, 13, 1200, 64 * KB + 1, 1 * MB, 3 * MB]):
        site.add(f"f{i}.bin", size)
    out = exchange(role, site)
    assert out.peer["handshake"]["alpn"] == hq.ALPN
    assert out.conn_stats["alpn"] == hq.ALPN
    closed_with_code_0(role, out)


def test_retry_from_quiche_server(site: Site) -> None:
    """quiche's server answers the first Initial with a Retry (always): our client follows
    it (token, retry_source_connection_id checked) and the transfer completes."""
    site.add("a.bin", 1 * MB)
    out = exchange("qf-client", site)
    assert out.conn_stats["retried"] is True
    closed_with_code_0("qf-client", out)


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("role", ROLES)
def test_cipher_suite_alone(site: Site, role: str, suite: str) -> None:
    """quicflow offers (client) or accepts (server) one suite only; quiche, which offers
    and accepts all three, uses it."""
    site.add("data.bin", 512 * KB)
    out = exchange(role, site, cipher_suites=[SUITES[suite]])
    assert out.conn_stats["cipher_suite"] == int(SUITES[suite])
    closed_with_code_0(role, out)


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicflow(site: Site, role: str) -> None:
    for name in ("a.bin", "b.bin", "c.bin"):
        site.add(name, 1 * MB)
    out = exchange(role, site, key_updates=True)
    assert out.conn_stats["key_updates_received"] == 3  # quiche answered each


@pytest.mark.parametrize("role", ROLES)
def test_loss_and_reordering(site: Site, role: str) -> None:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    for i in range(4):
        site.add(f"l{i}.bin", 256 * KB)
    exchange(role, site, loss=0.05, timeout=90)


def test_quiche_client_refuses_a_self_signed_leaf_as_trust_anchor(
        tmp_path: Path, require: Callable[[bool, str], None]) -> None:  # fmt: skip
    """Why the site's certificate is CA-issued (module docstring): with the tests' usual
    self-signed leaf as its trust anchor, quiche's client fails verification with
    unknown_ca, CRYPTO_ERROR 0x130 (304)."""
    _require(require)
    plain = make_site(tmp_path)
    plain.add("a.bin", 100)
    with pytest.raises(AssertionError) as info:
        exchange("qf-server", plain, timeout=30)
    assert "native TLS verification" in str(info.value)
    assert "errorCode: 304" in str(info.value)
