"""Fuzz campaign (issue 10): hostile input against the sans-I/O endpoint and a live server.

Run: ``.venv/bin/python bench/fuzz.py [--inproc-seconds 240] [--udp-seconds 300]
[--write]`` (``make fuzz``; ``make fuzz FUZZ_ARGS="--inputs 10000000"`` for a fixed count).

Two phases, then checks:

1. In process, at high rate, a server ``Endpoint`` (no sockets; simulated clock) gets
   - random datagrams of random length,
   - mutated real datagrams (bit flips, truncation, insertion, splicing) taken from real
     handshakes,
   - structure-aware Initials: a real ClientHello mutated (bytes flipped, TLS extensions
     cut or repeated) in a CRYPTO frame, sometimes with random frames next to it, sealed
     with the Initial keys of a fresh random DCID (so the server opens and parses them),
   - structure-aware 1-RTT packets: 1 to 4 frames of any type (including unknown ones)
     with random and extreme field values (0, 1, 2^14, 2^30, 2^62 - 1, random), or valid
     frames with bytes flipped, sealed with the keys of an established in-memory
     connection (``tests/support/forge.py``); when the server closes that connection, a
     new one is made.
2. Over UDP, the same four kinds of input go to a live ``quicflow.serve`` server in a
   process of its own (the 1-RTT ones through real connections handshaken over the
   socket by a sans-I/O client here).

Then: the in-process endpoint's clock jumps past the idle timeout and every timer runs;
the live server is left alone for its idle timeout (``--idle-timeout``, 2 s) plus a
margin; a legitimate client downloads and uploads through the live server with SHA-256
checked both ways. Reported: inputs and datagrams sent per kind, exceptions (in process:
raised by the endpoint; live server: exceptions reaching the event loop's handler or
logged at ERROR), connections left after the idle timeout, RSS before and after, and
whether the legitimate transfer was intact. A JSON report goes to stdout (and a markdown
summary with ``--write`` to bench/RESULTS.md); progress lines to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import hashlib
import json
import logging
import os
import random
import select
import shlex
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from quicflow.crypto.epoch import Epoch  # noqa: E402
from quicflow.crypto.keys import (  # noqa: E402
    INITIAL_SUITE,
    PacketProtector,
    derive_packet_keys,
    initial_secrets,
)
from quicflow.endpoint.endpoint import Endpoint  # noqa: E402
from quicflow.transport.config import Configuration  # noqa: E402
from quicflow.transport.connection import Connection  # noqa: E402
from quicflow.wire import frames as F  # noqa: E402
from quicflow.wire.packet import INITIAL, QUIC_V1, build_long_header  # noqa: E402
from quicflow.wire.varint import push_varint  # noqa: E402
from tests.support import echo_proto  # noqa: E402
from tests.support.forge import forge  # noqa: E402

IDLE = 2.0
EXTREMES = (0, 1, 2, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, (1 << 62) - 1)
FRAME_TYPES = [*range(0x00, 0x1F), 0x30, 0x31]


def py_blocks() -> int:
    """Memory blocks Python has allocated and not freed, after a full collection (unlike
    RSS, this falls again when objects are freed)."""
    gc.collect()
    return sys.getallocatedblocks()


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------- generators


def rand_varint(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.4:
        return rng.choice(EXTREMES)
    if r < 0.8:
        return rng.randrange(0, 1 << rng.choice((6, 14, 30)))
    return rng.randrange(0, 1 << 62)


def random_frames(rng: random.Random) -> bytes:
    """1 to 4 frames of any type, fields random or extreme (often invalid)."""
    out = bytearray()
    for _ in range(rng.randint(1, 4)):
        ftype = rng.choice(FRAME_TYPES) if rng.random() < 0.95 else rand_varint(rng)
        push_varint(out, ftype)
        for _ in range(rng.randint(0, 6)):
            v = rand_varint(rng)
            if rng.random() < 0.25 and v > 64:
                v = rng.randrange(0, 64)
            push_varint(out, v)
            if v < 64 and rng.random() < 0.5:  # a length: bytes follow
                out += rng.randbytes(v)
    return bytes(out)


def valid_frames(rng: random.Random, stream_base: int) -> bytes:
    """Frames a peer may send, with plausible values, to mutate afterwards."""
    sid = stream_base + 4 * rng.randrange(0, 8)
    frames: list[F.Frame] = [
        F.Stream(stream_id=sid, offset=rng.randrange(0, 1 << 20), data=rng.randbytes(
            rng.randrange(0, 200)), fin=rng.random() < 0.2),
        F.MaxData(maximum=rand_varint(rng)),
        F.Ping(),
        F.Crypto(offset=rng.randrange(0, 4096), data=rng.randbytes(rng.randrange(0, 64))),
    ]
    return encode(rng.sample(frames, rng.randint(1, len(frames))))


def encode(frames: list[F.Frame]) -> bytes:
    out = bytearray()
    for frame in frames:
        F.encode_frame(frame, out)
    return bytes(out)


def mutate(rng: random.Random, data: bytes, pool: list[bytes] | None = None) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if not buf:
            buf += rng.randbytes(rng.randint(1, 32))
        elif op < 0.5:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op < 0.65:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op < 0.75:
            del buf[rng.randrange(len(buf)):]
        elif op < 0.85:
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op < 0.93 and len(buf) > 2:
            i, j = sorted(rng.sample(range(len(buf)), 2))
            buf[i:i] = buf[i:j]  # repeat a slice (e.g. a TLS extension)
        elif pool:
            other = rng.choice(pool)
            cut = rng.randrange(len(buf))
            buf = buf[:cut] + other[rng.randrange(len(other) + 1):]
    return bytes(buf)


class Templates:
    """Real datagrams and a real ClientHello, from in-memory handshakes."""

    def __init__(self) -> None:
        from tests.support.memory_pair import MemoryPair

        ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False),
                      is_server=False)
        conn = ep.connect(("127.0.0.1", 4433), 0.0, server_name="localhost")
        self.datagrams: list[bytes] = [bytes(d) for d in ep.datagrams_to_send(conn, 0.0)]
        send = conn.spaces[0].crypto_send
        self.client_hello = b"".join(send.chunks)[send.buffer_start:]
        pair = MemoryPair(seed=7)
        captured: list[bytes] = []
        for link in (pair.up, pair.down):
            carry = link.carry

            def tap(ds: list[bytes], carry: Callable[[list[bytes]], list[bytes]] = carry
                    ) -> list[bytes]:
                captured.extend(bytes(d) for d in ds)
                return carry(ds)

            link.carry = tap  # type: ignore[method-assign,assignment]
        pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
        sid = pair.client.open_stream()
        pair.client.send_stream_data(sid, b"z" * 5000, end_stream=True)
        pair.run(lambda: not pair.client.loss.bytes_in_flight)
        self.datagrams += captured[:64]


def forged_initial(rng: random.Random, hello: bytes, pn: int = 0) -> bytes:
    """A client Initial for a fresh DCID with a mutated ClientHello (and maybe random
    frames), sealed with that DCID's Initial keys: the server opens it and parses it."""
    dcid = rng.randbytes(rng.choice((8, 8, 8, 20)))
    scid = rng.randbytes(8)
    body = mutate(rng, hello) if rng.random() < 0.9 else hello
    payload = bytearray(encode([F.Crypto(offset=0 if rng.random() < 0.9 else
                                         rand_varint(rng) % 65536, data=body)]))
    if rng.random() < 0.3:
        payload += random_frames(rng) if rng.random() < 0.5 else valid_frames(rng, 0)
    payload += bytes(max(0, 1160 - len(payload)))
    client_secret, _ = initial_secrets(dcid)
    protector = PacketProtector(derive_packet_keys(INITIAL_SUITE, client_secret))
    header = build_long_header(INITIAL, QUIC_V1, dcid, scid, b"", 4 + len(payload) + 16,
                               pn, 4)
    return protector.seal(header, bytes(payload), pn)


def one_rtt_payload(rng: random.Random, stream_base: int) -> bytes:
    r = rng.random()
    if r < 0.6:
        return random_frames(rng)
    frames = valid_frames(rng, stream_base)
    return mutate(rng, frames) if r < 0.85 else frames


# ---------------------------------------------------------------------- phase 1


def phase_inproc(args: argparse.Namespace, rng: random.Random, templates: Templates,
                 report: dict[str, Any]) -> None:
    from tests.support.memory_pair import CLIENT_ADDR, MemoryPair

    pair = MemoryPair(seed=rng.randrange(1 << 30))
    server = pair.server
    now = [0.0]

    def fresh_pair() -> MemoryPair:
        p = MemoryPair(seed=rng.randrange(1 << 30))
        p.run(lambda: p.client.handshake_confirmed and bool(p.server_conns))
        return p

    pair = fresh_pair()
    server = pair.server
    counts = {"random": 0, "mutated": 0, "initial": 0, "one_rtt": 0}
    exceptions: list[str] = []

    class Internal(logging.Handler):
        """A bug met while taking a packet closes that connection with INTERNAL_ERROR
        and is logged (transport/receive.py ``close_for_bug``), not raised: count it."""

        def emit(self, record: logging.LogRecord) -> None:
            exc = record.exc_info[1] if record.exc_info else None
            exceptions.append(f"internal: {exc!r}"[:300])

    logging.getLogger("quicflow.transport").addHandler(Internal(logging.ERROR))
    rss_before = rss_kb()
    blocks_before = py_blocks()
    start = time.monotonic()
    last_print = start
    n = 0
    addr_base = ("127.0.0.2", 40000)
    while True:
        if n % 256 == 0:
            t = time.monotonic()
            if t - start >= args.inproc_seconds or n >= args.inputs:
                break
            if t - last_print >= 10:
                last_print = t
                print(f"[inproc] {n} inputs, {n / (t - start):.0f}/s, "
                      f"{len(exceptions)} exceptions, {len(server.all_connections)} "
                      f"connections, rss {rss_kb()} kB", file=sys.stderr, flush=True)
        n += 1
        now[0] += 0.0001
        r = rng.random()
        try:
            if r < 0.25:
                kind = "random"
                data = rng.randbytes(rng.randint(1, 1500))
                server.receive(data, (addr_base[0], addr_base[1] + rng.randrange(64)), now[0])
            elif r < 0.5:
                kind = "mutated"
                data = mutate(rng, rng.choice(templates.datagrams), templates.datagrams)
                server.receive(data, (addr_base[0], addr_base[1] + rng.randrange(64)), now[0])
            elif r < 0.6:
                kind = "initial"
                data = forged_initial(rng, templates.client_hello)
                conn = server.receive(data, (addr_base[0], 30000 + rng.randrange(1000)),
                                      now[0])
                if conn is not None:
                    server.datagrams_to_send(conn, now[0])
            else:
                kind = "one_rtt"
                client = pair.client
                conns = pair.server_conns
                if client.state >= 2 or not conns or conns[0].state >= 2:
                    pair = fresh_pair()
                    server = pair.server
                    client = pair.client
                    conns = pair.server_conns
                stream_base = 0 if rng.random() < 0.7 else 1
                data = forge(client, Epoch.ONE_RTT, one_rtt_payload(rng, stream_base))
                server.receive(data, CLIENT_ADDR, pair.now)
                for conn in conns:
                    server.datagrams_to_send(conn, pair.now)
            counts[kind] += 1
            # as the runner does: stateless replies go out, new connections are taken
            server.pop_stateless()
            server.accepted.clear()
        except Exception as exc:  # noqa: BLE001 - the campaign counts them
            exceptions.append(f"{kind}: {exc!r}"[:300])
        if n % 4096 == 0:  # timers and sends of the random-address connections
            for conn in list(server.all_connections):
                conn.handle_timer(now[0])
                server.datagrams_to_send(conn, now[0])
                if conn.terminated:
                    server.forget(conn)
    elapsed = time.monotonic() - start
    # after the idle timeout: every timer runs, terminated connections are forgotten
    left_before = len(server.all_connections)
    later = max(now[0], pair.now) + 3600
    for conn in list(server.all_connections):
        conn.handle_timer(later)
        if conn.terminated:
            server.forget(conn)
    report["inproc"] = {
        "inputs": n - 1 if n else 0, "by_kind": counts, "seconds": round(elapsed, 1),
        "inputs_per_second": round(sum(counts.values()) / elapsed),
        "exceptions": len(exceptions), "exception_samples": exceptions[:5],
        "connections_at_end": left_before,
        "connections_left_after_idle_timeout": len(server.all_connections),
        "rss_kb_before": rss_before, "rss_kb_after": rss_kb(),
        "python_blocks_before": blocks_before, "python_blocks_after": py_blocks(),
    }


# ---------------------------------------------------------------------- phase 2


class UdpClient:
    """A sans-I/O client connection driven over a real UDP socket, to forge 1-RTT."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.server = ("127.0.0.1", port)
        self.ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False,
                                         idle_timeout=IDLE * 4), is_server=False)
        self.t0 = time.monotonic()
        self.conn: Connection = self.ep.connect(self.server, self.now(),
                                                server_name="localhost")
        self.sent = 0

    def now(self) -> float:
        return time.monotonic() - self.t0 + 1000.0

    def pump(self, wait: float = 0.0) -> None:
        for d in self.ep.datagrams_to_send(self.conn, self.now()):
            self.sock.sendto(d, self.server)
            self.sent += 1
        ready, _, _ = select.select([self.sock], [], [], wait)
        while ready:
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                break
            self.ep.receive(data, addr, self.now())
        timer = self.conn.timer()
        if timer is not None and self.now() >= timer:
            self.conn.handle_timer(self.now())

    def handshake(self, timeout: float = 3.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.conn.handshake_confirmed:
            if self.conn.terminated:
                return False
            self.pump(0.005)
        return self.conn.handshake_confirmed

    def close(self) -> None:
        self.sock.close()


def phase_udp(args: argparse.Namespace, rng: random.Random, templates: Templates,
              server: subprocess.Popen[str], port: int, report: dict[str, Any]) -> None:
    target = ("127.0.0.1", port)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    counts = {"random": 0, "mutated": 0, "initial": 0, "one_rtt": 0}
    handshakes = 0
    client: UdpClient | None = None
    rss_before = rss_kb(server.pid)
    start = time.monotonic()
    last_print = start
    n = 0
    while True:
        if n % 64 == 0:
            t = time.monotonic()
            if t - start >= args.udp_seconds or n >= args.inputs:
                break
            if t - last_print >= 10:
                last_print = t
                print(f"[udp] {n} datagrams, {n / (t - start):.0f}/s, {handshakes} "
                      f"handshakes, server rss {rss_kb(server.pid)} kB", file=sys.stderr,
                      flush=True)
            for s in socks:  # drain what the server answered
                try:
                    while s.recv(65536):
                        pass
                except BlockingIOError:
                    pass
            if server.poll() is not None:
                raise RuntimeError("the live server died")
        r = rng.random()
        sock = rng.choice(socks)
        try:
            if r < 0.3:
                sock.sendto(rng.randbytes(rng.randint(1, 1500)), target)
                counts["random"] += 1
            elif r < 0.6:
                sock.sendto(mutate(rng, rng.choice(templates.datagrams),
                                   templates.datagrams), target)
                counts["mutated"] += 1
            elif r < 0.7:
                sock.sendto(forged_initial(rng, templates.client_hello), target)
                counts["initial"] += 1
            else:
                if client is None or client.conn.state >= 2:
                    if client is not None:
                        client.close()
                    client = UdpClient(port)
                    handshakes += 1
                    if not client.handshake():
                        client.close()
                        client = None
                        continue
                data = forge(client.conn, Epoch.ONE_RTT,
                             one_rtt_payload(rng, 0 if rng.random() < 0.7 else 1))
                client.sock.sendto(data, target)
                counts["one_rtt"] += 1
                if counts["one_rtt"] % 8 == 0:
                    client.pump(0.0)
        except BlockingIOError:
            time.sleep(0.001)  # socket buffer full: let the server catch up
            continue
        n += 1
        if n % 200 == 0:
            time.sleep(0.0005)  # keep the server's socket buffer from overflowing
    if client is not None:
        client.close()
    for s in socks:
        s.close()
    report["udp"] = {
        "datagrams": sum(counts.values()), "by_kind": counts, "handshakes": handshakes,
        "seconds": round(time.monotonic() - start, 1), "server_rss_kb_before": rss_before,
        "server_rss_kb_during_end": rss_kb(server.pid),
    }


# ---------------------------------------------------------------------- live server


async def serve_bounded(reader: Any, writer: Any) -> None:
    """``echo_proto.serve_stream`` that refuses (RESET_STREAM) a response over 64 MiB:
    a forged request may ask for 2^62 bytes, which the test protocol would try to build."""
    head = await reader.readexactly(echo_proto.REQUEST_HEADER.size)
    size, seed = echo_proto.parse_request_header(head)
    if size > 64 << 20:
        writer.reset(1)
        return
    h = hashlib.sha256()
    n = 0
    while chunk := await reader.read(echo_proto.CHUNK):
        h.update(chunk)
        n += len(chunk)
    writer.write(echo_proto.response_header(h.digest(), n))
    for part in echo_proto.payload_chunks(seed, size):
        writer.write(part)
        await writer.drain()
    writer.write_eof()


async def _serve(idle: float, retry: str) -> None:
    import quicflow
    from tests.support.quic_helpers import self_signed

    errors = {"exceptions": 0, "samples": [], "stream_errors": 0}  # type: dict[str, Any]

    async def handler(reader: Any, writer: Any) -> None:
        # what a hostile stream does to the application (a FIN before the request, a
        # reset, the connection closed under it) is the application's business: counted
        # apart; anything else is an exception
        try:
            if writer.stream_id & 2:  # a peer's unidirectional stream: read, no answer
                while await reader.read(1 << 16):
                    pass
                return
            await serve_bounded(reader, writer)
        except (asyncio.IncompleteReadError, quicflow.QuicflowError):
            errors["stream_errors"] += 1

    def on_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors["exceptions"] += 1
        exc = context.get("exception")
        errors["samples"].append(
            "".join(traceback.format_exception(exc))[-1500:] if exc is not None
            else str(context.get("message")))

    class Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors["exceptions"] += 1
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
            errors["samples"].append(text[-1500:])

    logging.getLogger().addHandler(Count(logging.ERROR))
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(on_exception)
    cred = self_signed()
    config = quicflow.Configuration(alpn_protocols=["perf"], certificate_chain=[cred.cert],
                                    private_key=cred.key, idle_timeout=idle, retry=retry)
    server = await quicflow.serve(handler, "127.0.0.1", 0,
                                  configuration=config)
    print(json.dumps({"event": "ready", "port": server.address[1]}), flush=True)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        endpoint = server.runner.endpoint
        print(json.dumps({
            "connections": len(endpoint.all_connections), "rss_kb": rss_kb(),
            "python_blocks": py_blocks(),
            "exceptions": errors["exceptions"], "exception_samples": errors["samples"][:5],
            "stream_errors": errors["stream_errors"],
            "endpoint": {k: v for k, v in endpoint.stats().items()
                         if isinstance(v, int)},
        }), flush=True)


def ask(server: subprocess.Popen[str]) -> dict[str, Any]:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write("stats\n")
    server.stdin.flush()
    return dict(json.loads(server.stdout.readline()))


async def legit_transfer(port: int, size: int) -> dict[str, object]:
    import quicflow

    config = quicflow.Configuration(alpn_protocols=["perf"], verify_peer=False,
                                    server_name="localhost")
    async with quicflow.connect("127.0.0.1", port, configuration=config) as conn:
        reader, writer = await conn.create_stream()
        return await echo_proto.client_exchange(
            reader, writer, upload=echo_proto.payload(5, size // 4), download=size, seed=5)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_server"]:
        asyncio.run(_serve(float(argv[1]), argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inproc-seconds", type=float, default=240.0,
                   help="seconds of in-process fuzzing of the sans-I/O endpoint (default 240)")
    p.add_argument("--udp-seconds", type=float, default=300.0,
                   help="seconds of fuzzing the live server over UDP (default 300)")
    p.add_argument("--inputs", type=int, default=1 << 62,
                   help="stop each phase after this many inputs (default: time only)")
    p.add_argument("--idle-timeout", type=float, default=IDLE,
                   help=f"the live server's idle timeout in seconds (default {IDLE:g})")
    p.add_argument("--transfer", type=int, default=4 << 20,
                   help="bytes the legitimate client downloads at the end (default 4 MiB)")
    p.add_argument("--retry", choices=("never", "load", "always"), default="never",
                   help="the live server's Retry policy (default never: every forged "
                   "Initial reaches the TLS parser; \"load\" is the library default)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--write", action="store_true",
                   help="append a summary to bench/RESULTS.md")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    report: dict[str, Any] = {"command": " ".join(shlex.quote(a) for a in sys.argv),
                              "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"}
    templates = Templates()
    if args.inproc_seconds > 0:
        phase_inproc(args, rng, templates, report)
    if args.udp_seconds > 0:
        server = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_server", str(args.idle_timeout),
             args.retry],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert server.stdout is not None
            port = int(json.loads(server.stdout.readline())["port"])
            before = ask(server)
            phase_udp(args, rng, templates, server, port, report)
            time.sleep(args.idle_timeout * 3 + 2)  # the idle timeout, and the closing period
            after = ask(server)
            result = asyncio.run(legit_transfer(port, args.transfer))
            last = ask(server)
            report["udp"].update({
                "server_exceptions": last["exceptions"],
                "server_exception_samples": last["exception_samples"],
                "server_app_stream_errors": last["stream_errors"],
                "connections_before": before["connections"],
                "connections_left_after_idle_timeout": after["connections"],
                "server_rss_kb_before": before["rss_kb"],
                "server_rss_kb_after_idle": after["rss_kb"],
                "server_python_blocks_before": before["python_blocks"],
                "server_python_blocks_after_idle": after["python_blocks"],
                "server_endpoint_counters": after["endpoint"],
                "legit_transfer_intact": bool(result["ok"]),
                "legit_transfer": result,
            })
        finally:
            server.terminate()
            server.wait(5)
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    if args.write:
        write_summary(report)
    ok = (report.get("inproc", {}).get("exceptions", 0) == 0
          and report.get("inproc", {}).get("connections_left_after_idle_timeout", 0) == 0
          and report.get("udp", {}).get("server_exceptions", 0) == 0
          and report.get("udp", {}).get("connections_left_after_idle_timeout", 0) == 0
          and report.get("udp", {}).get("legit_transfer_intact", True))
    return 0 if ok else 1


def write_summary(report: dict[str, Any]) -> None:
    lines = [f"\n## bench/fuzz.py — {report['date'][:10]}\n",
             f"Command: `{report['command']}` ({report['date']} UTC, 2 shared CPUs)\n"]
    if "inproc" in report:
        r = report["inproc"]
        lines.append(
            f"- in process (sans-I/O endpoint): {r['inputs']:,} inputs in {r['seconds']} s "
            f"({r['inputs_per_second']:,}/s; by kind {r['by_kind']}); exceptions "
            f"{r['exceptions']}; connections left after the idle timeout "
            f"{r['connections_left_after_idle_timeout']} (of {r['connections_at_end']} at "
            f"the end); RSS {r['rss_kb_before']:,} -> {r['rss_kb_after']:,} kB; Python "
            f"blocks allocated {r['python_blocks_before']:,} -> {r['python_blocks_after']:,}")
    if "udp" in report:
        r = report["udp"]
        lines.append(
            f"- live server over UDP: {r['datagrams']:,} datagrams in {r['seconds']} s "
            f"(by kind {r['by_kind']}; {r['handshakes']} real handshakes for the 1-RTT "
            f"ones); server exceptions {r['server_exceptions']} (streams the echo handler "
            f"saw end early or reset: {r['server_app_stream_errors']}); connections left after "
            f"the idle timeout {r['connections_left_after_idle_timeout']}; server RSS "
            f"{r['server_rss_kb_before']:,} -> {r['server_rss_kb_during_end']:,} (end of "
            f"fuzzing) -> {r['server_rss_kb_after_idle']:,} kB (after the idle timeout); "
            f"server Python blocks allocated {r['server_python_blocks_before']:,} -> "
            f"{r['server_python_blocks_after_idle']:,} (after the idle timeout); "
            f"legitimate client's transfer afterwards intact: {r['legit_transfer_intact']}")
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
