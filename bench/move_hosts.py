"""Cross-host move (issue 7, item 4): the stall a client sees, against its PTO.

Run: ``.venv/bin/python bench/move_hosts.py [--connections 10]`` (4a, the address moves)
or ``.venv/bin/python bench/move_hosts.py --mode cids [--connections 10] [--move N]``
(4b, by CID behind the nftables QUIC-LB balancer; needs root).

``--mode cids``: the namespaces of ``tests/support/lbnet.py`` (client, balancer loading
docs/nftables-quic-lb.nft, hosts A and B, the balancer's link to the client limited to
``--rate`` Mbit/s); every client downloads through its own connection to A at full
speed; ``quicflow perf migrate --mode cids --count N`` moves N of them (default all) to
B. Reported per moved connection (polled every millisecond in the client): when new
stream data last arrived before the switch to B's CIDs and first after it (the stall),
split at the switch, the client's PTO just before the switch, and the longest gap
between two reads of the application.

Two perf servers (A with ``--handoff``, B with ``--migrate-listen``) on loopback; each
client reaches the service through a UDP relay that stands for the router: switching the
relays' upstream from A to B is the route switch. Every client downloads 64 MiB and notes
when each read returns. ``quicflow perf migrate`` moves every connection to B, then the
route switches. Reported per connection: the longest gap between two reads across the
move (the stall the client sees), the time from the route switch to its first read after
it, and the client's PTO at the switch.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quicflow  # noqa: E402
from quicflow.transport.config import Configuration  # noqa: E402
from tests.support.relay import LossyUdpRelay  # noqa: E402
from tests.test_migrate_hosts import _migrate, _pki, _two_hosts  # noqa: E402

MB = 1 << 20


async def _run(n: int, directory: Path) -> list[tuple[float, float, float]]:
    pki, cert, path, a, b = _two_hosts(directory)
    try:
        a_port, b_port = a.port(), b.port()
        to = b.wait_line("accepting migrations on ").split()[-1]
        config = Configuration(alpn_protocols=["perf"], cafile=cert, server_name="localhost")
        relays = [await LossyUdpRelay(("127.0.0.1", a_port)).start() for _ in range(n)]
        reads: list[list[float]] = [[] for _ in range(n)]
        ptos: list[float] = [0.0] * n
        switched = asyncio.Event()

        async def download(i: int) -> None:
            host, port = relays[i].address[0], relays[i].address[1]
            async with quicflow.connect(host, port, configuration=config) as conn:
                reader, writer = await conn.create_stream()
                writer.write(struct.pack("!Q", 64 * MB))
                writer.write_eof()
                while await reader.read(256 * 1024):
                    reads[i].append(time.monotonic())
                    if not switched.is_set():
                        ptos[i] = conn.conn.pto()
                        await asyncio.sleep(0.01)  # ~25 MB/s each until the move

        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(download(i)) for i in range(n)]
        await asyncio.sleep(1.5)
        t_move = time.monotonic()
        result = await loop.run_in_executor(None, _migrate, path, to, pki)
        for relay in relays:
            relay.server_addr = ("127.0.0.1", b_port)
        t_switch = time.monotonic()
        switched.set()
        await asyncio.gather(*tasks)
        for relay in relays:
            await relay.close()
        print(f"migrate: {result.stdout.strip()} in {t_switch - t_move:.2f} s",
              file=sys.stderr)
        out = []
        for i, times in enumerate(reads):
            gaps = [y - x for x, y in zip(times, times[1:], strict=False) if y >= t_move]
            after = [t for t in times if t >= t_switch]
            out.append((max(gaps), (after[0] - t_switch) if after else float("nan"), ptos[i]))
        return out
    finally:
        a.kill()
        b.kill()


def _run_cids(n: int, move: int, directory: Path, rate: int) -> list[dict[str, float]]:
    """4b: move ``move`` of ``n`` downloads by CID; the moved clients' measurements.
    ``rate``: Mbit/s towards the client (the balancer's link; 0: no limit, the clients
    then read slowly until the move is over)."""
    import json

    from tests.support.lbnet import lb_net
    from tests.support.netns import run_in
    from tests.test_migrate_quiclb import PORT, migrate_by_cid, start_clients, start_hosts

    pki = _pki(directory)
    with lb_net() as net:
        net.load_ruleset(PORT, new_connections_to_host1=True)
        if rate:
            run_in(net.router, ["tc", "qdisc", "add", "dev", f"qfl1a{net.tag}"[:15], "root",
                                "tbf", "rate", f"{rate}mbit", "burst", "64kb", "latency", "20ms"])
        a, b = start_hosts(net, directory, pki)
        client = None
        try:
            # at the rate, each download lasts ~8 s, whatever the number of clients
            size = max(4, rate * 8 // 8 // n) * MB if rate else 48 * MB
            client = start_clients(net, n, size, fast=bool(rate))
            t0 = time.monotonic()
            moved = migrate_by_cid(net, directory, pki, move)
            print(f"migrate: {moved.stdout.strip()} in {time.monotonic() - t0:.2f} s "
                  f"{moved.stderr.strip()}", file=sys.stderr)
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
            out, err = client.communicate(timeout=300)
            if client.returncode != 0:
                raise SystemExit(f"clients failed: {err}")
        finally:
            if client is not None and client.poll() is None:
                client.kill()
            a.kill()
            b.kill()
    rows = json.loads(out)["clients"]
    if not all(r["intact"] and r["same_connection"] for r in rows):
        raise SystemExit(f"a download was not intact: {rows}")
    return [r for r in rows if r["last_host"] == 2]


def _cids_report(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = _run_cids(args.connections, args.move or args.connections, Path(tmp),
                         args.rate)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    move = f" --move {args.move}" if args.move else ""
    move += f" --rate {args.rate}"
    print(f"\n## bench/move_hosts.py --mode cids — {date}\n")
    print("Command: `.venv/bin/python bench/move_hosts.py --mode cids --connections "
          f"{args.connections}{move}`; {len(rows)} connection(s) moved by CID\n")
    print("| measure (ms) | min | median | max |\n|---|---|---|---|")
    for name, key in (("stall: new data last from A -> first from B", "arrival_stall"),
                      ("new data last from A -> switch to B's CIDs", "arrival_before_switch"),
                      ("switch to B's CIDs -> new data from B", "switch_to_arrival"),
                      ("client PTO just before the switch", "pto_before"),
                      ("longest gap between reads (application)", "longest_gap")):
        values = sorted(float(r[key]) for r in rows if r[key] is not None)
        if not values:
            continue
        print(f"| {name} | {values[0] * 1000:.1f} | {values[len(values) // 2] * 1000:.1f} | "
              f"{values[-1] * 1000:.1f} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10)
    p.add_argument("--mode", choices=("address", "cids"), default="address",
                   help="address: 4a on loopback (default); cids: 4b behind nftables (root)")
    p.add_argument("--move", type=int, default=0,
                   help="with --mode cids: how many connections move (default all)")
    p.add_argument("--rate", type=int, default=200,
                   help="with --mode cids: Mbit/s of the balancer's link to the client "
                   "(default 200; 0: unlimited, clients read slowly until the move)")
    args = p.parse_args()
    if args.mode == "cids":
        return _cids_report(args)
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(_run(args.connections, Path(tmp)))
    stalls = sorted(r[0] for r in rows)
    after = sorted(r[1] for r in rows)
    ptos = sorted(r[2] for r in rows)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n## bench/move_hosts.py — {date}\n")
    print(f"Command: `.venv/bin/python bench/move_hosts.py --connections {args.connections}`\n")
    print("| measure (ms) | min | median | max |\n|---|---|---|---|")
    for name, values in (("stall a client sees (longest gap between reads)", stalls),
                         ("route switch -> first data after it", after),
                         ("client PTO at the switch", ptos)):
        print(f"| {name} | {values[0] * 1000:.0f} | {values[len(values) // 2] * 1000:.0f} | "
              f"{values[-1] * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
