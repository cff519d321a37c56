"""Moving running connections to a server on another host (issue 7, item 4a).

The service address moves with them (a router switches its route, or the address itself
moves): the new server has its own socket bound to the same address and port, so no
file descriptor travels, only the sealed snapshots, over TCP inside mutually
authenticated TLS (``migration.transfer``). The old server stops each moved connection's
face, captures and releases it and forgets it; what reaches it afterwards is dropped as
an unknown CID, and QUIC's loss recovery sends it again once the route points to the new
host. The new server restores each connection as it arrives and serves it at once.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Any

from ..migration.handoff import reply
from ..migration.transfer import (
    Receiver,
    Session,
    TransferError,
    client_context,
    open_sender,
    serve_receiver,
)
from ..transport.codec import SnapshotError
from ..transport.state import CLOSING
from .handover import restore_one, start_restored

if TYPE_CHECKING:
    from .handover import Handover

FORMAT = "quicflow-move-1"


async def move_connections(
    handover: Handover,
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_name: str | None = None,
    count: int | None = None,
) -> int:
    """Move up to ``count`` (default: all) established connections of the server to the
    receiver at ``host:port``; returns how many the receiver restored."""
    runner = handover.runner
    sender = await open_sender(host, port, context, server_name)
    if handover.before_stop is not None:
        await handover.before_stop()
    faces = [f for f in runner.faces.values()
             if f.conn.handshake_confirmed and f.conn.state < CLOSING]
    if count is not None:
        faces = faces[:count]
    await sender.header({"format": FORMAT, "guard": handover.guard.export().decode()})
    for face in faces:
        await face.stop()
        blob = await handover.capture_one(face, sender.key)
        if blob is None:  # could not be captured (it began closing meanwhile): end it here
            face.close()
            continue
        runner._forget(face.conn)  # released: it never sends here again
        await sender.snapshot(blob)
    result = await sender.finish({"guard": handover.guard.export().decode()})
    restored = result.get("restored")
    if type(restored) is not int:
        raise TransferError("the receiver did not say how many it restored")
    return restored


async def accept_moves(
    handover: Handover, host: str, port: int, context: ssl.SSLContext
) -> Receiver:
    """Accept connections moved here by ``move_connections`` (TLS with client
    certificates from the configured CA): each is restored and served at once."""
    runner = handover.runner

    async def on_session(session: Session) -> None:
        if session.header.get("format") != FORMAT:
            await session.acknowledge({"error": "not a quicflow move"})
            return
        guard = handover.guard
        guard.merge(str(session.header.get("guard", "{}")).encode())
        restored = refused = 0
        async for blob in session.snapshots():
            try:
                one = restore_one(runner, blob, session.key, guard, handover.handler,
                                  handover.face_class)
            except SnapshotError:
                refused += 1
                continue
            start_restored(runner, [one], handover.restore)
            restored += 1
        if session.trailer is not None:
            guard.merge(str(session.trailer.get("guard", "{}")).encode())
        handover.moved_in += restored
        await session.acknowledge({"restored": restored, "refused": refused})

    return await serve_receiver(host, port, context, on_session)


async def serve_move_request(handover: Handover, channel: socket.socket,
                             request: Any) -> None:
    """Run a move asked for on the handoff socket (``quicflow perf migrate``)."""
    answer: dict[str, Any]
    try:
        to = str(request["to"])
        host, _, port = to.rpartition(":")
        context = client_context(str(request["cert"]), str(request["key"]),
                                 str(request["ca"]))
        count = request.get("count")
        moved = await move_connections(
            handover, host.strip("[]"), int(port), context,
            server_name=request.get("server_name"),
            count=None if count is None else int(count),
        )
        answer = {"moved": moved, "not_captured": handover.skip_reasons}
    except (KeyError, ValueError, OSError, TransferError) as exc:
        answer = {"error": str(exc)}
    await asyncio.get_running_loop().run_in_executor(None, reply, channel, answer)


__all__ = ["accept_moves", "move_connections", "serve_move_request"]
