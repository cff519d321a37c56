"""Shared pieces of the end-to-end tests: certificates, configurations, running a coroutine.

Certificates are made once per process (key generation is the slow part) and cached.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import quicflow
from quicflow.tls.certs import (
    certificate_pem,
    generate_ca,
    generate_self_signed,
    issue_certificate,
    private_key_pem,
)

T = TypeVar("T")
ALPN = ["perf"]


@dataclass(frozen=True)
class Credential:
    cert: Any
    key: Any

    @property
    def cert_pem(self) -> bytes:
        return bytes(certificate_pem(self.cert))

    @property
    def key_pem(self) -> bytes:
        return bytes(private_key_pem(self.key))

    def write(self, directory: Path, name: str) -> tuple[str, str]:
        """Write ``name.pem`` and ``name.key``; returns their paths."""
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        return str(cert_path), str(key_path)


@cache
def self_signed(hostname: str = "localhost") -> Credential:
    cert, key = generate_self_signed([hostname])
    return Credential(cert, key)


@cache
def ca(name: str) -> Credential:
    cert, key = generate_ca(common_name=f"quicflow test CA {name}")
    return Credential(cert, key)


@cache
def issued(ca_name: str, hostname: str) -> Credential:
    authority = ca(ca_name)
    cert, key = issue_certificate(authority.cert, authority.key, [hostname])
    return Credential(cert, key)


def server_config(cred: Credential | None = None, **kw: Any) -> quicflow.Configuration:
    cred = cred or self_signed()
    return quicflow.Configuration(
        alpn_protocols=list(ALPN), certificate_chain=[cred.cert], private_key=cred.key, **kw
    )


def client_config(cadata: bytes | None = None, **kw: Any) -> quicflow.Configuration:
    kw.setdefault("server_name", "localhost")
    return quicflow.Configuration(
        alpn_protocols=list(ALPN),
        cadata=cadata if cadata is not None else self_signed().cert_pem,
        **kw,
    )


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run ``coro`` on a fresh event loop, failing after ``timeout`` seconds."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


class SilentUdpPort:
    """A bound UDP socket that reads nothing and answers nothing (a vanished peer).

    Unlike a closed port it produces no ICMP "port unreachable"."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]

    def __enter__(self) -> SilentUdpPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def record_socket_peers(server: Any) -> list[int]:
    """The peer port of every per-connection socket ``server`` gives from now on, in
    order (a connection gives its socket up as soon as it closes, so a test that checks
    after the peer closed reads this instead of the live socket)."""
    sockets = server.runner.sockets
    assert sockets is not None and sockets.on_open is not None
    opened: list[int] = []
    on_open = sockets.on_open

    def record(transport: Any, conn: Any) -> None:
        opened.append(transport.socket.getpeername()[1])
        on_open(transport, conn)

    sockets.on_open = record
    return opened


def loopback_download(size: int, seed: int, max_datagram_size: int = 1200,
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One download of ``size`` bytes from a fresh server over loopback (the echo
    protocol, checked intact); the client connection's and the server's ``stats()``."""
    from tests.support import echo_proto

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        server = await quicflow.serve(
            echo_proto.serve_stream, "127.0.0.1", 0,
            configuration=server_config(max_datagram_size=max_datagram_size))
        try:
            config = client_config(max_datagram_size=max_datagram_size)
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=config) as conn:
                reader, writer = await conn.create_stream()
                result = await echo_proto.client_exchange(
                    reader, writer, upload=b"", download=size, seed=seed)
                assert result["ok"], result
                client_stats: dict[str, Any] = conn.stats()
            return client_stats, server.stats()
        finally:
            server.close()

    return run(main(), 60)
