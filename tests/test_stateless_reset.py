"""Stateless reset (RFC 9000 §10.3): tokens derived from a static key, the server's reset
for short-header packets it cannot place, the size rule that prevents loops, the rate
limit, and a client that drops the connection at once — after a server restart, over
real sockets."""

from __future__ import annotations

import asyncio
import hmac
import os
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import quicflow
from quicflow.crypto.stateless_reset import stateless_reset_token
from quicflow.endpoint.admission import Admission
from quicflow.endpoint.endpoint import Endpoint
from quicflow.endpoint.stateless import MIN_RESET_SIZE
from quicflow.transport.events import ConnectionTerminated
from tests.support.memory_pair import SERVER_ADDR, MemoryPair
from tests.support.prereq import require
from tests.support.quic_helpers import client_config, run
from tests.test_retry_tokens import server_config

KEY = b"k" * 32


def test_tokens_derive_from_the_key_on_every_endpoint() -> None:
    pair = MemoryPair(server_config=server_config(reset_key=KEY))
    pair.run(lambda: pair.client.handshake_confirmed and len(pair.client.peer_cids) > 1)
    server = pair.server_conns[0]
    for entry in server.host_cids:
        assert entry.reset_token == stateless_reset_token(KEY, entry.cid)
    # what the client was told (transport parameter and NEW_CONNECTION_ID) is the same
    told = {e.cid: e.reset_token for e in pair.client.peer_cids}
    assert told == {e.cid: e.reset_token for e in server.host_cids if e.cid in told}


@pytest.mark.parametrize("key_len", [0, 1, 16, 32, 64, 65, 100])
def test_token_is_hmac_sha256_on_both_engines(key_len: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # the documented derivation, whichever engine computes it (the token goes through
    # HKDF-Extract, in C or Python: an empty key there is hash-length zeros, the same
    # HMAC key)
    from quicflow.crypto import hkdf, stateless_reset
    from quicflow.crypto.extension import EXT

    key = os.urandom(key_len)
    cid = os.urandom(8)
    expected = hmac.digest(key, b"quicflow stateless reset" + cid, "sha256")[:16]
    c_token = stateless_reset._NATIVE_TOKEN
    for ext, token in ((EXT, c_token), (None, None)):  # (None: the Python path)
        monkeypatch.setattr(hkdf, "_NATIVE", ext)
        monkeypatch.setattr(stateless_reset, "_NATIVE_TOKEN", token)
        assert stateless_reset_token(key, cid) == expected


@settings(max_examples=200)
@given(keys=st.lists(st.binary(max_size=80), min_size=1, max_size=4),
       calls=st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=60)), max_size=12))
def test_c_token_keeps_each_keys_hmac_apart(keys: list[bytes],
                                            calls: list[tuple[int, bytes]]) -> None:
    """The C token keeps the last key's HMAC state: any sequence of keys (switching back
    and forth, long keys, any CID length) gives each call the documented token."""
    from quicflow.crypto.extension import EXT

    require(EXT is not None, "native crypto extension not built")
    for index, cid in calls:
        key = keys[index % len(keys)]
        expected = hmac.digest(key, b"quicflow stateless reset" + cid, "sha256")[:16]
        assert EXT.reset_token(key, cid) == expected


def test_server_restart_resets_the_client() -> None:
    pair = MemoryPair(server_config=server_config(reset_key=KEY))
    pair.run(lambda: pair.client.handshake_confirmed)
    pair.client.pop_events()
    # the server process is replaced: same key, no connections
    pair.server = Endpoint(server_config(reset_key=KEY), is_server=True)
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, b"x" * 2000)
    pair.step()
    pair.step()
    events = [e for e in pair.client.pop_events() if isinstance(e, ConnectionTerminated)]
    assert pair.client.terminated
    assert events and events[0].reason == "stateless reset" and events[0].by_peer
    assert pair.server.admission.counters.stateless_resets_sent >= 1


def test_no_reset_from_a_server_with_another_key() -> None:
    pair = MemoryPair(server_config=server_config(reset_key=KEY))
    pair.run(lambda: pair.client.handshake_confirmed)
    pair.server = Endpoint(server_config(reset_key=b"other" * 8), is_server=True)
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, b"x" * 2000)
    pair.step()
    pair.step()
    assert not pair.client.terminated  # a wrong token is just an undecryptable packet


def test_reset_is_smaller_than_the_packet_and_loops_end() -> None:
    adm = Admission(server_config(reset_key=KEY, stateless_reset_rate=1e9))
    assert adm.reset_for(b"\x40" + bytes(MIN_RESET_SIZE - 1), 8, 0.0) is None
    packet = b"\x40" + os.urandom(1199)
    sizes = []
    now = 1.0
    while packet is not None:
        sizes.append(len(packet))
        packet = adm.reset_for(packet, 8, now)  # two servers that know nothing, forever
        now += 1.0
    assert sizes[1] <= 43 and all(b < a for a, b in zip(sizes, sizes[1:], strict=False))
    assert len(sizes) < 30 and adm.counters.stateless_resets_too_small == 2


def test_reset_rate_limit() -> None:
    adm = Admission(server_config(reset_key=KEY, stateless_reset_rate=10.0))
    packet = b"\x40" + bytes(99)
    sent = sum(adm.reset_for(packet, 8, 5.0) is not None for _ in range(100))
    assert sent == 10 and adm.counters.stateless_resets_limited == 90
    sent = sum(adm.reset_for(packet, 8, 5.5) is not None for _ in range(100))
    assert sent == 5


def test_server_process_restart_resets_a_real_client(tmp_path: Path) -> None:
    """`quicflow perf server --token-key-file K` restarted on the same port: the client's
    next packet gets a stateless reset and the connection ends at once (not after the
    30 s idle timeout)."""
    key_file = tmp_path / "server.key"
    key_file.write_bytes(os.urandom(32))

    async def start(port: int) -> tuple[asyncio.subprocess.Process, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quicflow", "perf", "server", "--host", "127.0.0.1",
            "--port", str(port), "--token-key-file", str(key_file),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "server exited"
            if line.startswith("listening on"):
                return proc, int(line.split()[2].rsplit(":", 1)[1])

    async def stop(proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGKILL)  # a crash: no CONNECTION_CLOSE
        await proc.wait()

    async def main() -> None:
        first, port = await start(0)
        second = None
        try:
            async with quicflow.connect(
                "127.0.0.1", port, configuration=client_config(verify_peer=False),
            ) as conn:
                await stop(first)
                second, _ = await start(port)
                _, writer = await conn.create_stream()
                writer.write(b"hello after the restart")
                await asyncio.wait_for(conn.wait_closed(), 5)
                with pytest.raises(quicflow.ConnectionClosedError) as info:
                    conn.raise_if_closed()
                assert info.value.reason == "stateless reset" and info.value.by_peer
        finally:
            for p in (first, second):
                if p is not None and p.returncode is None:
                    await stop(p)

    run(main(), 60)


def test_client_endpoint_ignores_packets_without_a_token() -> None:
    pair = MemoryPair()
    pair.run(lambda: pair.client.handshake_confirmed)
    pair.client_ep.receive(b"\x40" + os.urandom(60), SERVER_ADDR, pair.now)
    assert not pair.client.terminated


def test_only_the_tokens_of_cids_in_use_are_checked() -> None:
    """RFC 9000 §10.3.1: a datagram ending in the reset token of a CID the peer issued
    and we never used (a spare one) is no stateless reset; one ending in the token of the
    CID we send with is, and ends the connection."""
    pair = MemoryPair(server_config=server_config(reset_key=KEY))
    pair.run(lambda: pair.client.handshake_confirmed and len(pair.client.peer_cids) > 1)
    client = pair.client
    (current,) = [e for e in client.peer_cids if e.sequence == client.peer_cid_seq]
    spares = [e for e in client.peer_cids if e.sequence != client.peer_cid_seq]
    assert spares and all(e.reset_token is not None for e in spares)

    def reset_with(token: bytes) -> bytes:  # a reset's shape: random bytes, the token last
        return bytes([0x40 | os.urandom(1)[0] & 0x3F]) + os.urandom(40) + token

    for spare in spares:
        assert spare.reset_token is not None
        pair.client_ep.receive(reset_with(spare.reset_token), SERVER_ADDR, pair.now)
        assert not client.terminated
    assert current.reset_token is not None
    pair.client_ep.receive(reset_with(current.reset_token), SERVER_ADDR, pair.now)
    assert client.terminated
    events = [e for e in client.pop_events() if isinstance(e, ConnectionTerminated)]
    assert events and events[-1].reason == "stateless reset"
