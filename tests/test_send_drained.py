"""A build that leaves nothing behind ends the build loop without a trailing empty call.

``_build_datagram`` returns a negative size when Initial/Handshake packets left their
spaces with no CRYPTO data, ACK or probe owed and every other epoch had nothing to write
(the server's first flight, a client's Initial). ``build_datagrams`` then stops instead
of calling it once more to find nothing. Checked two ways, over seeded in-memory
handshakes and transfers (loss and reordering bring PTO probes and retransmitted CRYPTO
data; a long certificate chain makes a flight of several datagrams):

- exactness: right after each such build, a further call builds nothing and changes no
  packet number;
- the general path: the same runs with the shortcut turned off (every build followed
  by the trailing call, as before) send the same datagrams (sizes, in order), end with
  the same counters at the same simulated time, and the data arrives intact.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from quicflow.tls.certs import generate_self_signed
from quicflow.transport import send
from quicflow.transport.config import Configuration
from tests.support.memory_pair import MemoryPair, upload

#: Ed25519 signatures are deterministic, so two runs send datagrams of the same sizes
_ED25519 = generate_self_signed(["localhost"], "ed25519")


def _server_config(long_chain: bool) -> Configuration:
    cert, key = _ED25519
    # long: the leaf sent four times, a Certificate message past one datagram's room
    return Configuration(alpn_protocols=["perf"], certificate_chain=[cert] * (4 if long_chain
                                                                              else 1),
                         private_key=key)


def _run(seed: int, loss: float, reorder: float, long_chain: bool, shortcut: bool,
         monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    sizes: list[tuple[bool, int]] = []
    drained = [0]
    build = send._build_datagram

    def checked(conn: Any, now: float, buf: bytearray, room: int, seal: list[Any]) -> int:
        size = build(conn, now, buf, room, seal)
        if size:
            sizes.append((conn.is_client, abs(size)))  # each datagram, in order
        if size < 0:
            drained[0] += 1
            # exact: a next call now builds nothing and numbers no packet
            pns = [space.next_pn for space in conn.spaces]
            scratch: list[Any] = []
            assert build(conn, now, bytearray(), room, scratch) == 0
            assert not scratch and pns == [space.next_pn for space in conn.spaces]
            if not shortcut:
                size = -size  # the general path: build_datagrams calls once more
        return size

    monkeypatch.setattr(send, "_build_datagram", checked)
    pair = MemoryPair(seed=seed, loss=loss, reorder=reorder,
                      server_config=_server_config(long_chain))
    data = bytes(range(256)) * 256
    got = upload(pair, data)
    (server,) = pair.server_conns
    monkeypatch.undo()
    counters = [(c.packets_sent, c.datagrams_sent, c.bytes_sent, c.ack_frames_sent)
                for c in (pair.client.counters, server.counters)]
    return {"sizes": sizes, "drained": drained[0], "counters": counters, "now": pair.now,
            "intact": hashlib.sha256(got).digest() == hashlib.sha256(data).digest()}


@pytest.mark.parametrize(("seed", "loss", "reorder", "long_chain"),
                         [(1, 0.0, 0.0, False), (1, 0.0, 0.0, True), (3, 0.1, 0.1, False),
                          (4, 0.2, 0.1, True), (7, 0.3, 0.0, False)])
def test_a_drained_build_ends_the_loop_as_the_trailing_call_did(
        seed: int, loss: float, reorder: float, long_chain: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    short = _run(seed, loss, reorder, long_chain, True, monkeypatch)
    general = _run(seed, loss, reorder, long_chain, False, monkeypatch)
    assert short["intact"] and general["intact"]
    assert short["drained"] >= 2  # the client's Initial and the server's first flight
    assert short["drained"] == general["drained"]
    assert short["sizes"] == general["sizes"]
    assert short["counters"] == general["counters"]
    assert short["now"] == general["now"]


def test_a_flight_that_needs_more_room_is_not_drained(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Certificate past the first datagram: the build that leaves CRYPTO data behind
    returns its size, and the next datagram carries the rest."""
    results: list[int] = []
    build = send._build_datagram

    def seen(conn: Any, now: float, buf: bytearray, room: int, seal: list[Any]) -> int:
        size = build(conn, now, buf, room, seal)
        if not conn.is_client:
            results.append(size)
        return size

    monkeypatch.setattr(send, "_build_datagram", seen)
    pair = MemoryPair(server_config=_server_config(True))
    for d in pair.client_ep.datagrams_to_send(pair.client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    (conn,) = pair.server_conns
    flight = pair.server.datagrams_to_send(conn, pair.now)
    assert len(flight) >= 2
    # every datagram but the last left data behind; the last drained the flight
    assert all(size > 0 for size in results[:-1]) and results[-1] < 0
    assert len(results) == len(flight)
    assert not conn.spaces[1].crypto_send.has_data_to_send()
