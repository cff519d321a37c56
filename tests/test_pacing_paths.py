"""Which paths are paced (``Configuration.pacing``, ``path.set_pacing``): every path but a
loopback one by default, decided again when the path changes; an unpaced connection's
bulk turn is bounded by its window and the build, not by a pacer bucket (issue 11)."""

from __future__ import annotations

from typing import Any

import pytest

import quicflow.transport.send as send_module
from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.config import Configuration
from quicflow.transport.congestion import PACING_MULTIPLIER
from quicflow.transport.path import Path, apply_path, current_path, is_loopback
from tests.test_bulk_pacing import _paced_server
from tests.test_snapshot import _start

NET_ADDR = ("192.0.2.7", 4433)  # (TEST-NET-1: a path through a network)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.7", False), ("10.0.0.1", False), ("::ffff:192.0.2.7", False),
    ("2001:db8::1", False), ("::", False), ("0.0.0.0", False), ("1270.0.0.1", False),
])  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback((host, 443)) is loopback


def _multiplier(address: tuple[str, int], pacing: str) -> float:
    """The pacing multiplier of a new client connection to ``address``."""
    config = Configuration(alpn_protocols=["perf"], verify_peer=False, pacing=pacing)
    ep = Endpoint(config, is_server=False)
    return ep.connect(address, 1000.0, server_name="localhost").pacer.multiplier


@pytest.mark.parametrize(("address", "pacing", "paced"), [
    (("127.0.0.1", 4433), "auto", False), (("::1", 4433), "auto", False),
    (NET_ADDR, "auto", True), (("127.0.0.1", 4433), "on", True),
    (NET_ADDR, "off", False), (("127.0.0.1", 4433), "off", False),
])  # fmt: skip
def test_a_new_connection_is_paced_by_its_path(
    address: tuple[str, int], pacing: str, paced: bool
) -> None:
    assert _multiplier(address, pacing) == (PACING_MULTIPLIER if paced else 0.0)


def test_an_unknown_pacing_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="pacing must be"):
        Configuration(alpn_protocols=["perf"], pacing="fast").validate()


def test_the_decision_follows_the_path() -> None:
    """A path put back (a restore, ``apply_path``) and a server following its client to
    a new address decide again."""
    net, client, server = _start()  # (a simulated network path: paced)
    net.run(lambda: server.conn is not None and server.conn.handshake_confirmed)
    conn = server.conn
    assert conn is not None and conn.pacer.multiplier == PACING_MULTIPLIER
    path = current_path(conn)
    apply_path(conn, Path(peer_address=("127.0.0.1", 5555), validated=True))
    assert conn.pacer.multiplier == 0.0
    apply_path(conn, path)
    assert conn.pacer.multiplier == PACING_MULTIPLIER
    conn.on_peer_address(("127.0.0.2", 50000))  # (RFC 9000 §9.3: the server follows)
    assert conn.peer_address == ("127.0.0.2", 50000)
    assert conn.pacer.multiplier == 0.0
    conn.on_peer_address(NET_ADDR)
    assert conn.pacer.multiplier == PACING_MULTIPLIER


def _bulk_server(monkeypatch: pytest.MonkeyPatch, peer: tuple[str, int]) -> tuple[Any, float]:
    """test_bulk_pacing's server mid-download (all data queued, a window far larger than
    a run) with a 40-datagram bucket if it paces; its path's peer address then ``peer``
    (pacing decided for it)."""
    _, conn, now = _paced_server(monkeypatch, 40)
    path = current_path(conn)
    path.peer_address = peer
    apply_path(conn, path)
    return conn, now


def test_a_loopback_turn_sends_what_the_window_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpaced (a loopback peer): the turn builds whole batches until the window or the
    turn's limit ends it, and sets no pacer deadline; paced (a peer through a network),
    the same connection sends the 40-datagram bucket and waits for the pacer."""
    conn, now = _bulk_server(monkeypatch, ("127.0.0.1", 5555))
    sent = 0
    for _ in range(4):
        sent += len(send_module.build_datagrams(conn, now)[1])
    assert sent >= 4 * 64 and conn.pacer_deadline is None

    monkeypatch.undo()
    conn, now = _bulk_server(monkeypatch, NET_ADDR)
    assert len(send_module.build_datagrams(conn, now)[1]) == 40
    assert conn.pacer_deadline is not None and conn.pacer_deadline > now
    assert send_module.build_datagrams(conn, now)[1] == []


def test_the_command_line_sets_the_mode() -> None:
    """``--pacing`` reaches the client's configuration (auto by default); an unknown
    mode is a usage error."""
    from quicflow.cli.common import client_configuration
    from quicflow.cli.main import build_parser

    parser = build_parser()
    base = ["perf", "client", "--host", "127.0.0.1", "--port", "4433"]
    assert client_configuration(parser.parse_args(base), "perf").pacing == "auto"
    args = parser.parse_args([*base, "--pacing", "on"])
    assert client_configuration(args, "perf").pacing == "on"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*base, "--pacing", "fast"])
    assert exc.value.code == 2
