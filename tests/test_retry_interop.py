"""Retry and NEW_TOKEN over real loopback sockets: with aioquic in both roles, between
two quicflow processes that share a token key, and between quicflow peers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

import quicflow
from quicflow.endpoint.tokens import TokenCache
from tests.support import echo_proto
from tests.support.quic_helpers import client_config, run, server_config
from tests.test_interop_aioquic import (
    our_exchange,
    pem,  # noqa: F401  (fixture)
    with_aioquic_client,
    with_aioquic_server,
)


@pytest.mark.interop
def test_retry_from_aioquic_server(pem: tuple[str, str]) -> None:  # noqa: F811
    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], bool]:
        result = await our_exchange(conn, upload=100_000, download=300_000, seed=3)
        return result, conn.conn.retry_scid is not None

    (result, retried), _, _ = run(with_aioquic_server(pem, body, aioquic_args=("--retry",)), 60)
    assert result["ok"], result
    assert retried  # our client went through aioquic's Retry


@pytest.mark.interop
def test_retry_to_aioquic_client(pem: tuple[str, str]) -> None:  # noqa: F811
    result, _, accepted, _ = run(
        with_aioquic_client(pem, "--upload", "100000", "--download", "300000",
                            server_kw={"retry": "always"}), 60
    )
    assert result["ok"], result
    assert len(accepted) == 1 and accepted[0].conn.retry_scid is not None
    adm = accepted[0].stats()["endpoint"]
    assert adm["retries_sent"] == 1 and adm["retry_tokens_accepted"] == 1


def test_retry_and_new_token_between_quicflow_peers() -> None:
    async def main() -> None:
        server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                      configuration=server_config(retry="always"))
        cache = TokenCache()
        try:
            for i in range(2):
                async with quicflow.connect(
                    "127.0.0.1", server.address[1],
                    configuration=client_config(token_cache=cache),
                ) as conn:
                    result = await our_exchange(conn, upload=200_000, download=200_000, seed=i)
                    assert result["ok"], result
                    # first: a Retry; second: the NEW_TOKEN token from the first instead
                    assert (conn.conn.retry_scid is not None) == (i == 0)
                    for _ in range(100):  # NEW_TOKEN follows the handshake
                        if len(cache):
                            break
                        await asyncio.sleep(0.01)
            stats = server.stats()["endpoint"]
            assert stats["retries_sent"] == 1 and stats["new_tokens_accepted"] == 1
        finally:
            server.close()

    run(main(), 30)




def test_new_token_accepted_by_another_process_with_the_same_key(tmp_path: Path) -> None:
    """A token from one server process is accepted by another one configured with the
    same key (`quicflow perf server --token-key-file`), as workers and hosts behind one
    address need: the second connection goes through without a Retry."""
    key_file = tmp_path / "token.key"
    key_file.write_bytes(os.urandom(32))

    async def start(port: int) -> tuple[asyncio.subprocess.Process, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "quicflow", "perf", "server", "--host", "127.0.0.1",
            "--port", str(port), "--retry", "always", "--token-key-file", str(key_file),
            "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "server exited"
            if line.startswith("listening on"):
                return proc, int(line.split()[2].rsplit(":", 1)[1])

    async def stop(proc: asyncio.subprocess.Process) -> dict[str, object]:
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]

    async def one(port: int, cache: TokenCache) -> bool:
        cfg = client_config(token_cache=cache, verify_peer=False)  # perf's own certificate
        async with quicflow.connect("127.0.0.1", port, configuration=cfg) as conn:
            for _ in range(200):
                if len(cache):
                    break
                await asyncio.sleep(0.01)
            return conn.conn.retry_scid is not None

    async def main() -> None:
        cache = TokenCache()
        first, port = await start(0)
        try:
            assert await one(port, cache)  # Retry, then a NEW_TOKEN token
            assert len(cache) == 1
        finally:
            s1 = await stop(first)
        second, _ = await start(port)
        try:
            assert not await one(port, cache)  # the other process took the token
        finally:
            s2 = await stop(second)
        assert s1["endpoint"]["retries_sent"] == 1  # type: ignore[index]
        assert s2["endpoint"]["retries_sent"] == 0  # type: ignore[index]
        assert s2["endpoint"]["new_tokens_accepted"] == 1  # type: ignore[index]

    run(main(), 90)
