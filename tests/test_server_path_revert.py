"""A server's apparent migration that does not hold (RFC 9000 §9.3.2, §9.3.3), on two
sans-I/O endpoints.

A client's packet copied and sent from another address (by an on-path attacker, or
a rebinding that is undone) is the newest: the server moves there and challenges the
new address. Before, it never looked back: nothing went to the old path, the new one
was never given up, and the unvalidated address's half-open idle limit (5 s) ended a
connection whose client was quiet. Now the server also challenges the path it left;
the client, still there, answers with a newer packet from it and the server goes back;
and without an answer from the new address by its validation deadline the server
reverts to the last validated path.
"""

from __future__ import annotations

from quicflow.crypto.epoch import Epoch
from quicflow.transport.connection import Connection
from quicflow.transport.pathprobe import probe_datagrams
from quicflow.transport.state import CLOSING

from .support.forge import forge, raw
from .support.memory_pair import SERVER_ADDR, MemoryPair, confirmed

ELSEWHERE = ("198.51.100.9", 40000)


def _moved() -> tuple[MemoryPair, Connection, Connection]:
    """An established pair; a copy of a client packet (a PING: not probing) arrives from
    ELSEWHERE, and the server moves there."""
    pair, client, server = confirmed(MemoryPair(seed=61))
    copy = forge(client, Epoch.ONE_RTT, raw(0x01), pad_to=1200)
    pair.server.receive(copy, ELSEWHERE, pair.now)
    assert server.peer_address == ELSEWHERE and not server.address_validated
    pair.server.datagrams_to_send(server, pair.now)  # its PATH_CHALLENGE: lost there
    return pair, client, server


def test_the_client_answers_the_old_paths_challenge_and_the_server_comes_back() -> None:
    pair, client, server = _moved()
    to_old = [(d, addr) for d, addr in probe_datagrams(server, pair.now)
              if tuple(addr) == pair.client_addr]
    assert len(to_old) == 1 and len(to_old[0][0]) >= 1200, "the old path is challenged"
    pair.client_ep.receive(to_old[0][0], SERVER_ADDR, pair.now)
    for d in pair.client_ep.datagrams_to_send(client, pair.now):
        pair.server.receive(d, pair.client_addr, pair.now)
    assert server.peer_address == pair.client_addr and server.address_validated
    assert server.previous_path is None and server.path_validation_deadline is None
    # and the connection carries data as before
    sid = client.open_stream()
    client.send_stream_data(sid, b"still here", end_stream=True)
    pair.run(lambda: sid in server.streams and server.read_stream(sid, 100) == b"still here")
    assert server.state < CLOSING and client.state < CLOSING


def test_without_an_answer_from_the_new_address_the_server_reverts() -> None:
    pair, client, server = _moved()
    deadline = server.path_validation_deadline
    assert deadline is not None
    pair.now += 10.0  # a quiet client: past the deadline and the 5 s half-open limit
    for _ in range(100):
        timer = server.timer()
        if timer is None or timer > pair.now:
            break
        server.handle_timer(timer)
        pair.server.datagrams_to_send(server, timer)
    assert server.state < CLOSING, server.close_error
    assert server.peer_address == pair.client_addr and server.address_validated
    assert server.path_changes == 2  # there and back
