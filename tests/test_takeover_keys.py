"""A same-host successor keeps its predecessor's keys and 0-RTT record (migration/
server_keys.py): clients resume their sessions after a restart, with 0-RTT, while a
ticket whose 0-RTT the old process accepted gets none from the successor (RFC 8446 §8:
no replay); keys the successor's configuration sets stay its own. Real loopback sockets,
every transfer checked by SHA-256 (tests/support/echo_proto.py)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.endpoint.endpoint import SECRET_FIELDS, Endpoint
from quicflow.migration.server_keys import (
    SecretsError,
    adopt_secrets,
    merge_strikes,
    seal_secrets,
    seal_strikes,
)
from quicflow.tls.tickets import SessionTicket, SessionTicketCache, StrikeRegister
from tests.support import echo_proto
from tests.support.quic_helpers import ca, client_config, issued, run, server_config

CA_NAME = "takeover-keys"


async def _exchange(conn: quicflow.QuicConnection, seed: int) -> None:
    reader, writer = await conn.create_stream()
    result = await echo_proto.client_exchange(
        reader, writer, upload=echo_proto.payload(seed, 50_000), download=80_000, seed=seed)
    assert result["ok"], result


async def _connect(port: int, cfg: Any, seed: int) -> quicflow.QuicConnection:
    """One connection: its request and upload written before the handshake completes
    (0-RTT when a ticket allows it); returns it closed, its flags readable."""
    async with quicflow.connect("127.0.0.1", port, configuration=cfg,
                                wait_connected=False) as conn:
        await _exchange(conn, seed)
        await conn.wait_connected()
    return conn


async def _wait_ticket(cache: SessionTicketCache, count: int) -> None:
    for _ in range(300):
        if len(cache) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no session ticket")


def _one_ticket(cache: SessionTicketCache) -> tuple[str, SessionTicket]:
    (server, tickets), = cache.tickets.items()
    return server, tickets[-1]


@pytest.mark.parametrize("successor_keys", ["unset", "its-own"])
def test_successor_resumes_the_predecessors_sessions(tmp_path: Path,
                                                     successor_keys: str) -> None:
    """A ticket from the old process resumes on the successor with 0-RTT; one whose 0-RTT
    the old process accepted resumes there without 0-RTT (its data goes again in
    1-RTT); a successor configured with its own ticket key keeps it (full handshake)."""
    authority = ca(CA_NAME)
    path = str(tmp_path / "handoff")

    async def main() -> list[quicflow.QuicConnection]:
        async with contextlib.AsyncExitStack() as stack:
            return await body(stack)

    async def body(stack: contextlib.AsyncExitStack) -> list[quicflow.QuicConnection]:
        cred = issued(CA_NAME, "localhost")
        old = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                   configuration=server_config(cred))
        port = old.address[1]
        cache = SessionTicketCache(per_server=4)
        cfg = client_config(authority.cert_pem, session_ticket_cache=cache, early_data=True)
        # an idle connection that lives across the takeover, and two tickets from it and
        # from a second connection
        keep = await stack.enter_async_context(
            quicflow.connect("127.0.0.1", port, configuration=cfg))
        await _exchange(keep, 1)
        await _wait_ticket(cache, 1)
        server, first = _one_ticket(cache)
        replayed = await _connect(port, cfg, 2)  # uses ``first``, with 0-RTT
        assert replayed.session_resumed and replayed.early_data_accepted
        await _wait_ticket(cache, 1)
        handed = old.handoff(path)
        successor_cfg = server_config(cred)
        if successor_keys == "its-own":
            successor_cfg.ticket_key = bytes(32)
        new = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                   configuration=successor_cfg, takeover=path)
        try:
            assert await asyncio.wait_for(handed, 30) == 1
            fresh = await _connect(port, cfg, 3)  # the second connection's ticket
            cache.put(server, first)  # the ClientHello of ``replayed`` again
            again = await _connect(port, cfg, 4)
            await _exchange(keep, 5)  # the idle connection moved and works
        finally:
            new.close()
        return [fresh, again]

    fresh, again = run(main(), 60)
    if successor_keys == "its-own":
        assert not fresh.session_resumed and not again.session_resumed
        return
    assert fresh.session_resumed and fresh.early_data_accepted
    assert again.session_resumed and not again.early_data_accepted
    assert again.conn.counters.zero_rtt_sent > 0  # it tried; the data came through in 1-RTT


def test_sealed_records_open_only_with_the_successors_key() -> None:
    old = Endpoint(server_config(issued(CA_NAME, "localhost")), is_server=True)
    new = Endpoint(server_config(issued(CA_NAME, "localhost")), is_server=True)
    assert set(new.generated_secrets) == set(SECRET_FIELDS)
    key, wrong = bytes(range(32)), bytes(32)
    sealed = seal_secrets(old, key)
    with pytest.raises(SecretsError):
        adopt_secrets(new, sealed, wrong)
    tampered = sealed[:-2] + ("00" if sealed[-2:] != "00" else "01")
    with pytest.raises(SecretsError):
        adopt_secrets(new, tampered, key)
    assert sorted(adopt_secrets(new, sealed, key)) == sorted(SECRET_FIELDS)
    assert new.secrets() == old.secrets()
    assert new.admission.reset_key == old.configuration.reset_key
    # the 0-RTT record: merged, or the register closes for two windows without it
    register = old.configuration.strike_register
    assert isinstance(register, StrikeRegister)
    assert register.admit(b"ticket-1", 1000.0)
    theirs = new.configuration.strike_register
    assert isinstance(theirs, StrikeRegister)
    record = seal_strikes(old, key)
    assert merge_strikes(new, record, wrong, 1001.0) == 0  # does not open: closed
    assert not theirs.admit(b"ticket-2", 1001.0 + 2 * theirs.window - 1)
    assert theirs.admit(b"ticket-2", 1001.0 + 2 * theirs.window + 1)
    again = Endpoint(server_config(issued(CA_NAME, "localhost")), is_server=True)
    assert merge_strikes(again, record, key, 1001.0) == 1
    mine = again.configuration.strike_register
    assert isinstance(mine, StrikeRegister)
    assert not mine.admit(b"ticket-1", 1002.0)  # the predecessor's: a replay
    assert mine.admit(b"ticket-3", 1002.0)
    assert mine.admit(b"ticket-1", 1000.0 + 2 * mine.window + 0.5)  # expired
