"""CPU per GB of the native receive loop (``quicflow.datapath._udp.recv``) on loopback.

Run: ``.venv/bin/python bench/recv_native.py [EXTENSION.so ...] [--rounds 6]``

A bulk receiver's read: GSO trains of 50 x 1200 bytes queued on a loopback socket with
UDP_GRO on (24 MB at a time, inside a 64 MiB receive buffer), then read in calls of 16
buffers until empty, as the runner reads a round. The figure is the reading thread's CPU
time (user + system: the kernel's copy is most of it) per GB read. Given the paths of
several builds of the extension (e.g. ``src/quicflow/datapath/_udp*.so`` of two
checkouts) they run in interleaved rounds in one process, one column each, so a noisy
host moves them together; without arguments, the installed extension alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import struct
import sys
import time
from types import ModuleType

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_RCVBUFFORCE = 33
SEGMENT = 1200
SEGMENTS = 50
TRAINS = 400  # 24 MB queued per fill
FILLS = 40  # per round and extension: ~1 GB


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("quicflow.datapath._udp", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a loadable extension")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("extensions", nargs="*", help="paths of _udp builds to compare")
    ap.add_argument("--rounds", type=int, default=6,
                    help="interleaved rounds, ~1 GB read per extension each (default 6)")
    args = ap.parse_args()
    if args.extensions:
        mods = {path: load(path) for path in args.extensions}
    else:
        from quicflow.datapath import _udp  # type: ignore[attr-defined]

        mods = {"installed": _udp}
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    try:
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    except PermissionError:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    rx.setsockopt(SOL_UDP, UDP_GRO, 1)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    train = bytes(SEGMENT * SEGMENTS)
    gso = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", SEGMENT))]
    results: dict[str, list[float]] = {name: [] for name in mods}
    for rnd in range(args.rounds):
        for name, mod in mods.items():
            spent = 0.0
            nbytes = 0
            for _ in range(FILLS):
                for _ in range(TRAINS):
                    tx.sendmsg([train], gso)
                out: list[object] = []
                start = time.thread_time()
                while True:
                    out.clear()
                    nbytes += mod.recv(rx.fileno(), out, 16)[2]
                    if not out:
                        break
                spent += time.thread_time() - start
            results[name].append(spent / nbytes * 1e9)
        print(f"round {rnd + 1}/{args.rounds}", file=sys.stderr)
    print("| extension | CPU s/GB per round | median |")
    print("|---|---|---|")
    for name, values in results.items():
        median = sorted(values)[len(values) // 2]
        print(f"| {name} | {' '.join(f'{v:.3f}' for v in values)} | {median:.3f} |")


if __name__ == "__main__":
    main()
