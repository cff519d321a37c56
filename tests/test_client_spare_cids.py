"""When a client gives the server its spare connection IDs: once its handshake is
confirmed (HANDSHAKE_DONE), not when it completes. A client may not migrate before
confirmation (RFC 9000 §9), so the spares are not needed earlier, and a client that
closes right after its handshake (connect, one request, close) never makes them: no
CIDs, reset tokens and NEW_CONNECTION_ID frames for the server to parse and store."""

from __future__ import annotations

from quicflow.transport.events import ConnectionTerminated
from tests.support.memory_pair import MemoryPair


def test_spare_cids_go_out_once_the_handshake_is_confirmed() -> None:
    pair = MemoryPair(seed=11)
    pair.complete_server_handshake()
    client, server = pair.client, pair.server_conns[0]
    assert len(client.host_cids) == 1  # complete, not confirmed: only the first CID
    assert len(server.peer_cids) == 1
    pair.run(lambda: client.handshake_confirmed and len(server.peer_cids) > 1)
    limit = min(server.configuration.active_connection_id_limit, 4)
    assert len(client.host_cids) == limit
    pair.run(lambda: len(server.peer_cids) == limit)  # the server holds every spare
    assert sorted(p.cid for p in server.peer_cids) == sorted(c.cid for c in client.host_cids)


def test_a_client_closing_before_confirmation_issues_no_spares() -> None:
    pair = MemoryPair(seed=12)
    pair.complete_server_handshake()
    client, server = pair.client, pair.server_conns[0]
    client.close(0, "done", now=pair.now)
    seen: list[ConnectionTerminated] = []

    def server_closed() -> bool:
        seen.extend(e for e in server.pop_events() if isinstance(e, ConnectionTerminated))
        return bool(seen)

    pair.run(server_closed)
    pair.run(lambda: client.terminated)
    assert seen[0].error_code == 0 and seen[0].by_peer
    assert client.next_host_cid_seq == 1  # HANDSHAKE_DONE came while closing: no spares
    assert len(server.peer_cids) == 1
