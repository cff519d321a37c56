"""Micro-benchmark of the crypto offload engines: batch seal and open, per packet.

Run: .venv/bin/python bench/engine_micro.py [--batch 40] [--size 1200] [--seconds 0.5]

Batches of ``--batch`` short-header packets of ``--size`` bytes each (header 1+8+2 bytes,
payload, 16-byte tag) in one segmentation-shaped buffer, one cid. Prints µs per packet
for ``SoftwareOffloadEngine`` and ``NativeOffloadEngine`` (when the extension is built),
for AES-128-GCM and ChaCha20-Poly1305 (``--all-suites`` adds AES-256-GCM), best of
``--rounds`` rounds. Seal re-seals the same plaintext buffer copy each time (the copy is
timed separately and subtracted); open opens the same sealed datagram each time (no key
state changes). Then ``open`` vs ``open_run`` on runs of STREAM packets (one stream,
contiguous offsets): ``open`` alone, ``open`` plus the per-packet STREAM parse and slice the
receiver did before ``open_run``, and ``open_run`` (open + coalesce into one entry).
Last, the sender's run: build_bulk's former per-packet Python framing loop + ``seal`` vs
``seal_stream_run`` (framing, data copy and sealing in one engine call).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from quicflow.crypto import CipherSuite, OpenResult, SoftwareOffloadEngine
from quicflow.crypto.native import NativeOffloadEngine, available, openssl_version
from quicflow.crypto.offload import OffloadEngine, single_stream_frame
from quicflow.wire.frames import encode_stream_header

CID = bytes.fromhex("0102030405060708")
HEADER_LEN = 1 + len(CID) + 2


def _secret(suite: CipherSuite) -> bytes:
    return bytes(range(48 if suite == CipherSuite.AES_256_GCM_SHA384 else 32))


def _plain_batch(batch: int, size: int) -> tuple[bytearray, list[tuple[int, int, int, int, bytes]]]:
    payload_len = size - HEADER_LEN - 16
    buf = bytearray(size * batch)
    descs: list[tuple[int, int, int, int, bytes]] = []
    for i in range(batch):
        off = i * size
        buf[off : off + HEADER_LEN] = bytes((0x41,)) + CID + i.to_bytes(2, "big")
        buf[off + HEADER_LEN : off + HEADER_LEN + payload_len] = os.urandom(payload_len)
        descs.append((off, HEADER_LEN, payload_len, i, CID))
    return buf, descs


def _best(fn: Callable[[], object], seconds: float, rounds: int) -> float:
    """Best seconds per call over ``rounds`` rounds of about ``seconds`` each."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > seconds / 10:
            break
        n *= 2
    per_round = max(1, int(n * seconds / max(time.perf_counter() - t0, 1e-9) / 2))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            fn()
        best = min(best, (time.perf_counter() - t0) / per_round)
    return best


def measure(
    make: Callable[[], OffloadEngine],
    suite: CipherSuite,
    batch: int,
    size: int,
    seconds: float,
    rounds: int,
) -> tuple[float, float]:
    """(seal µs/packet, open µs/packet)."""
    sender, receiver = make(), make()
    sender.install(CID, suite, _secret(suite), opener=False)
    receiver.install(CID, suite, _secret(suite), opener=True, largest_pn=batch)
    plain, descs = _plain_batch(batch, size)
    work = bytearray(plain)

    def copy() -> None:
        work[:] = plain

    def seal() -> None:
        work[:] = plain
        sender.seal(work, descs)

    seal()
    sealed = bytes(work)
    open_descs = [(off, size, cid) for off, _h, _p, _pn, cid in descs]
    results = receiver.open(sealed, open_descs)
    assert all(r is not None for r in results), "benchmark packets must open"

    def open_() -> None:
        receiver.open(sealed, open_descs)

    t_copy = _best(copy, seconds, rounds)
    t_seal = _best(seal, seconds, rounds) - t_copy
    t_open = _best(open_, seconds, rounds)
    return t_seal * 1e6 / batch, t_open * 1e6 / batch


def _result_construction(batch: int, size: int, seconds: float, rounds: int) -> None:
    """C-built OpenResult vs plain tuples wrapped by a thin Python layer."""
    from quicflow.crypto import native

    engine = NativeOffloadEngine()
    suite = CipherSuite.AES_128_GCM_SHA256
    engine.install(CID, suite, _secret(suite), opener=True, largest_pn=batch)
    sender = NativeOffloadEngine()
    sender.install(CID, suite, _secret(suite), opener=False)
    buf, descs = _plain_batch(batch, size)
    sender.seal(buf, descs)
    data = bytes(buf)
    odescs = [(off, size, cid) for off, _h, _p, _pn, cid in descs]
    ext = native._ext
    table = engine._openers
    make = OpenResult._make

    def in_c() -> None:
        ext.open(table, data, odescs, OpenResult)

    def in_python() -> None:
        raw, _failures = ext.open(table, data, odescs, None)
        [None if t is None else make(t) for t in raw]

    def plain_tuples() -> None:
        ext.open(table, data, odescs, None)

    for name, fn in (
        ("OpenResult built in C", in_c),
        ("plain tuples + OpenResult._make in Python", in_python),
        ("plain tuples, no wrapping", plain_tuples),
    ):
        print(f"  open results: {name:45s} {_best(fn, seconds, rounds) * 1e6 / batch:6.3f} µs/pkt")


def _stream_batch(
    batch: int, size: int
) -> tuple[bytearray, list[tuple[int, int, int, int, bytes]]]:
    """Like ``_plain_batch`` but each payload is one STREAM frame of stream 0, contiguous."""
    payload_len = size - HEADER_LEN - 16
    buf = bytearray(size * batch)
    descs: list[tuple[int, int, int, int, bytes]] = []
    offset = 1 << 20
    for i in range(batch):
        off = i * size
        data_len = payload_len - len(encode_stream_header(0, offset, payload_len, False))
        head = encode_stream_header(0, offset, data_len, False)
        payload = head + os.urandom(data_len)
        assert len(payload) == payload_len
        buf[off : off + HEADER_LEN] = bytes((0x41,)) + CID + i.to_bytes(2, "big")
        buf[off + HEADER_LEN : off + HEADER_LEN + payload_len] = payload
        descs.append((off, HEADER_LEN, payload_len, i, CID))
        offset += data_len
    return buf, descs


def measure_run(
    make: Callable[[], OffloadEngine],
    suite: CipherSuite,
    batch: int,
    size: int,
    seconds: float,
    rounds: int,
) -> tuple[float, float, float]:
    """(open, open + per-packet STREAM parse, open_run) in µs/packet on a STREAM run."""
    sender, receiver = make(), make()
    sender.install(CID, suite, _secret(suite), opener=False)
    receiver.install(CID, suite, _secret(suite), opener=True, largest_pn=batch)
    buf, descs = _stream_batch(batch, size)
    sender.seal(buf, descs)
    sealed = bytes(buf)
    odescs = [(off, size, cid) for off, _h, _p, _pn, cid in descs]
    entries = receiver.open_run(sealed, odescs)
    assert len(entries) == 1 and entries[0][0] == 0 and entries[0][2] == batch, entries[:2]

    def open_() -> None:
        receiver.open(sealed, odescs)

    def open_parse() -> None:
        for result in receiver.open(sealed, odescs):
            assert result is not None
            payload = result.payload
            parsed = single_stream_frame(payload)
            assert parsed is not None
            payload[parsed[2] : parsed[3]]

    def open_run() -> None:
        receiver.open_run(sealed, odescs)

    o, op, r = (_best(fn, seconds, rounds) * 1e6 / batch for fn in (open_, open_parse, open_run))
    return o, op, r


def _old_build(
    engine: OffloadEngine, buf: bytearray, data: bytearray, pn: int, count: int
) -> int:
    """build_bulk before ``seal_stream_run``: a Python loop of plaintext packets + seal()."""
    pn_len, sid, off_len = 2, 0, 4
    prefix = bytes((0x40 | (pn_len - 1),)) + CID
    header_len = len(prefix) + pn_len
    sid_bytes = bytes((sid,))
    frame_head = 1 + len(sid_bytes) + off_len + 2
    data_cap = RUN_MDS - header_len - 16 - frame_head
    seal: list[tuple[int, int, int, int, bytes]] = []
    offset, end, built = 0, len(data), 0
    with memoryview(data) as view:
        while built < count and offset < end:
            length = min(end - offset, data_cap)
            packet_start = len(buf)
            buf += prefix
            buf += (pn & 0xFFFF).to_bytes(pn_len, "big")
            buf.append(0x0E)
            buf += sid_bytes
            buf += (0x80000000 | offset).to_bytes(off_len, "big")
            buf += (0x4000 | length).to_bytes(2, "big")
            buf += view[offset : offset + length]
            buf += bytes(16)
            seal.append((packet_start, header_len, frame_head + length, pn, CID))
            pn += 1
            offset += length
            built += 1
    engine.seal(buf, seal)
    return built


RUN_MDS = 1200


def measure_stream_run(
    make: Callable[[], OffloadEngine], suite: CipherSuite, batch: int, seconds: float,
    rounds: int,
) -> tuple[float, float]:
    """(old build loop + seal, seal_stream_run) in µs/packet for a run of ``batch``
    1200-byte STREAM packets from a stream buffer (what build_bulk does per run)."""
    engine = make()
    engine.install(CID, suite, _secret(suite), opener=False)
    data_cap = RUN_MDS - (1 + len(CID) + 2) - 16 - (1 + 1 + 4 + 2)
    data = bytearray(os.urandom(data_cap * batch))
    a, b = bytearray(), bytearray()
    assert _old_build(engine, a, data, 0, batch) == batch
    assert engine.seal_stream_run(b, CID, 0, 2, 0, data, 0, len(data), 0, 4, data_cap, batch,
                                  False) == batch
    assert a == b and len(a) == batch * RUN_MDS

    def old() -> None:
        _old_build(engine, bytearray(), data, 0, batch)

    def new() -> None:
        engine.seal_stream_run(bytearray(), CID, 0, 2, 0, data, 0, len(data), 0, 4, data_cap,
                               batch, False)

    t_old, t_new = (_best(fn, seconds, rounds) * 1e6 / batch for fn in (old, new))
    return t_old, t_new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--size", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--all-suites", action="store_true")
    args = parser.parse_args()

    suites = [CipherSuite.AES_128_GCM_SHA256, CipherSuite.CHACHA20_POLY1305_SHA256]
    if args.all_suites:
        suites.insert(1, CipherSuite.AES_256_GCM_SHA384)
    engines: list[tuple[str, Callable[[], OffloadEngine]]] = [("software", SoftwareOffloadEngine)]
    if available():
        engines.append(("native", NativeOffloadEngine))
    else:
        print("native extension not built: software engine only")
    print(f"batch {args.batch} x {args.size} B, OpenSSL {openssl_version()}")
    print(
        f"{'suite':28s} {'engine':9s} {'seal µs/pkt':>12s} {'open µs/pkt':>12s} "
        f"{'seal MB/s':>10s} {'open MB/s':>10s}"
    )
    for suite in suites:
        for name, make in engines:
            seal, open_ = measure(make, suite, args.batch, args.size, args.seconds, args.rounds)
            print(
                f"{suite.name:28s} {name:9s} {seal:12.3f} {open_:12.3f} "
                f"{args.size / seal:10.0f} {args.size / open_:10.0f}"
            )
    print(f"STREAM runs of {args.batch} packets (one entry per run with open_run), µs/pkt:")
    print(f"{'suite':28s} {'engine':9s} {'open':>8s} {'open+parse':>11s} {'open_run':>9s}")
    for suite in suites:
        for name, make in engines:
            o, op, r = measure_run(make, suite, args.batch, args.size, args.seconds, args.rounds)
            print(f"{suite.name:28s} {name:9s} {o:8.3f} {op:11.3f} {r:9.3f}")
    print(f"sender runs of {args.batch} x {RUN_MDS} B STREAM packets (build + seal), µs/pkt:")
    print(f"{'suite':28s} {'engine':9s} {'old loop+seal':>14s} {'seal_stream_run':>16s}")
    for suite in suites:
        for name, make in engines:
            old, new = measure_stream_run(make, suite, args.batch, args.seconds, args.rounds)
            print(f"{suite.name:28s} {name:9s} {old:14.3f} {new:16.3f}")
    if available():
        _result_construction(args.batch, args.size, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
