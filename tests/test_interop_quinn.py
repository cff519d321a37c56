"""Interoperability with quinn (Debian's crate registry), in both roles, over hq-interop.

quinn runs as our own peer program (``tests/peers/quinn``, built once per cache key by
``tests/support/quinn.py`` with cargo offline against ``/usr/share/cargo/registry``) in a
process of its own; the exchanges are those of ``tests/support/hq_peers.py``, every file
compared by SHA-256 with the served one.

quinn facts used here: its rustls client can be limited to one TLS 1.3 suite; it starts a
key update on request (``Connection::force_key_update``, hidden "for testing"), but
reports neither key updates nor the negotiated suite, so both are read on quicflow's side
(``key_updates_received`` counts the peer's answers to our updates and the updates it
started); its server sends Retry with ``ServerConfig::use_retry``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from quicflow.apps import hq
from tests.support import hq_peers, quinn
from tests.support.hq_peers import MB, ROLES, SUITES, Outcome, Site, peer_saw_close_0
from tests.support.quinn import QuinnProcess

pytestmark = pytest.mark.interop


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    return hq_peers.peer_site(quinn, tmp_path, require)


def exchange(role: str, site: Site, timeout: float = 120, **kw: Any) -> Outcome:
    return hq_peers.exchange(QuinnProcess, role, site, timeout, **kw)


@pytest.mark.parametrize("role", ROLES)
def test_handshake_and_close_with_code_0(site: Site, role: str) -> None:
    site.add("hello.txt", 13)
    out = exchange(role, site)
    assert out.peer["handshake"]["alpn"] == hq.ALPN
    assert out.conn_stats["alpn"] == hq.ALPN
    if role == "qf-client":  # quinn's server saw our CONNECTION_CLOSE with code 0
        assert peer_saw_close_0(out.peer) and out.peer["remote"] is True
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
    """quinn's rustls client is limited to the one suite."""
    hq_peers.cipher_suite_alone(exchange, role, site, suite, ("--suite", suite))


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicflow(site: Site, role: str) -> None:
    """Three files one after the other, quicflow starting a key update before each:
    quinn answers each one (packets in the new phase)."""
    hq_peers.key_updates_started_by_quicflow(exchange, role, site)


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_at_a_packet_count(site: Site, role: str) -> None:
    """quicflow starts key updates by itself once 20 packets went out with a key
    (``key_update_after``: the AEAD confidentiality limit made small): quinn answers
    them, the file arrives intact."""
    hq_peers.key_updates_at_a_packet_count(exchange, role, site)


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quinn(site: Site, role: str) -> None:
    """quinn starts a key update before each of three files (its client before each
    request, its server before each answer); quicflow follows every one."""
    for name in ("a.bin", "b.bin", "c.bin"):
        site.add(name, 1 * MB)
    out = exchange(role, site, peer_args=("--key-update",), sequential=True)
    assert out.conn_stats["key_updates_received"] == 3


def test_retry_from_quinn_server(site: Site) -> None:
    hq_peers.retry_from_peer_server(exchange, site)


@pytest.mark.parametrize("role", ROLES)
def test_loss_and_reordering(site: Site, role: str) -> None:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    hq_peers.loss_and_reordering(exchange, role, site, timeout=150)
