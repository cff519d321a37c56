"""QUIC version 2 with aioquic in both roles: v2 from the first packet, and v2 chosen by
compatible version negotiation (RFC 9368) from a v1 first flight."""

from __future__ import annotations

import pytest

import quicflow
from quicflow.wire.packet import QUIC_V1, QUIC_V2
from tests.support.quic_helpers import run
from tests.test_interop_aioquic import (
    our_exchange,
    pem,  # noqa: F401  (fixture)
    with_aioquic_client,
    with_aioquic_server,
)

pytestmark = pytest.mark.interop


def _peer_version(peer: object) -> int | None:
    for ev in peer.events:  # type: ignore[attr-defined]
        if ev["event"] == "handshake":
            return ev.get("version")  # type: ignore[no-any-return]
    return None


@pytest.mark.parametrize(
    "ours",
    [{"versions": [QUIC_V2]}, {"versions": [QUIC_V2, QUIC_V1], "initial_version": QUIC_V1}],
    ids=["v2-first-flight", "compatible-negotiation"],
)
def test_v2_with_aioquic_server(pem: tuple[str, str], ours: dict[str, object]) -> None:  # noqa: F811
    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], int]:
        result = await our_exchange(conn, upload=200_000, download=400_000, seed=7)
        return result, conn.conn.version

    (result, version), peer, _ = run(with_aioquic_server(pem, body, client_kw=ours), 60)
    assert result["ok"], result
    assert version == QUIC_V2 and _peer_version(peer) == QUIC_V2


@pytest.mark.parametrize(
    "theirs",
    [("--versions", "2,1"), ("--versions", "2,1", "--original-version", "1")],
    ids=["v2-first-flight", "compatible-negotiation"],
)
def test_v2_with_aioquic_client(pem: tuple[str, str], theirs: tuple[str, ...]) -> None:  # noqa: F811
    result, peer, accepted, _ = run(with_aioquic_client(
        pem, "--upload", "200000", "--download", "400000", *theirs), 60)
    assert result["ok"], result
    assert accepted[0].conn.version == QUIC_V2 and _peer_version(peer) == QUIC_V2


def test_version_negotiation_with_a_v1_only_aioquic_server(pem: tuple[str, str]) -> None:  # noqa: F811
    """Our client starts in v2; aioquic configured for v1 only answers with Version
    Negotiation, and the client starts over in v1 (RFC 9368 §2.1)."""
    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], int, bool]:
        result = await our_exchange(conn, upload=50_000, download=50_000, seed=8)
        return result, conn.conn.version, conn.conn.version_restarted

    (result, version, restarted), _, _ = run(with_aioquic_server(
        pem, body, aioquic_args=("--versions", "1"),
        client_kw={"versions": [QUIC_V2, QUIC_V1]}), 60)
    assert result["ok"], result
    assert version == QUIC_V1 and restarted
