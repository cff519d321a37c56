"""Moving running connections to a server on "another host" (issue 7, item 4a).

Two perf server processes stand for hosts A and B; the clients reach them through a UDP
relay that stands for the router in front of the service address: switching its
upstream from A to B is the route switch. A moves its connections to B over TCP inside
mutually authenticated TLS (``quicflow perf migrate``); the downloads in progress finish
intact, with no new handshake. A peer without a certificate from the CA is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import quicflow
from quicflow.migration.transfer import TransferError, client_context, open_sender
from quicflow.tls.certs import (
    certificate_pem,
    generate_ca,
    issue_certificate,
    private_key_pem,
)
from quicflow.transport.config import Configuration
from tests.support.relay import LossyUdpRelay
from tests.support.takeover import ROOT, ServerProc, perf_sha256, write_certificate

MB = 1 << 20
CONNECTIONS = 10
SIZE = 12 * MB


def _write(directory: Path, name: str, cert: object, key: object) -> tuple[str, str]:
    c, k = directory / f"{name}.pem", directory / f"{name}.key"
    c.write_bytes(certificate_pem(cert))  # type: ignore[arg-type]
    k.write_bytes(private_key_pem(key))  # type: ignore[arg-type]
    return str(c), str(k)


def _pki(directory: Path) -> dict[str, str]:
    ca, ca_key = generate_ca("quicflow migration CA")
    (directory / "ca.pem").write_bytes(certificate_pem(ca))
    a = _write(directory, "a", *issue_certificate(ca, ca_key, ["localhost", "127.0.0.1"],
                                                  client_auth=True))
    b = _write(directory, "b", *issue_certificate(ca, ca_key, ["localhost", "127.0.0.1"],
                                                  client_auth=True))
    rogue_ca, rogue_key = generate_ca("someone else")
    r = _write(directory, "rogue", *issue_certificate(rogue_ca, rogue_key, ["localhost"],
                                                      client_auth=True))
    return {"ca": str(directory / "ca.pem"), "a_cert": a[0], "a_key": a[1], "b_cert": b[0],
            "b_key": b[1], "rogue_cert": r[0], "rogue_key": r[1]}


def _two_hosts(
    directory: Path, *extra: str
) -> tuple[dict[str, str], str, str, ServerProc, ServerProc]:
    """Two perf servers on 127.0.0.1 with one server certificate: A takes ``perf migrate``
    on the handoff socket ``path``, B accepts migrations (its identity and CA from
    :func:`_pki`); ``extra`` options go to both. Returns (pki, cert, path, A, B)."""
    pki = _pki(directory)
    cert, key = write_certificate(directory)
    path = str(directory / "a.sock")
    a = ServerProc(["--host", "127.0.0.1", "--port", "0", "--cert", cert, "--key", key,
                    "--handoff", path, *extra])
    b = ServerProc(["--host", "127.0.0.1", "--port", "0", "--cert", cert, "--key", key,
                    "--migrate-listen", "127.0.0.1:0", "--migrate-cert", pki["b_cert"],
                    "--migrate-key", pki["b_key"], "--migrate-ca", pki["ca"], *extra])
    return pki, cert, path, a, b


def _migrate(path: str, to: str, pki: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(
        [sys.executable, "-m", "quicflow.cli.main", "perf", "migrate", "--handoff", path,
         "--to", to, "--cert", pki["a_cert"], "--key", pki["a_key"], "--ca", pki["ca"],
         "--server-name", "localhost", "--json"],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )


@pytest.mark.timeout(300)
def test_connections_move_to_another_server_and_the_address_follows(tmp_path: Path) -> None:
    pki, cert, path, a, b = _two_hosts(tmp_path, "--json")
    try:
        a_port, b_port = a.port(), b.port()
        move_to = b.wait_line("accepting migrations on ").split()[-1]

        async def run() -> tuple[list[str], dict[str, int]]:
            loop = asyncio.get_running_loop()
            config = Configuration(alpn_protocols=["perf"], cafile=cert,
                                   server_name="localhost")
            # one relay per client (a relay follows one client address): together they
            # are the router in front of the service address
            relays = [await LossyUdpRelay(("127.0.0.1", a_port)).start()
                      for _ in range(CONNECTIONS)]
            moved = asyncio.Event()
            started = [asyncio.Event() for _ in range(CONNECTIONS)]

            async def download(i: int) -> str:
                host, port = relays[i].address[0], relays[i].address[1]
                async with quicflow.connect(host, port, configuration=config) as conn:
                    first = conn.conn
                    reader, writer = await conn.create_stream()
                    writer.write(struct.pack("!Q", SIZE))
                    writer.write_eof()
                    digest = hashlib.sha256()
                    while True:
                        if not moved.is_set():
                            await asyncio.sleep(0.005)
                        data = await reader.read(32 * 1024 if not moved.is_set() else MB)
                        if not data:
                            break
                        digest.update(data)
                        started[i].set()
                    assert conn.conn is first and not conn.closed
                    return digest.hexdigest()

            try:
                tasks = [loop.create_task(download(i)) for i in range(CONNECTIONS)]
                for event in started:
                    await asyncio.wait_for(event.wait(), 60)
                result = await loop.run_in_executor(None, _migrate, path, move_to, pki)
                for relay in relays:
                    relay.server_addr = ("127.0.0.1", b_port)  # the route switches to B
                moved.set()
                assert not any(t.done() for t in tasks), "a download ended before the move"
                digests = await asyncio.gather(*tasks)
            finally:
                for relay in relays:
                    await relay.close()
            assert result.returncode == 0, result.stderr
            return list(digests), json.loads(result.stdout)

        digests, answer = asyncio.run(run())
        assert answer == {"moved_connections": CONNECTIONS}
        assert digests == [perf_sha256(SIZE)] * CONNECTIONS
        status_b, summary_b = b.stop()
        status_a, summary_a = a.stop()
        assert status_a == status_b == 0 and summary_a is not None and summary_b is not None
        endpoint_a, endpoint_b = summary_a["endpoint"], summary_b["endpoint"]
        assert isinstance(endpoint_a, dict) and isinstance(endpoint_b, dict)
        assert endpoint_a["connections_accepted"] == CONNECTIONS
        assert endpoint_b["connections_accepted"] == 0, "no new handshake on B"
        assert isinstance(summary_b["bytes_sent"], int) and summary_b["bytes_sent"] > 0
    finally:
        a.kill()
        b.kill()


def test_unauthenticated_migration_peer_is_refused(tmp_path: Path) -> None:
    """B's migration port refuses a peer with a certificate from another CA, and one
    without any certificate; a peer with the right one gets the hello."""
    pki = _pki(tmp_path)
    cert, key = write_certificate(tmp_path)
    b = ServerProc(["--host", "127.0.0.1", "--port", "0", "--cert", cert, "--key", key,
                    "--migrate-listen", "127.0.0.1:0", "--migrate-cert", pki["b_cert"],
                    "--migrate-key", pki["b_key"], "--migrate-ca", pki["ca"]])
    try:
        b.port()
        host, port = b.wait_line("accepting migrations on ").split()[-1].rsplit(":", 1)

        async def attempt(context: ssl.SSLContext) -> bool:
            try:
                sender = await open_sender(host, int(port), context, "localhost", timeout=10)
            except TransferError:
                return False
            sender.writer.close()
            return len(sender.key) == 32

        rogue = client_context(pki["rogue_cert"], pki["rogue_key"], pki["ca"])
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca"])
        good = client_context(pki["a_cert"], pki["a_key"], pki["ca"])
        async def all_three() -> list[bool]:
            return list(await asyncio.gather(attempt(rogue), attempt(anonymous),
                                             attempt(good)))

        results = asyncio.run(all_three())
        assert results == [False, False, True]
        # and the receiver checks us too: a receiver whose certificate is from another CA
        wrong_ca = client_context(pki["a_cert"], pki["a_key"], pki["rogue_cert"])
        assert asyncio.run(attempt(wrong_ca)) is False
    finally:
        b.kill()


def test_move_by_cid_to_a_server_with_our_host_id_is_refused(tmp_path: Path) -> None:
    """``perf migrate --mode cids`` to a server that issues CIDs with A's own server ID
    (both left at the default --host-id) exits 1 with the reason before any connection
    stops: the connection goes on, on A."""
    pki, cert, path, a, b = _two_hosts(tmp_path)
    try:
        a_port = a.port()
        b.port()
        to = b.wait_line("accepting migrations on ").split()[-1]

        async def run() -> tuple[subprocess.CompletedProcess[str], str]:
            config = Configuration(alpn_protocols=["perf"], cafile=cert,
                                   server_name="localhost")
            async with quicflow.connect("127.0.0.1", a_port, configuration=config) as conn:
                env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
                result = await asyncio.get_running_loop().run_in_executor(None, lambda: (
                    subprocess.run(
                        [sys.executable, "-m", "quicflow.cli.main", "perf", "migrate",
                         "--handoff", path, "--to", to, "--cert", pki["a_cert"], "--key",
                         pki["a_key"], "--ca", pki["ca"], "--server-name", "localhost",
                         "--mode", "cids", "--json"],
                        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)))
                reader, writer = await conn.create_stream()  # still served by A
                writer.write(struct.pack("!Q", MB))
                writer.write_eof()
                body = await asyncio.wait_for(reader.read(), 30)
                return result, hashlib.sha256(body).hexdigest()

        result, digest = asyncio.run(run())
        assert result.returncode == 1 and result.stdout == ""
        assert "another --host-id" in result.stderr
        assert digest == perf_sha256(MB)
    finally:
        a.kill()
        b.kill()
