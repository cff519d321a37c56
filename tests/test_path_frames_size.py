"""Datagram sizes around path validation (RFC 9000 §8, §8.2.1, §8.2.2), on two sans-I/O
endpoints.

- A datagram with PATH_CHALLENGE or PATH_RESPONSE is expanded to at least 1200 bytes
  (a path that cannot carry 1200 bytes is not validated), unless the anti-amplification
  limit of an unvalidated address does not allow it. Before, both went in ordinary
  small packets (a 40-byte PATH_RESPONSE; a 44-byte PATH_CHALLENGE to a client's new
  address, with 3,600 bytes of credit).
- No more than three times what came from an address not yet validated goes there: a
  path MTU probe (1,452 bytes) went to a client's new address after a 50-byte packet
  from it, and four PATH_CHALLENGEs in one 65-byte probing packet got four 195-byte
  answers.
"""

from __future__ import annotations

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.pathprobe import probe_datagrams
from quicflow.wire import frame_types as F
from quicflow.wire.frames import encode_frame

from .support.forge import forge, raw
from .support.memory_pair import SERVER_ADDR, MemoryPair, confirmed

NEW = ("198.51.100.9", 40000)


def _confirmed() -> tuple[MemoryPair, Connection, Connection]:
    return confirmed(MemoryPair(seed=51))


def _challenges(*datas: bytes) -> bytes:
    out = bytearray()
    for data in datas:
        encode_frame(F.PathChallenge(data=data), out)
    return bytes(out)


def test_path_response_datagrams_have_1200_bytes() -> None:
    pair, client, server = _confirmed()
    # the server answers the client's challenge on the current path
    pair.server.receive(forge(client, Epoch.ONE_RTT, _challenges(b"ABCDEFGH") + bytes(1100)),
                        pair.client_addr, pair.now)
    out = pair.server.datagrams_to_send(server, pair.now)
    assert not server.path_challenges_received, "answered"
    assert len(out) == 1 and len(out[0]) >= 1200, [len(d) for d in out]
    # and the client the server's
    pair.client_ep.receive(forge(server, Epoch.ONE_RTT,
                                 _challenges(b"HGFEDCBA") + bytes(1100)), SERVER_ADDR, pair.now)
    out = pair.client_ep.datagrams_to_send(client, pair.now)
    assert not client.path_challenges_received, "answered"
    assert len(out) == 1 and len(out[0]) >= 1200, [len(d) for d in out]


def test_a_path_challenge_to_a_clients_new_address_has_1200_bytes() -> None:
    pair, client, server = _confirmed()
    moved = forge(client, Epoch.ONE_RTT, raw(0x01), pad_to=1200)  # (a PING: not probing)
    moved = forge(client, Epoch.ONE_RTT, raw(0x01) + bytes(1200 - len(moved) + 3))
    assert len(moved) >= 1200
    pair.server.receive(moved, NEW, pair.now)
    assert server.peer_address == NEW and not server.address_validated
    out = pair.server.datagrams_to_send(server, pair.now)
    assert out and all(len(d) >= 1200 for d in out), [len(d) for d in out]
    assert sum(len(d) for d in out) <= 3 * len(moved)


def test_nothing_beyond_three_times_what_a_new_address_sent() -> None:
    """A 50-byte packet from a new address (a client that moved): at most 150 bytes go
    there until the address is validated, a path MTU probe included."""
    pair, client, server = _confirmed()
    pair.now += 2.0  # (path MTU discovery would have its probe due)
    small = forge(client, Epoch.ONE_RTT, raw(0x01))
    pair.server.receive(small, NEW, pair.now)
    assert server.peer_address == NEW and not server.address_validated
    sent = 0
    for _ in range(5):
        sent += sum(len(d) for d in pair.server.datagrams_to_send(server, pair.now))
        timer = server.timer()
        if timer is not None and timer <= pair.now + 0.5:
            pair.now = max(pair.now, timer)
            server.handle_timer(pair.now)
    assert 0 < sent <= 3 * len(small)
    assert server.pmtud.probe_pn < 0, "no path MTU probe to the unvalidated address"


def test_challenges_from_another_address_get_one_answer_within_the_limit() -> None:
    """Four PATH_CHALLENGEs in one probing packet from another address: the answer
    there stays within three times the datagram (one PATH_RESPONSE)."""
    pair, client, server = _confirmed()
    probe = forge(client, Epoch.ONE_RTT, _challenges(*(bytes([i]) * 8 for i in range(4))))
    pair.server.receive(probe, NEW, pair.now)
    assert server.peer_address != NEW, "a probing packet does not move the server"
    answers = [d for d, addr in probe_datagrams(server, pair.now) if tuple(addr) == NEW]
    assert len(answers) == 1
    assert sum(len(d) for d in answers) <= 3 * len(probe)
