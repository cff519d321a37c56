"""Cross-host move (issue 7, item 4a): the stall a client sees, against its PTO.

Run: ``.venv/bin/python bench/move_hosts.py [--connections 10]``.

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
from tests.support.takeover import ServerProc, write_certificate  # noqa: E402
from tests.test_migrate_hosts import _migrate, _pki  # noqa: E402

MB = 1 << 20


async def _run(n: int, directory: Path) -> list[tuple[float, float, float]]:
    pki = _pki(directory)
    cert, key = write_certificate(directory)
    path = str(directory / "a.sock")
    a = ServerProc(["--host", "127.0.0.1", "--port", "0", "--cert", cert, "--key", key,
                    "--handoff", path])
    b = ServerProc(["--host", "127.0.0.1", "--port", "0", "--cert", cert, "--key", key,
                    "--migrate-listen", "127.0.0.1:0", "--migrate-cert", pki["b_cert"],
                    "--migrate-key", pki["b_key"], "--migrate-ca", pki["ca"]])
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10)
    args = p.parse_args()
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
