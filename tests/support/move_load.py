"""A load for the lost wake-up check across moves: transfers that go on while their
connections move between two servers again and again (test-only).

One process holds a client, servers A and B (``quicflow.serve`` with perf's handoff
hooks; each accepts moves from the other over mutually authenticated TLS) and one
``LossyUdpRelay`` per client connection, the router in front of the service address.
Each client connection runs ``streams`` perf streams at once, half of them downloads
(``download`` bytes, SHA-256 checked against the pattern) and half uploads (``upload``
bytes of the pattern, checked by the server at every read: ``CheckingPerf``), so data
flows both ways when a connection is captured. The mover moves every connection to the
other server (``QuicServer.move_to``) each time the bytes done pass the next of
``moves`` even marks, then switches the relays: with loss, packets and ACKs are in
flight and ACKs are owed at the capture (``MoveOutcome.at_capture`` counts them).
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import quicflow
from quicflow.aio import handover as handover_module
from quicflow.apps.perf import CHUNK, PATTERN_SIZE, PatternChecker, PerfServerHandler
from quicflow.migration.transfer import client_context, server_context
from quicflow.tls.certs import certificate_pem, generate_ca, issue_certificate, private_key_pem
from tests.support import transfer as T
from tests.support.relay import LossyUdpRelay

KB, MB = 1024, 1 << 20


@dataclass(frozen=True)
class MoveLoad:
    connections: int = 2
    streams: int = 4  # per connection, at once: half downloads, half uploads
    download: int = 2 * MB
    upload: int = MB
    moves: int = 4  # per run (A -> B -> A ...)
    loss: float = 0.03  # each way, through the relays (with as much reordering)
    seed: int = 1
    idle_timeout: float = 10.0
    timeout: float = 120.0


@dataclass
class MoveOutcome:
    ok: bool = False
    error: str = ""
    seconds: float = 0.0
    moves: int = 0  # moves made
    moved: int = 0  # connections restored by the moves
    upload_errors: int = 0  # upload reads that did not match the pattern
    #: at the captures: connections with ack-eliciting packets in flight, with an ACK
    #: owed (ack-eliciting packets not acknowledged yet), with lost bytes to send again
    at_capture: dict[str, int] = field(default_factory=dict)
    relay: dict[str, int] = field(default_factory=dict)  # datagrams dropped, reordered
    #: per move: seconds in ``move_to`` (TLS session, captures, restores), and from the
    #: route switch until the client has 64 KiB more (the transfer going again)
    move_seconds: list[float] = field(default_factory=list)
    resume_seconds: list[float] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # connections not captured


class CheckingPerf(PerfServerHandler):
    """Perf's server handler, which also checks every upload read against the pattern
    (the offset checked so far is part of the captured state)."""

    def __init__(self) -> None:
        super().__init__()
        self.upload_errors = 0
        self.uploaded = 0  # upload bytes checked

    async def _read_to_fin(self, reader: Any) -> None:
        offsets = _offsets(reader._connection)
        checker = PatternChecker()
        checker.offset = offsets.get(str(reader.stream_id), 0)
        while True:
            data = await reader.read(1 << 20)
            if not data:
                return
            if checker.feed(data) != -1:
                self.upload_errors += 1
                checker.offset += len(data)
            self.uploaded += len(data)
            offsets[str(reader.stream_id)] = checker.offset

    def capture(self, connection: Any) -> dict[str, Any]:
        return {"perf": super().capture(connection), "up": dict(_offsets(connection))}

    async def restore(self, connection: Any, state: Any, streams: Any) -> None:
        _offsets(connection).update(state["up"])
        await super().restore(connection, state["perf"], streams)


def _offsets(connection: Any) -> dict[str, int]:
    table: dict[str, int] = connection.app_state.setdefault("up", {})
    return table


def _pki(directory: Path) -> dict[str, Any]:
    ca, ca_key = generate_ca("wake-up move CA")
    (directory / "ca.pem").write_bytes(certificate_pem(ca))
    files = {}
    for name in ("a", "b"):
        cert, key = issue_certificate(ca, ca_key, ["localhost", "127.0.0.1"], client_auth=True)
        (directory / f"{name}.pem").write_bytes(certificate_pem(cert))
        (directory / f"{name}.key").write_bytes(private_key_pem(key))
        files[name] = (str(directory / f"{name}.pem"), str(directory / f"{name}.key"))
    ca_file = str(directory / "ca.pem")
    return {name: (server_context(*files[name], ca_file), client_context(*files[name], ca_file))
            for name in files}


def _pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    done = 0
    while done < size:
        n = min(size - done, len(CHUNK))
        digest.update(CHUNK[:n])
        done += n
    return digest.hexdigest()


async def run_moves(load: MoveLoad, directory: Path) -> MoveOutcome:
    """Run ``load`` on the running loop (install the check before); see the module
    docstring."""
    out = MoveOutcome(at_capture={"captured": 0, "in_flight": 0, "ack_owed": 0,
                                  "lost_bytes": 0})
    capture = handover_module.capture_sealed

    def counted(conn: Any, *args: Any, **kw: Any) -> Any:
        counts = out.at_capture
        counts["captured"] += 1
        counts["in_flight"] += conn.loss.ack_eliciting_in_flight > 0
        counts["ack_owed"] += conn.spaces[2].ack_eliciting_pending > 0
        counts["lost_bytes"] += any(s.send is not None and bool(s.send.lost.starts)
                                    for s in conn.streams.values())
        return capture(conn, *args, **kw)

    handover_module.capture_sealed = counted  # type: ignore[assignment]
    contexts = _pki(directory)
    handler = CheckingPerf()
    cfg = dict(idle_timeout=load.idle_timeout)
    servers = {name: await quicflow.serve(handler, "127.0.0.1", 0,
                                          configuration=T.server_configuration(**cfg),
                                          capture=handler.capture, restore=handler.restore)
               for name in ("a", "b")}
    receivers = {name: await servers[name].accept_moves(  # type: ignore[union-attr]
        "127.0.0.1", 0, contexts[name][0]) for name in servers}
    relays = [await LossyUdpRelay(("127.0.0.1", servers["a"].address[1]),
                                  loss=load.loss, reorder=load.loss,
                                  seed=load.seed * 100 + i).start()
              for i in range(load.connections)]
    total = load.connections * (load.streams // 2) * (load.download + load.upload)
    done = [0]
    digests: list[bool] = []
    loop = asyncio.get_running_loop()

    async def stream(face: Any, index: int) -> None:
        down = load.download if index % 2 == 0 else 16 * KB
        up = load.upload if index % 2 else 16 * KB
        reader, writer = await face.create_stream()
        writer.write(struct.pack("!Q", down))
        sent = 0
        while sent < up:
            n = min(up - sent, len(CHUNK) - sent % PATTERN_SIZE)
            start = sent % PATTERN_SIZE
            writer.write(CHUNK[start:start + n])
            await writer.drain()
            sent += n
            done[0] += n
        writer.write_eof()
        digest = hashlib.sha256()
        while data := await reader.read(1 << 20):
            digest.update(data)
            done[0] += len(data)
        digests.append(digest.hexdigest() == _pattern_sha256(down))

    async def client(i: int) -> None:
        relay = relays[i]
        cfg = T.client_configuration(idle_timeout=load.idle_timeout)
        async with quicflow.connect(relay.address[0], relay.address[1],
                                    configuration=cfg) as face:
            first = face.conn
            await asyncio.gather(*(stream(face, k) for k in range(load.streams)))
            if face.conn is not first or face.closed:
                raise AssertionError("the client's connection changed")

    async def mover() -> None:
        at = "a"
        for k in range(load.moves):
            mark = total * (k + 1) // (load.moves + 1)
            while done[0] < mark:
                await asyncio.sleep(0.002)
            to = "b" if at == "a" else "a"
            receiver = receivers[to]
            started = loop.time()
            moved = await servers[at].move_to(  # type: ignore[union-attr]
                receiver.address[0], receiver.address[1], contexts[at][1],
                server_name="localhost")
            for relay in relays:
                relay.server_addr = ("127.0.0.1", servers[to].address[1])
            switched = loop.time()
            out.move_seconds.append(round(switched - started, 4))
            out.moves += 1
            out.moved += moved
            at = to
            before = done[0]
            while done[0] < before + 64 * KB and done[0] < total:
                await asyncio.sleep(0.001)
            out.resume_seconds.append(round(loop.time() - switched, 4))

    start = loop.time()
    try:
        clients = [loop.create_task(client(i)) for i in range(load.connections)]
        moving = loop.create_task(mover())
        await asyncio.wait_for(asyncio.gather(*clients), load.timeout)
        await asyncio.wait_for(moving, 5.0)
        out.seconds = loop.time() - start
        out.ok = len(digests) == load.connections * load.streams and all(digests)
        if not out.ok:
            out.error = f"digests {digests}"
    except Exception as exc:  # noqa: BLE001 (the outcome reports it)
        out.seconds = loop.time() - start
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        handover_module.capture_sealed = capture  # type: ignore[assignment]
        for relay in relays:
            for d in (relay.c2s, relay.s2c):
                out.relay["dropped"] = out.relay.get("dropped", 0) + d.dropped
                out.relay["reordered"] = out.relay.get("reordered", 0) + d.reordered
            await relay.close()
        for receiver in receivers.values():
            receiver.close()
        for server in servers.values():
            server.close()
    for server in servers.values():
        for reason, count in server.handover.skip_reasons.items():  # type: ignore[union-attr]
            out.skipped[reason] = out.skipped.get(reason, 0) + count
    out.upload_errors = handler.upload_errors
    if out.upload_errors:
        out.ok, out.error = False, f"{out.upload_errors} upload reads off the pattern"
    return out
