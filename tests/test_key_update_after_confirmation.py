"""A server starts a key update only once its HANDSHAKE_DONE is acknowledged: before,
the client may not have confirmed the handshake, and a client that sees the new key
phase first may close with KEY_UPDATE_ERROR (quinn does; RFC 9001 §6: an endpoint that
has not confirmed the handshake cannot take part in a key update)."""

from __future__ import annotations

from .support.memory_pair import MemoryPair


def test_no_key_update_before_handshake_done_is_acknowledged() -> None:
    pair = MemoryPair(seed=5)
    pair.complete_server_handshake()
    client, server = pair.client, pair.server_conns[0]
    server.initiate_key_update()  # e.g. a handler right after the handshake
    first = pair.server.datagrams_to_send(server, pair.now)  # HANDSHAKE_DONE: lost
    assert first and server.key_phase_first_pn == -1  # still the handshake's keys
    assert server.handshake_done_unacked
    started: list[tuple[bool, bool]] = []  # (HANDSHAKE_DONE acked, client confirmed)

    def watch() -> bool:
        if server.key_phase_first_pn >= 0 and not started:
            started.append((not server.handshake_done_unacked, client.handshake_confirmed))
        return bool(started) and client.key_updates_received >= 1

    pair.run(watch, max_time=30)
    assert started == [(True, True)]
    assert not client.terminated and not server.terminated
