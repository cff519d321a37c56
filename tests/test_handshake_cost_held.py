"""A new handshake costs the same whatever the connections a server holds (issue 11:
"with 10,000 idle connections held, server CPU per new handshake at most 1.2x the figure
with none held"), shown with a counter, not a timing: the Python and C function calls the
server endpoint makes for the same handshakes (connect, complete, close, drain, forget)
with 10 and with 400 established connections held."""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.factory import client_connection
from quicflow.transport.receive import receive_datagram
from quicflow.transport.send import datagrams_to_send
from tests.support.memory_pair import _CERT, SERVER_ADDR

CLIENT_CFG = Configuration(alpn_protocols=["perf"], verify_peer=False)


def _server() -> Endpoint:
    cert, key = _CERT
    cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                        idle_timeout=600.0)
    return Endpoint(cfg, is_server=True)


class CallCounter:
    """Function calls (Python and C) made while ``active``."""

    def __init__(self) -> None:
        self.calls = 0
        self.active = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.active and event in ("call", "c_call"):
            self.calls += 1


def _handshake(server: Endpoint, port: int, now: float, keep: bool,
               counter: CallCounter, take: bool = True) -> Connection:
    """One handshake from a new client address; the server's calls are counted.
    ``take``: the new connection is taken from ``server.accepted`` as an I/O layer does."""
    addr = ("127.0.0.1", port)
    client = client_connection(CLIENT_CFG, SERVER_ADDR, now, server_name="localhost")
    sconn = None
    for _ in range(20):
        out = datagrams_to_send(client, now)
        counter.active = True
        for d in out:
            got = server.receive(d, addr, now)
            sconn = got if got is not None else sconn
        back = server.datagrams_to_send(sconn, now) if sconn is not None else []
        if take:
            server.accepted.clear()
        counter.active = False
        for d in back:
            receive_datagram(client, d, SERVER_ADDR, now)
        now += 0.001
        if sconn is not None and sconn.handshake_confirmed and client.handshake_complete \
                and not out and not back:
            break
    assert sconn is not None and sconn.handshake_confirmed and client.handshake_complete
    if not keep:
        client.close(0, "", now=now)
        counter.active = True
        for d in datagrams_to_send(client, now):
            server.receive(d, addr, now)
        sconn.handle_timer(now + 10)  # the draining period ends
        server.datagrams_to_send(sconn, now + 10)
        server.forget(sconn)
        counter.active = False
    return sconn


def _calls_for_new_handshakes(held: int) -> tuple[int, int]:
    server = _server()
    idle = CallCounter()
    for i in range(held):
        _handshake(server, 20000 + i, 0.0, True, idle)
    counter = CallCounter()
    sys.setprofile(counter)
    try:
        for i in range(12):
            _handshake(server, 10000 + i, 1.0, False, counter)
    finally:
        sys.setprofile(None)
    return counter.calls, len(server.all_connections)


def test_new_handshakes_make_the_same_calls_with_10_or_400_connections_held() -> None:
    few, held_few = _calls_for_new_handshakes(10)
    many, held_many = _calls_for_new_handshakes(400)
    assert held_few == 10 and held_many == 400  # the held ones are still there
    assert few > 12 * 500  # counted something real (~2,000 calls per handshake)
    # random CIDs and keys make a few calls differ (varint lengths...); an O(n) step
    # (a scan of the held connections or their CIDs) would add thousands
    assert abs(many - few) <= few * 0.02, (few, many)


def test_a_caller_that_never_takes_accepted_connections_holds_no_forgotten_one() -> None:
    """A sans-I/O server whose caller does not drain ``Endpoint.accepted`` (or drains it
    late): the connections it forgot are not kept alive there, however many came and
    went; the live ones stay, oldest first."""
    server = _server()
    counter = CallCounter()
    kept = [_handshake(server, 30000 + i, 0.0, True, counter, take=False) for i in range(2)]
    for i in range(50):
        _handshake(server, 31000 + i, 1.0, False, counter, take=False)
    assert list(server.accepted) == kept
    assert len(server.all_connections) == 2
    server.forget(kept[0])
    assert list(server.accepted) == [kept[1]]
