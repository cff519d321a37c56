"""Moving running connections to a server on another host (issue 7, item 4).

The service address moves with them (a router switches its route, or the address itself
moves): the new server has its own socket bound to the same address and port, so no
file descriptor travels, only the sealed snapshots, over TCP inside mutually
authenticated TLS (``migration.transfer``). The old server stops each moved connection's
face, captures and releases it and forgets it; what reaches it afterwards is dropped as
an unknown CID, and QUIC's loss recovery sends it again once the route points to the new
host. The new server restores each connection as it arrives and serves it at once.

Per connection behind a CID-routing balancer (item 4b, ``via_cids``; the address stays,
see docs/nftables-quic-lb.md): before the snapshots, the new server issues CIDs of its
own for each connection (its server ID, its stateless reset tokens) and sends them back;
the old server adds them to the connection right before the capture, announced in
NEW_CONNECTION_ID frames whose Retire Prior To retires every CID of the old server. The
frames are not sent by the old server (the capture follows at once and it never sends
again) but by the new one, in its first flight after the restore: so the client cannot
use the new CIDs before the new server holds the connection. Datagrams that still reach
the old server with the old CIDs (sent before the client switched, or reordered) are
forwarded over the same authenticated channel for ``forward_seconds``, never dropped.
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
from ..transport.connection import Connection
from ..transport.state import CLOSING
from .handover import restore_one, start_restored

if TYPE_CHECKING:
    from .handover import Handover
    from .runner import EndpointRunner

FORMAT = "quicflow-move-1"
#: Seconds the old host forwards what still reaches it for connections moved by CID.
FORWARD_SECONDS = 10.0
#: CIDs the new host gives one moved connection at most (the old host asks for as many
#: as the connection has in use, within the client's active_connection_id_limit).
MAX_CIDS_PER_CONNECTION = 8
MAX_CONNECTIONS_PER_MOVE = 1 << 20


async def move_connections(
    handover: Handover,
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_name: str | None = None,
    count: int | None = None,
    via_cids: bool = False,
    forward_seconds: float = FORWARD_SECONDS,
) -> int:
    """Move up to ``count`` (default: all) established connections of the server to the
    receiver at ``host:port``; returns how many the receiver restored. ``via_cids``:
    the address stays and the clients switch to CIDs of the receiver (see above)."""
    runner = handover.runner
    sender = await open_sender(host, port, context, server_name)
    if handover.before_stop is not None:
        await handover.before_stop()
    faces = [f for f in runner.faces.values()
             if f.conn.handshake_confirmed and f.conn.state < CLOSING]
    if count is not None:
        faces = faces[:count]
    header: dict[str, Any] = {"format": FORMAT, "guard": handover.guard.export().decode()}
    if via_cids:
        header["route"] = "cids"
    await sender.header(header)
    issued: list[list[tuple[bytes, bytes]]] = []
    if via_cids:
        try:
            issued = _parse_cids(await sender.ask({"cids": [_cids_wanted(f.conn)
                                                            for f in faces]}), len(faces))
            _check_cids(runner, issued)
        except TransferError:
            sender.close()
            raise
    endpoint = runner.endpoint
    try:
        for index, face in enumerate(faces):
            await face.stop()
            prepare = None
            if via_cids:
                cids = issued[index]

                def prepare(conn: Connection, cids: list[tuple[bytes, bytes]] = cids) -> None:
                    conn.hand_over_cids(cids)

            blob = await handover.capture_one(face, sender.key, prepare)
            if blob is None:  # could not be captured (began closing meanwhile): ends here
                face.close()
                continue
            old_cids = [e.cid for e in face.conn.host_cids]
            runner._forget(face.conn)  # released: it never sends here again
            sender.queue_snapshot(blob)
            if via_cids:  # from now on (after its snapshot in the channel), what still
                # reaches us for it goes to the new host
                endpoint.moved.forward(old_cids, sender.forward,
                                       runner.loop.time() + forward_seconds)
            await sender.drain()
        result = await sender.finish({"guard": handover.guard.export().decode()},
                                     keep_open=via_cids)
    except BaseException:
        sender.close()
        raise
    if via_cids:
        runner.loop.call_later(forward_seconds, sender.close)
    restored = result.get("restored")
    if type(restored) is not int:
        raise TransferError("the receiver did not say how many it restored")
    return restored


def _cids_wanted(conn: Connection) -> int:
    """How many CIDs of the new host a moved connection gets: as many as it has in use
    now, within the client's active_connection_id_limit (at least one)."""
    limit = conn.peer_params.active_connection_id_limit if conn.peer_params else 2
    return max(1, min(len(conn.host_cid_list()), limit, MAX_CIDS_PER_CONNECTION))


def _parse_cids(answer: dict[str, Any], connections: int) -> list[list[tuple[bytes, bytes]]]:
    """The receiver's CIDs (per connection, ``[cid hex, reset token hex]`` pairs)."""
    rows = answer.get("cids")
    if type(rows) is not list or len(rows) != connections:
        raise TransferError(str(answer.get("error") or "the receiver issued no CIDs"))
    out = []
    for row in rows:
        if type(row) is not list or not row:
            raise TransferError("the receiver's CIDs are malformed")
        try:
            out.append([(bytes.fromhex(c), bytes.fromhex(t)) for c, t in row])
        except (TypeError, ValueError) as exc:
            raise TransferError("the receiver's CIDs are malformed") from exc
    return out


def _check_cids(runner: EndpointRunner, issued: list[list[tuple[bytes, bytes]]]) -> None:
    """Refuse (before any connection stops) CIDs of another length or with our own
    server ID: the hosts' QUIC-LB settings or host IDs do not fit together."""
    endpoint = runner.endpoint
    for row in issued:
        for cid, token in row:
            if len(cid) != endpoint.cid_length or len(token) != 16:
                raise TransferError("the receiver's CIDs have another length: give both "
                                    "hosts the same QUIC-LB options")
            if endpoint.generator.is_ours(cid):
                raise TransferError("the receiver issues CIDs with our server ID: give "
                                    "it another --host-id")


def _issue_for(runner: EndpointRunner, question: Any) -> dict[str, Any]:
    """Answer a sender's request for CIDs: ours (our server ID, our reset tokens)."""
    wanted = question.get("cids") if type(question) is dict else None
    if (type(wanted) is not list or len(wanted) > MAX_CONNECTIONS_PER_MOVE
            or any(type(n) is not int or not 1 <= n <= MAX_CIDS_PER_CONNECTION
                   for n in wanted)):
        return {"error": "bad request for connection IDs"}
    issue = runner.endpoint.issue_cid
    rows = []
    for n in wanted:
        pairs = [issue() for _ in range(n)]
        rows.append([[cid.hex(), token.hex()] for cid, token in pairs])
    return {"cids": rows}


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
        via_cids = session.header.get("route") == "cids"
        if via_cids:
            answer = _issue_for(runner, await session.question())
            await session.answer(answer)
            if "error" in answer:
                return
        guard = handover.guard
        guard.merge(str(session.header.get("guard", "{}")).encode())
        restored = refused = 0
        moved_cids: set[bytes] = set()  # what this sender may forward for

        def on_forwarded(data: bytes, address: tuple[Any, ...]) -> None:
            runner.receive_forwarded(data, address, moved_cids)

        if via_cids:
            session.on_forwarded = on_forwarded
        async for blob in session.snapshots():
            try:
                one = restore_one(runner, blob, session.key, guard, handover.handler,
                                  handover.face_class)
            except SnapshotError:
                refused += 1
                continue
            moved_cids.update(one[0].conn.host_cid_list())
            start_restored(runner, [one], handover.restore)
            restored += 1
        if session.trailer is not None:
            guard.merge(str(session.trailer.get("guard", "{}")).encode())
        handover.moved_in += restored
        await session.acknowledge({"restored": restored, "refused": refused},
                                  keep_open=via_cids)
        if via_cids:  # what still reaches the old host for them, until it stops
            async for data, address in session.forwarded():
                on_forwarded(data, address)

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
        mode = request.get("mode") or "address"
        if mode not in ("address", "cids"):
            raise ValueError(f"unknown move mode {mode!r}")
        forward = float(request.get("forward_seconds") or FORWARD_SECONDS)
        if not 0 < forward <= 600:
            raise ValueError("forward_seconds must be in (0, 600]")
        moved = await move_connections(
            handover, host.strip("[]"), int(port), context,
            server_name=request.get("server_name"),
            count=None if count is None else int(count),
            via_cids=mode == "cids", forward_seconds=forward,
        )
        answer = {"moved": moved, "not_captured": handover.skip_reasons}
    except (KeyError, ValueError, OSError, TransferError) as exc:
        answer = {"error": str(exc)}
    await asyncio.get_running_loop().run_in_executor(None, reply, channel, answer)


__all__ = ["FORWARD_SECONDS", "accept_moves", "move_connections", "serve_move_request"]
