"""Client migration against quic-go and quinn (our hq peers): quic-go's server (Debian's
packaged quic-go) sends disable_active_migration, so migrate() is refused with
MigrationError and the connection goes on intact (RFC 9000 §18.2); quinn's server allows
migration, and our client moves mid-download with every file intact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

import quicflow
from quicflow.apps import hq
from tests.support import hq_peers, quicgo
from tests.support.hq_peers import MB, Site, check_downloads, client_config
from tests.support.quicgo import QuicGoProcess

pytestmark = pytest.mark.interop


@pytest.fixture
def site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    return hq_peers.peer_site(quicgo, tmp_path, require)


def test_migration_refused_by_quicgo_server(site: Site) -> None:
    a = site.add("a.bin", 2 * MB)
    b = site.add("b.bin", 1 * MB)

    async def main() -> None:
        async with QuicGoProcess("server", "--cert", site.cert, "--key", site.key,
                                 "--root", str(site.root)) as peer:
            assert peer.port is not None
            async with quicflow.connect("127.0.0.1", peer.port,
                                        configuration=client_config()) as face:
                first = await hq.fetch(face, a)
                assert face.conn.peer_params is not None
                assert face.conn.peer_params.disable_active_migration
                before = face.local_address
                with pytest.raises(quicflow.MigrationError, match="disable_active_migration"):
                    await face.migrate()
                assert face.local_address == before
                second = await hq.fetch(face, b)
            check_downloads(site, [(a, *first), (b, *second)])

    asyncio.run(asyncio.wait_for(main(), 120))


@pytest.fixture
def quinn_site(tmp_path: Path, require: Callable[[bool, str], None]) -> Site:
    from tests.support import quinn

    return hq_peers.peer_site(quinn, tmp_path, require)


def test_quicflow_client_migrates_to_quinn_server(quinn_site: Site) -> None:
    """quinn's server allows migration: our client moves mid-download, every file is
    intact and later requests are served on the new path."""
    from tests.support.quinn import QuinnProcess

    site = quinn_site
    big = site.add("big.bin", 4 * MB)
    small = site.add("small.bin", 300_000)

    async def main() -> None:
        async with QuinnProcess("server", "--cert", site.cert, "--key", site.key,
                                "--root", str(site.root)) as peer:
            assert peer.port is not None
            async with quicflow.connect("127.0.0.1", peer.port,
                                        configuration=client_config()) as face:
                download = asyncio.ensure_future(hq.fetch(face, big))
                while face.conn.counters.bytes_received < 1 * MB:
                    await asyncio.sleep(0.002)
                new_local = await face.migrate()
                first = await download
                second = await hq.fetch(face, small)
                assert face.local_address == new_local
                assert face.conn.counters.migrations == 1
            check_downloads(site, [(big, *first), (small, *second)])

    asyncio.run(asyncio.wait_for(main(), 120))
