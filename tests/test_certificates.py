"""Certificate verification end to end: a client refuses a server whose certificate does
not match the host name or is not issued by the CA it trusts, says so clearly, and the
server learns why (the TLS alert travels as CRYPTO_ERROR 0x100 + alert).

Servers: quicflow's and aioquic's (in a process of its own).  Clients: quicflow's, and
aioquic's against our server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import quicflow
from tests.support import echo_proto
from tests.support.aioquic_peer import AioquicProcess
from tests.support.prereq import have_module
from tests.support.quic_helpers import Credential, ca, client_config, issued, run, server_config

CRYPTO_ERROR = 0x100
BAD_CERTIFICATE = 42
UNKNOWN_CA = 48

# (server credential, CA the client trusts, the alert the client must send)
CASES = {
    "wrong-host": (lambda: issued("A", "other.example"), lambda: ca("A"), BAD_CERTIFICATE),
    "untrusted-ca": (lambda: issued("B", "localhost"), lambda: ca("A"), UNKNOWN_CA),
}


async def close_error_of(face: quicflow.QuicConnection) -> quicflow.ConnectionClosedError:
    """The error a connection was closed with, as soon as it is known (not waiting for
    the end of the draining period, 3 PTOs)."""
    for _ in range(1000):
        if face._close_error is not None:
            return face._close_error
        await asyncio.sleep(0.01)
    raise AssertionError("the server connection was not closed within 10 s")


def check_refusal(exc: quicflow.ConnectionClosedError, alert: int) -> None:
    assert exc.error_code == CRYPTO_ERROR + alert, (hex(exc.error_code), str(exc))
    assert not exc.by_peer  # our client refused, the server did not close on us
    message = str(exc)
    assert "certificate" in message, message
    if alert == BAD_CERTIFICATE:
        assert "localhost" in message, message  # says which name did not match
    else:
        assert "CA" in message or "issuer" in message, message


# ---------------------------------------------------------------------------- our server


@pytest.mark.parametrize("case", sorted(CASES))
def test_client_refuses_quicflow_server(case: str) -> None:
    make_cred, make_ca, alert = CASES[case]
    cred: Credential = make_cred()

    async def main() -> tuple[quicflow.ConnectionClosedError, quicflow.ConnectionClosedError]:
        accepted: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config(cred),
            connection_handler=accepted.append,
        )
        try:
            with pytest.raises(quicflow.ConnectionClosedError) as info:
                async with quicflow.connect(
                    "127.0.0.1", server.address[1],
                    configuration=client_config(cadata=make_ca().cert_pem),
                ):
                    pass
            assert len(accepted) == 1
            return info.value, await close_error_of(accepted[0])
        finally:
            server.close()

    client_error, server_error = run(main(), 30)
    check_refusal(client_error, alert)
    # the server saw the client's alert
    assert server_error.by_peer
    assert server_error.error_code == CRYPTO_ERROR + alert, str(server_error)
    assert "certificate" in str(server_error), str(server_error)


def test_client_accepts_ca_issued_certificate() -> None:
    """The positive control: the same CA set-up with the right name verifies."""

    async def main() -> dict[str, object]:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(issued("A", "localhost")),
        )
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1],
                configuration=client_config(cadata=ca("A").cert_pem),
            ) as conn:
                reader, writer = await conn.create_stream()
                return await echo_proto.client_exchange(
                    reader, writer, upload=b"x" * 100, download=100, seed=1
                )
        finally:
            server.close()

    result = run(main(), 30)
    assert result["ok"], result


# ---------------------------------------------------------------------------- aioquic server


@pytest.fixture
def need_aioquic(require: Callable[[bool, str], None]) -> None:
    require(have_module("aioquic"), "Python package 'aioquic' not installed (make venv)")


@pytest.mark.interop
@pytest.mark.parametrize("case", sorted(CASES))
def test_client_refuses_aioquic_server(case: str, tmp_path: Path, need_aioquic: None) -> None:
    make_cred, make_ca, alert = CASES[case]
    cert, key = make_cred().write(tmp_path, "server")

    async def main() -> tuple[quicflow.ConnectionClosedError, dict[str, object]]:
        async with AioquicProcess("server", "--cert", cert, "--key", key) as peer:
            assert peer.port is not None
            with pytest.raises(quicflow.ConnectionClosedError) as info:
                async with quicflow.connect(
                    "127.0.0.1", peer.port,
                    configuration=client_config(cadata=make_ca().cert_pem),
                ):
                    pass
            terminated = await peer.next_event("terminated", timeout=10)
            return info.value, terminated

    client_error, terminated = run(main(), 40)
    check_refusal(client_error, alert)
    assert terminated["error_code"] == CRYPTO_ERROR + alert, terminated


@pytest.mark.interop
def test_client_accepts_aioquic_server_with_ca_issued_certificate(
    tmp_path: Path, need_aioquic: None
) -> None:
    cert, key = issued("A", "localhost").write(tmp_path, "server")

    async def main() -> dict[str, object]:
        async with AioquicProcess("server", "--cert", cert, "--key", key) as peer:
            assert peer.port is not None
            async with quicflow.connect(
                "127.0.0.1", peer.port, configuration=client_config(cadata=ca("A").cert_pem)
            ) as conn:
                reader, writer = await conn.create_stream()
                return await echo_proto.client_exchange(
                    reader, writer, upload=b"y" * 100, download=100, seed=2
                )

    result = run(main(), 40)
    assert result["ok"], result


# ---------------------------------------------------------------------------- aioquic client


@pytest.mark.interop
@pytest.mark.parametrize("case", sorted(CASES))
def test_aioquic_client_refuses_quicflow_server(
    case: str, tmp_path: Path, need_aioquic: None
) -> None:
    """Our server learns that aioquic refused its certificate (some 0x100 + alert)."""
    make_cred, make_ca, _ = CASES[case]
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(make_ca().cert_pem)

    async def main() -> tuple[list[dict[str, object]], quicflow.ConnectionClosedError]:
        accepted: list[quicflow.QuicConnection] = []
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0, configuration=server_config(make_cred()),
            connection_handler=accepted.append,
        )
        try:
            async with AioquicProcess(
                "client", "--port", str(server.address[1]), "--cafile", str(cafile),
                "--server-name", "localhost", "--upload", "10", "--timeout", "10",
            ) as peer:
                await peer.wait_exit(30)
            assert len(accepted) == 1
            return peer.events, await close_error_of(accepted[0])
        finally:
            server.close()

    events, server_error = run(main(), 60)
    assert not [ev for ev in events if ev["event"] == "result"], events
    assert [ev for ev in events if ev["event"] == "error"], events
    assert server_error.by_peer
    assert CRYPTO_ERROR < server_error.error_code < CRYPTO_ERROR + 0x100, str(server_error)
