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
from tests.support import hq_peers, picoquic
from tests.support.hq_peers import KB, MB, ROLES, SUITES, Outcome, Site
from tests.support.picoquic import PicoquicProcess

pytestmark = pytest.mark.interop


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    return hq_peers.peer_site(picoquic, tmp_path, require)


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
    """aiopquic's client is limited with its cipher_suite option."""
    hq_peers.cipher_suite_alone(exchange, role, site, suite,
                                ("--cipher-suite", str(int(SUITES[suite]))))


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_quicflow(site: Site, role: str) -> None:
    hq_peers.key_updates_started_by_quicflow(exchange, role, site)  # picoquic answered each


@pytest.mark.parametrize("role", ROLES)
def test_key_updates_started_by_picoquic(site: Site, role: str) -> None:
    """picoquic starts a key update every 20 packets it sends (aiopquic's
    ``key_update_interval``, picoquic's crypto epoch length), no sooner than its time
    guard after the previous one: its server during the downloads, its client with the
    ACKs it sends. quicflow starts none here, so each update it counts is picoquic's; it
    follows each and the files arrive intact."""
    for name in ("a.bin", "b.bin", "c.bin"):
        site.add(name, 1 * MB)
    out = exchange(role, site, peer_args=("--key-update-interval", "20"), sequential=True)
    assert out.conn_stats["key_updates_received"] >= 1
    assert out.peer["code"] == 0


def test_retry_from_picoquic_server(site: Site) -> None:
    """picoquic's server answers the first Initial with a Retry: quicflow's client follows
    it and the transfer completes."""
    hq_peers.retry_from_peer_server(exchange, site)


@pytest.mark.parametrize("role", ROLES)
def test_loss_and_reordering(site: Site, role: str) -> None:
    """5 % loss and 5 % reordering each way through tests/support/relay.py."""
    hq_peers.loss_and_reordering(exchange, role, site, timeout=90)


def test_heavy_loss_download(site: Site) -> None:
    """20 % loss and reordering each way, quicflow downloading: picoquic resends in
    pieces of a few hundred bytes (and some of 6 to 30), which quicflow stores out of
    order up to the window it gave (RFC 9000 §2.2). Charged 1 KiB each, they once
    filled a 1 MiB stream's charge with 579 KB behind a 549-byte gap: every packet was
    refused from then on, the gap's bytes with them, and the download stalled until the
    idle timeout (2 of 4 runs)."""
    hq_peers.heavy_loss_download(exchange, site, timeout=60)


@pytest.mark.parametrize("role", ROLES)
def test_ack_frequency_extension(site: Site, role: str) -> None:
    """draft-ietf-quic-ack-frequency: this picoquic (1.1.53) sends min_ack_delay (1000
    µs) with the code point of the latest drafts (0xff04de1b), so quicflow asks it for
    fewer ACKs with ACK_FREQUENCY frames (type 0xaf, four varints), which it takes (a
    frame it could not parse would close the connection), and it sends its own, which
    quicflow takes: the files arrive intact (hashes) and the close is clean. (quicflow
    asks only while it has data to send: as the downloading client it asks nothing.)"""
    for i, size in enumerate([1 * MB, 3 * MB]):
        site.add(f"af{i}.bin", size)
    out = exchange(role, site)
    assert out.conn_stats["peer_min_ack_delay"] is not None
    if role == "qf-server":
        assert out.conn_stats["ack_frequency_sent"] >= 1
    else:
        assert out.conn_stats["ack_frequency_sent"] == 0
    assert out.conn_stats["ack_frequency_received"] >= 1
    assert out.peer["code"] == 0
