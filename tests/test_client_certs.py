"""Client certificates end to end over loopback (issue 8, item 3): a server that requires
one gets it, verifies it against its CA and both sides read the other's certificate; a
client without one, or with one from another CA, is refused with CRYPTO_ERROR 0x100 +
the TLS alert (116 certificate_required, 48 unknown_ca) and the server counts the failed
handshake. Peers: quicflow both ways, and aioquic (in a process of its own) in both roles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.tls.certs import issue_certificate
from tests.support import echo_proto
from tests.support.aioquic_peer import AioquicProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import Credential, ca, client_config, issued, run, server_config

CRYPTO_ERROR = 0x100
CERTIFICATE_REQUIRED = 116
UNKNOWN_CA = 48
UPLOAD = 300_000
DOWNLOAD = 200_000


@cache
def client_cred(ca_name: str) -> Credential:
    """A client certificate (clientAuth EKU) issued by test CA ``ca_name``."""
    authority = ca(ca_name)
    cert, key = issue_certificate(authority.cert, authority.key, ["client.example"],
                                  client_auth=True)
    return Credential(cert, key)


def requiring_server(mode: str = "require") -> quicflow.Configuration:
    """Server 'localhost' from CA A that trusts CA A for client certificates."""
    return server_config(issued("A", "localhost"), client_certificates=mode,
                         cadata=ca("A").cert_pem)


def client_with(cred: Credential | None) -> quicflow.Configuration:
    extra: dict[str, Any] = {}
    if cred is not None:
        extra = {"certificate_chain": [cred.cert], "private_key": cred.key}
    return client_config(cadata=ca("A").cert_pem, **extra)


async def exchange(conn: quicflow.QuicConnection, seed: int) -> dict[str, object]:
    reader, writer = await conn.create_stream()
    return await echo_proto.client_exchange(
        reader, writer, upload=echo_proto.payload(seed, UPLOAD), download=DOWNLOAD, seed=seed
    )


async def close_error_of(face: quicflow.QuicConnection) -> quicflow.ConnectionClosedError:
    for _ in range(1000):
        if face._close_error is not None:
            return face._close_error
        await asyncio.sleep(0.01)
    raise AssertionError("the connection was not closed within 10 s")


async def handshakes_failed(server: quicflow.QuicServer, at_least: int) -> int:
    """The server's failed-handshake counter once it reaches ``at_least`` (the refused
    connection is forgotten after its closing period)."""
    for _ in range(1000):
        n = int(server.stats()["endpoint"]["handshakes_failed"])
        if n >= at_least:
            return n
        await asyncio.sleep(0.01)
    return int(server.stats()["endpoint"]["handshakes_failed"])


# ---------------------------------------------------------------------------- quicflow both


def test_required_and_presented_quicflow() -> None:
    async def main() -> tuple[dict[str, object], list[Any], list[Any]]:
        accepted: list[quicflow.QuicConnection] = []
        async with await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=requiring_server(),
            connection_handler=accepted.append,
        ) as server:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_with(client_cred("A"))
            ) as conn:
                result = await exchange(conn, 1)
                client_sees = conn.peer_certificates
            assert len(accepted) == 1
            assert server.stats()["endpoint"]["handshakes_failed"] == 0
            return result, client_sees, accepted[0].peer_certificates

    result, client_sees, server_sees = run(main(), 60)
    assert result["ok"], result  # sha256 of both directions matched
    assert client_sees == [issued("A", "localhost").cert]
    assert server_sees == [client_cred("A").cert]


def test_requested_and_not_presented_quicflow() -> None:
    """'request' lets a client without a certificate in; the server sees none."""

    async def main() -> tuple[dict[str, object], list[Any]]:
        accepted: list[quicflow.QuicConnection] = []
        async with await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=requiring_server("request"),
            connection_handler=accepted.append,
        ) as server:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_with(None)
            ) as conn:
                result = await exchange(conn, 2)
            return result, accepted[0].peer_certificates

    result, server_sees = run(main(), 60)
    assert result["ok"], result
    assert server_sees == []


@pytest.mark.parametrize(("cred", "alert"), [(None, CERTIFICATE_REQUIRED), ("B", UNKNOWN_CA)])
def test_refused_client_quicflow(cred: str | None, alert: int) -> None:
    async def main() -> tuple[quicflow.ConnectionClosedError, quicflow.ConnectionClosedError,
                              int]:
        accepted: list[quicflow.QuicConnection] = []
        async with await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=requiring_server(),
            connection_handler=accepted.append,
        ) as server:
            with pytest.raises(quicflow.ConnectionClosedError) as info:
                async with quicflow.connect(
                    "127.0.0.1", server.address[1],
                    configuration=client_with(client_cred(cred) if cred else None),
                ) as conn:
                    await exchange(conn, 3)
            server_error = await close_error_of(accepted[0])
            return info.value, server_error, await handshakes_failed(server, 1)

    client_error, server_error, failed = run(main(), 60)
    assert client_error.error_code == CRYPTO_ERROR + alert, str(client_error)
    assert client_error.by_peer
    assert "certificate" in str(client_error), str(client_error)
    assert server_error.error_code == CRYPTO_ERROR + alert and not server_error.by_peer
    assert failed == 1


def foreign_client_to_requiring_server(
    library: str, configuration: quicflow.Configuration, cafile: str,
    cred: str | None, alert: int | None, tmp_path: Path,
) -> quicflow.QuicConnection:
    """An aioquic or qh3 client (``tests/support/aioquic_peer.py``) presenting the
    certificate of CA ``cred`` (or none) to our server requiring one: with ``alert``
    None, both directions transfer hash-checked and our side reads the certificate;
    otherwise both sides see CRYPTO_ERROR + ``alert`` and one handshake failed.
    Returns our side's connection."""
    extra: list[str] = []
    if cred is not None:
        cert, key = client_cred(cred).write(tmp_path, "client")
        extra = ["--client-cert", cert, "--client-key", key]

    async def main() -> tuple[list[dict[str, Any]], quicflow.QuicConnection, int]:
        accepted: list[quicflow.QuicConnection] = []
        async with await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=configuration,
            connection_handler=accepted.append,
        ) as server:
            async with AioquicProcess(
                "client", "--port", str(server.address[1]), "--cafile", cafile,
                "--server-name", "localhost", "--upload", str(UPLOAD),
                "--download", str(DOWNLOAD), "--timeout", "10", *extra, library=library,
            ) as peer:
                await peer.wait_exit(40)
            if alert is not None:
                await close_error_of(accepted[0])
            return peer.events, accepted[0], await handshakes_failed(
                server, 1 if alert else 0)

    events, face, failed = run(main(), 80)
    if alert is None:
        results = [ev for ev in events if ev["event"] == "result"]
        assert results and results[0]["ok"], events  # sha256 both ways matched
        assert face.peer_certificates == [client_cred("A").cert]
        assert failed == 0
    else:
        terminated = [ev for ev in events if ev["event"] == "terminated"]
        assert terminated and terminated[0]["error_code"] == CRYPTO_ERROR + alert, events
        assert not [ev for ev in events if ev["event"] == "result"], events
        assert face._close_error is not None
        assert face._close_error.error_code == CRYPTO_ERROR + alert
        assert failed == 1
    return face


# ---------------------------------------------------------------------------- aioquic


@pytest.fixture
def need_aioquic(require: Callable[[bool, str], None]) -> None:
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")


@pytest.mark.interop
@pytest.mark.parametrize(("cred", "alert"),
                         [("A", None), (None, CERTIFICATE_REQUIRED), ("B", UNKNOWN_CA)])
def test_aioquic_client_with_quicflow_server(
    cred: str | None, alert: int | None, tmp_path: Path, need_aioquic: None
) -> None:
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(ca("A").cert_pem)
    foreign_client_to_requiring_server(
        "aioquic", requiring_server(), str(cafile), cred, alert, tmp_path)


@pytest.mark.interop
@pytest.mark.parametrize("present", [True, False])
def test_quicflow_client_with_aioquic_server(
    present: bool, tmp_path: Path, need_aioquic: None
) -> None:
    """aioquic's server (its test-only request hook) checks our CertificateVerify, signed
    with the client context string; without a certificate we answer with an empty one."""
    cert, key = issued("A", "localhost").write(tmp_path, "server")

    async def main() -> tuple[dict[str, object], dict[str, Any]]:
        async with AioquicProcess("server", "--cert", cert, "--key", key,
                                  "--request-client-cert") as peer:
            assert peer.port is not None
            async with quicflow.connect(
                "127.0.0.1", peer.port,
                configuration=client_with(client_cred("A") if present else None),
            ) as conn:
                result = await exchange(conn, 4)
            return result, await peer.next_event("handshake", timeout=10)

    result, handshake = run(main(), 60)
    assert result["ok"], result
    expected = client_cred("A").cert.subject.rfc4514_string() if present else None
    assert handshake["peer_subject"] == expected, handshake


# ---------------------------------------------------------------------------- the CLI


def test_perf_cli_client_certificate(tmp_path: Path) -> None:
    """``quicflow perf server --client-ca F --require-client-cert`` lets ``perf client
    --cert/--key`` in and refuses a client without a certificate (exit 1, one line)."""
    import subprocess
    import sys

    quicflow_cmd = str(Path(sys.executable).parent / "quicflow")
    server_cert, server_key = issued("A", "localhost").write(tmp_path, "server")
    cert, key = client_cred("A").write(tmp_path, "client")
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(ca("A").cert_pem)
    proc = subprocess.Popen(
        [quicflow_cmd, "perf", "server", "--host", "127.0.0.1", "--port", "0",
         "--cert", server_cert, "--key", server_key, "--client-ca", str(cafile),
         "--require-client-cert"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if line.startswith("listening on "):
                port = line.split()[2].rsplit(":", 1)[1]
                break
        assert port is not None, "perf server did not start"
        base = [quicflow_cmd, "perf", "client", "--host", "127.0.0.1", "--port", port,
                "--server-name", "localhost", "--cafile", str(cafile), "--download", "1M",
                "--upload", "100K", "--verify", "--quiet", "--timeout", "5"]

        def client(*extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*base, *extra], capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)

        ok = client("--cert", cert, "--key", key)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("received 1.0 MiB, sent 100.0 KiB"), ok.stdout
        refused = client()
        assert refused.returncode == 1, refused.stdout
        lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "client certificate required" in lines[0], refused.stderr
        assert "alert 116" in lines[0], lines[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
