"""Issue 6 item 2 over real loopback sockets: two clients with the same source CID and
several clients with zero-length CIDs download from one server at the same time, every
byte intact (SHA-256 both ways), and neither breaks the other."""

from __future__ import annotations

import asyncio

import quicflow
from quicflow.endpoint.cids import CidGenerator
from quicflow.endpoint.quiclb import ServerIdLayout
from tests.support.cid_helpers import FixedFirstCid
from tests.support.transfer import (
    StreamResult,
    client_configuration,
    download,
    serve_stream,
    server_configuration,
)

SIZE = 3 * 1024 * 1024


async def _client(port: int, seed: int, **kw: object) -> tuple[bytes, list[StreamResult]]:
    cfg = client_configuration(connection_id_length=kw.pop("cid_len", 8))
    async with quicflow.connect("127.0.0.1", port, configuration=cfg, **kw) as conn:  # type: ignore[arg-type]
        scid = conn.conn.initial_scid
        first = await asyncio.wait_for(download(conn, SIZE, seed=seed, upload=20_000), 60)
        # a second request after every other client's handshake is done
        await asyncio.sleep(0.05)
        second = await asyncio.wait_for(download(conn, SIZE // 3, seed=seed + 100), 60)
    return scid, [first, second]


def test_same_source_cid_and_zero_length_cids_concurrently() -> None:
    async def main() -> None:
        server = await quicflow.serve(
            serve_stream, "127.0.0.1", 0, configuration=server_configuration()
        )
        try:
            port = server.address[1]
            same = b"\x5a" * 8
            jobs = [
                _client(port, 1, cid_generator=FixedFirstCid(same)),
                _client(port, 2, cid_generator=FixedFirstCid(same)),
                *(_client(port, 10 + i, cid_len=0) for i in range(3)),
            ]
            outcomes = await asyncio.gather(*jobs)
            stats = server.stats()
        finally:
            server.close()
        scids = [scid for scid, _ in outcomes]
        assert scids == [same, same, b"", b"", b""]
        for _, results in outcomes:
            assert [r.ok for r in results] == [True, True], results
        endpoint = stats["endpoint"]
        assert endpoint["connections_accepted"] == 5
        assert endpoint["cid_collisions"] == 0 and endpoint["dropped_initial_collision"] == 0
        for conn in stats["connections"]:
            assert conn["dropped_undecryptable"] == 0

    asyncio.run(main())


def test_server_cids_route_with_a_custom_layout() -> None:
    """serve(cid_generator=...) issues the given server ID in every CID it hands out."""

    async def main() -> None:
        gen = CidGenerator.from_layout(ServerIdLayout(host_id=7, worker_id=2))
        server = await quicflow.serve(
            serve_stream, "127.0.0.1", 0, configuration=server_configuration(),
            cid_generator=gen,
        )  # fmt: skip
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_configuration()
            ) as conn:
                result = await asyncio.wait_for(download(conn, 200_000), 30)
                peer_cids = [p.cid for p in conn.conn.peer_cids] + [conn.conn.peer_cid]
        finally:
            server.close()
        assert result.ok
        assert len(set(peer_cids)) >= 2
        assert all(gen.server_id_of(cid) == b"\x07\x02" for cid in peer_cids)

    asyncio.run(main())


def test_vanished_clients_expire_together_while_a_transfer_flows() -> None:
    """Issue 10 item 8, live: 64 clients vanish (sockets closed, no CONNECTION_CLOSE),
    the server forgets them all when their idle timers fire together, and downloads on
    the same server keep going intact throughout."""
    vanishing = 64

    async def vanish(port: int, seed: int) -> bool:
        async with quicflow.connect(
            "127.0.0.1", port, configuration=client_configuration()
        ) as conn:
            ok = (await asyncio.wait_for(download(conn, 1000, seed=seed), 30)).ok
            conn.runner.close()  # gone: no CONNECTION_CLOSE, no more datagrams
        return ok

    async def main() -> None:
        server = await quicflow.serve(
            serve_stream, "127.0.0.1", 0, configuration=server_configuration(idle_timeout=2.0)
        )
        registry = server.endpoint.registry
        results: list[StreamResult] = []
        try:
            port = server.address[1]
            async with quicflow.connect(
                "127.0.0.1", port, configuration=client_configuration()
            ) as legit:
                stop = asyncio.Event()

                async def keep_downloading() -> None:
                    seed = 1
                    while not stop.is_set():
                        results.append(
                            await asyncio.wait_for(download(legit, 300_000, seed=seed), 30)
                        )
                        seed += 1

                flowing = asyncio.create_task(keep_downloading())
                oks = await asyncio.gather(*(vanish(port, 100 + i) for i in range(vanishing)))
                for _ in range(200):  # until every vanished connection timed out
                    if len(registry) == 1 or flowing.done():
                        break
                    await asyncio.sleep(0.05)
                stop.set()
                await flowing
                results.append(await asyncio.wait_for(download(legit, 2_000_000, seed=0), 30))
                assert all(oks)
                assert len(registry) == 1 and len(server.connections) == 1
                assert next(iter(registry)) is server.connections[0].conn
                # every vanished client was accepted, and forgotten by its idle timer
                assert server.endpoint.counters.connections_accepted == 1 + vanishing
                assert registry.counters.forgotten == vanishing
        finally:
            server.close()
        assert len(results) > 3 and all(r.ok for r in results), [r for r in results if not r.ok]

    asyncio.run(main())
