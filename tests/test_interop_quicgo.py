"""Interoperability with quic-go (Debian's packaged sources), in both roles, over hq-interop.

quic-go runs as our own peer program (``tests/peers/quicgo/main.go``, built once per cache
key by ``tests/support/quicgo.py``) in a process of its own; quicflow runs in the test's
event loop (``tests/support/hq_peers.py``). Every file is compared by SHA-256 with the
served one. Roles: ``qf-client`` is quicflow's hq client against quic-go's server,
``qf-server`` quic-go's client against quicflow's hq server.

quic-go facts used here: its TLS stack (qtls) lets a client restrict the TLS 1.3 suites
(``tls.Config.CipherSuites``); it starts key updates by itself after a packet count that
its API does not expose (the peer sets the internal ``KeyUpdateInterval`` variable); its
server sends Retry when ``Config.RequireAddressValidation`` says so. quicflow's server
does not send Retry yet, so Retry is tested with quicflow as the client only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.apps import hq
from tests.support import hq_peers, quicgo
from tests.support.hq_peers import MB, ROLES, SUITES, Outcome, Site, peer_saw_close_0
from tests.support.quicgo import QuicGoProcess

pytestmark = pytest.mark.interop


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    return hq_peers.peer_site(quicgo, tmp_path, require)


def exchange(role: str, site: Site, timeout: float = 120, **kw: Any) -> Outcome:
    return hq_peers.exchange(QuicGoProcess, role, site, timeout, **kw)


# ---------------------------------------------------------------------------- cases


@pytest.mark.parametrize("role", ROLES)
def test_handshake_and_close_with_code_0(site: Site, role: str) -> None:
    site.add("hello.txt", 13)
    out = exchange(role, site)
    assert out.peer["handshake"]["alpn"] == hq.ALPN
    assert out.conn_stats["alpn"] == hq.ALPN
    assert out.peer["handshake"]["cipher_suite"] == out.conn_stats["cipher_suite"]
    # the side that did not close saw an application close with code 0 from its peer
    assert peer_saw_close_0(out.peer)
    if role == "qf-client":
        assert out.peer["remote"] is True  # quic-go's server saw our CONNECTION_CLOSE(0)
    else:
        assert out.close is not None and out.close.by_peer and out.close.application
        assert out.close.error_code == 0


@pytest.mark.parametrize("role", ROLES)
def test_multistream_transfer(site: Site, role: str) -> None:
    hq_peers.multistream_transfer(exchange, role, site)


@pytest.mark.parametrize("role", ROLES)
def test_more_streams_than_the_stream_limit(site: Site, role: str) -> None:
    hq_peers.more_streams_than_the_stream_limit(exchange, role, site)


@pytest.mark.parametrize("suite", sorted(SUITES))
@pytest.mark.parametrize("role", ROLES)
def test_cipher_suite_alone(site: Site, role: str, suite: str) -> None:
    """quic-go's client is limited with tls.Config.CipherSuites."""
    out = hq_peers.cipher_suite_alone(exchange, role, site, suite, ("--suite", suite))
    assert out.peer["handshake"]["cipher_suite"] == int(SUITES[suite])


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicflow(site: Site, role: str) -> None:
    """Three files one after the other, quicflow starting a key update before each: quic-go
    follows all three, and quicflow sees each answered."""
    out = hq_peers.key_updates_started_by_quicflow(exchange, role, site)
    assert out.peer["key_updates_remote"] == 3
    assert out.peer["key_updates_local"] == 0


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_at_a_packet_count(site: Site, role: str) -> None:
    """quicflow starts key updates by itself once 20 packets went out with a key
    (``key_update_after``: the AEAD confidentiality limit made small): quic-go answers
    them, the file arrives intact."""
    out = hq_peers.key_updates_at_a_packet_count(exchange, role, site)
    assert out.peer["key_updates_local"] == 0


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicgo(site: Site, role: str) -> None:
    site.add("a.bin", 4 * MB)
    out = exchange(role, site, peer_args=("--key-update", "200"))
    started = out.peer["key_updates_local"]
    assert started >= 2
    # quicflow followed every update quic-go started, except possibly the last one, when
    # quic-go started it in its final packets (an update can only start once the previous
    # one is confirmed, RFC 9001 §6.1, so at most one can be unseen at the close)
    assert started - 1 <= out.conn_stats["key_updates_received"] <= started


def test_retry_from_quicgo_server(site: Site) -> None:
    """quic-go's server demands address validation: quicflow's client follows the Retry
    (new token, retry_source_connection_id checked) and the transfer completes."""
    hq_peers.retry_from_peer_server(exchange, site)


@pytest.mark.parametrize("role", ROLES)
def test_loss_and_reordering(site: Site, role: str) -> None:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    hq_peers.loss_and_reordering(exchange, role, site, timeout=150)
