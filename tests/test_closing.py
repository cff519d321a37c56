"""The closing state (RFC 9000 §10.2.1) when the one CONNECTION_CLOSE is lost.

A peer with nothing in flight never sends again, so a closing endpoint that only answered
incoming packets left it waiting for its idle timeout. The close is now also sent again
on a backoff timer inside the closing period (transport/closing.py)."""

from __future__ import annotations

import asyncio
import hashlib
import math

import quicflow
from quicflow.transport.closing import (
    DRAIN_GRID,
    MAX_CLOSING_PTOS,
    RESEND_DELAYS,
    draining_deadline,
)
from quicflow.transport.connection import Connection
from quicflow.transport.events import ConnectionTerminated
from quicflow.transport.state import DRAINING
from tests.support.memory_pair import SERVER_ADDR, MemoryPair
from tests.support.quic_helpers import client_config, run, server_config
from tests.support.relay import LossyUdpRelay


def _quiet_pair() -> tuple[MemoryPair, Connection]:
    """A pair after a small exchange, with nothing in flight either way."""
    pair = MemoryPair(seed=3)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    client, server = pair.client, pair.server_conns[0]
    sid = client.open_stream()
    client.send_stream_data(sid, b"x" * 5000, end_stream=True)
    pair.run(lambda: server.stream_at_eof(sid) or bool(server.read_stream(sid)))
    pair.run(lambda: client.loss.bytes_in_flight == 0 and server.loss.bytes_in_flight == 0)
    for _ in range(20):  # let delayed ACKs go out
        pair.step()
    # and the repeats of the last ACK-only packets (send.ACK_REPEATS)
    pair.run(lambda: all(space.ack_repeat_at is None for conn in (client, server)
                         for space in conn.spaces))
    assert client.loss.bytes_in_flight == 0 and server.loss.bytes_in_flight == 0
    server.pop_events()
    return pair, server


def _terminated(conn: Connection, seen: list[ConnectionTerminated]) -> bool:
    seen.extend(e for e in conn.pop_events() if isinstance(e, ConnectionTerminated))
    return bool(seen)


def test_lost_close_still_reaches_an_idle_peer_with_its_code() -> None:
    pair, server = _quiet_pair()
    idle = server.idle_deadline - pair.now
    pair.up.drop_next = 1  # the client's first CONNECTION_CLOSE datagram
    closed_at = pair.now
    pair.client.close(42, "bye", now=pair.now)
    seen: list[ConnectionTerminated] = []
    pair.run(lambda: _terminated(server, seen), max_time=closed_at + 2 * idle)
    term = seen[0]
    assert (term.error_code, term.reason, term.by_peer) == (42, "bye", True)
    assert pair.up.dropped == 1
    # learned within the client's closing period, long before the idle timeout
    assert pair.now - closed_at < 3 * pair.client.pto() < idle / 10
    assert pair.client.counters.close_resends >= 1


def test_close_is_repeated_a_bounded_number_of_times_then_the_connection_ends() -> None:
    pair, server = _quiet_pair()
    pair.up.drop_next = 1000  # every datagram the client sends from now on is lost
    client = pair.client
    client.close(7, "gone", now=pair.now)
    pair.run(lambda: client.terminated)
    # the first copy and exactly len(RESEND_DELAYS) repeats, then nothing
    assert client.counters.close_resends == len(RESEND_DELAYS) == 3
    assert pair.up.dropped == 1 + len(RESEND_DELAYS)
    assert not server.terminated  # it never heard: only its idle timeout ends it


def test_draining_peer_sends_nothing_and_closer_stops_repeating() -> None:
    pair, server = _quiet_pair()
    client = pair.client
    client.close(9, "done", now=pair.now)
    seen: list[ConnectionTerminated] = []
    pair.run(lambda: _terminated(server, seen))
    server_sent = server.counters.datagrams_sent
    pair.run(lambda: client.terminated and server.terminated)
    assert seen[0].error_code == 9
    assert server.counters.datagrams_sent == server_sent  # draining: silent
    # the closer does not know the close arrived: its repeats stay bounded
    assert client.counters.close_resends <= len(RESEND_DELAYS)


def test_a_draining_server_drops_the_close_repeats_at_the_endpoint() -> None:
    pair, server = _quiet_pair()
    client = pair.client
    client.close(9, "done", now=pair.now)
    pair.run(lambda: server.state == DRAINING)
    received = server.counters.datagrams_received
    pair.run(lambda: client.terminated and server.terminated)
    # the server had nothing in flight, so the client repeated its close blindly; the
    # endpoint drops the copies (counted) without handing them to the connection
    assert client.counters.close_resends >= 1
    assert pair.server.counters.dropped_draining >= 1
    assert pair.server.counters.dropped_draining <= client.counters.close_resends
    assert server.counters.datagrams_received == received


def test_answers_to_packets_while_closing_are_rate_limited() -> None:
    pair, server = _quiet_pair()
    client = pair.client
    pair.up.drop_next = 1000  # the server never hears the close and keeps sending
    client.close(5, "", now=pair.now)
    sid = server.open_stream()
    received_before = client.counters.packets_received
    for _ in range(20):  # one small ack-eliciting server packet at a time
        server.send_stream_data(sid, b"y" * 10)
        pair.step()
        pair.now += 0.0002
    pair.step()
    received = client.counters.packets_received - received_before
    answers = pair.up.dropped - 1  # what the client sent after its first close
    assert not client.terminated and client.counters.close_resends == 0
    assert received == 20
    assert answers == 5  # the 1st, 2nd, 4th, 8th and 16th packets are answered


def test_lost_close_reaches_the_server_over_real_sockets() -> None:
    """Loopback, through the relay: the client's first CONNECTION_CLOSE datagram is
    dropped; the server still sees the client's code long before its idle timeout."""
    code, reason = 0x2A, "bye through a lossy path"

    async def main() -> tuple[BaseException, dict[str, dict[str, int]]]:
        seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        server_side: list[quicflow.QuicConnection] = []

        async def handler(reader: quicflow.QuicStreamReader,
                          writer: quicflow.QuicStreamWriter) -> None:
            await reader.readexactly(5)
            writer.write(b"ready")
            await writer.drain()
            try:
                await reader.read(100)  # blocks until the client closes
                seen.set_result(AssertionError("read returned instead of raising"))
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                seen.set_result(exc)

        server = await quicflow.serve(
            handler, "127.0.0.1", 0, configuration=server_config(idle_timeout=60.0),
            connection_handler=server_side.append,
        )
        relay = await LossyUdpRelay(server.address, seed=1).start()
        try:
            async with quicflow.connect(
                "127.0.0.1", relay.address[1], configuration=client_config(idle_timeout=60.0)
            ) as conn:
                reader, writer = await conn.create_stream()
                writer.write(b"hello")
                await writer.drain()
                assert await reader.readexactly(5) == b"ready"
                # wait until neither side has anything in flight: the server would
                # otherwise probe, and the client's answer would hide the lost close
                for _ in range(500):
                    if (conn.conn.loss.bytes_in_flight == 0 and server_side
                            and server_side[0].conn.loss.bytes_in_flight == 0):
                        break
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.1)  # and the last ACKs have gone through
                relay.c2s.drop_next = 1
                conn.close(code, reason)
                exc = await asyncio.wait_for(seen, 10)  # the idle timeout is 60 s
            return exc, relay.stats()
        finally:
            await relay.close()
            server.close()

    exc, stats = run(main(), 30)
    assert isinstance(exc, quicflow.ConnectionClosedError), repr(exc)
    assert (exc.error_code, exc.reason, exc.by_peer) == (code, reason, True)
    assert stats["c2s"]["dropped"] == 1, stats


def _close_with_server_packets_unacknowledged() -> tuple[MemoryPair, Connection]:
    """The client closes right after its handshake (as a connect-then-close client
    does) and then takes the server's first 1-RTT datagrams (HANDSHAKE_DONE and NEW_TOKEN,
    then its path MTU probe one PTO later) in one ``receive_datagrams`` run, as the
    asyncio runner does, before it could acknowledge them."""
    pair = MemoryPair(seed=5)
    client = pair.client
    pair.complete_server_handshake()
    server = pair.server_conns[0]
    datagrams = pair.server.datagrams_to_send(server, pair.now)
    client.close(11, "closing early", now=pair.now)
    pair.now += server.pto()
    datagrams += pair.server.datagrams_to_send(server, pair.now)  # the probe
    assert len(datagrams) >= 2 and all(not d[0] & 0x80 for d in datagrams)
    pair.received_before = client.counters.packets_received  # type: ignore[attr-defined]
    pair.client_ep.receive_datagrams([(d, SERVER_ADDR, 0) for d in datagrams], pair.now)
    return pair, server


def test_packets_arriving_in_one_run_while_closing_are_counted_and_answered() -> None:
    pair, _ = _close_with_server_packets_unacknowledged()
    client = pair.client
    # both taken (before, the run path decrypted them and dropped them unanswered)
    assert client.counters.packets_received == pair.received_before + 2  # type: ignore[attr-defined]
    assert client.spaces[2].ack_eliciting_pending >= 1
    assert client.close_packets_seen == 1 and client.close_pending  # answered


def test_no_blind_repeats_while_the_peer_waits_for_an_ack_and_a_lost_close_still_arrives(
) -> None:
    pair, server = _close_with_server_packets_unacknowledged()
    client = pair.client
    pair.up.drop_next = 1  # the client's first CONNECTION_CLOSE is lost
    seen: list[ConnectionTerminated] = []
    closed_at = pair.now
    pair.run(lambda: _terminated(server, seen))
    learned_after = pair.now - closed_at
    pair.run(lambda: client.terminated)
    assert (seen[0].error_code, seen[0].reason, seen[0].by_peer) == (11, "closing early", True)
    # the server's PTO resend of its unacknowledged packet was answered instead
    assert client.counters.close_resends == 0
    assert client.counters.close_resends_skipped == 1
    assert pair.up.dropped == 1
    assert learned_after < 3 * client.pto()  # inside the closing period


def _complete_not_confirmed(seed: int) -> tuple[MemoryPair, list[bytes]]:
    """A pair whose client completed its handshake; the server's first 1-RTT datagrams
    (HANDSHAKE_DONE & co) are built and returned, not delivered: not confirmed."""
    pair = MemoryPair(seed=seed)
    pair.complete_server_handshake()
    return pair, pair.server.datagrams_to_send(pair.server_conns[0], pair.now)


def test_client_closing_before_handshake_done_sends_no_blind_repeats() -> None:
    """A client closes right after completing its handshake, before any of the server's
    1-RTT packets (HANDSHAKE_DONE) arrived, and its one CONNECTION_CLOSE is lost, and so
    are the server's first 1-RTT datagrams: the server repeats its unacknowledged
    HANDSHAKE_DONE at its PTO, the client answers it with the close, and the server
    learns the code inside the client's closing period, without blind repeats."""
    pair, held = _complete_not_confirmed(seed=7)
    client, server = pair.client, pair.server_conns[0]
    lost = held  # HANDSHAKE_DONE & co: lost
    assert lost
    pair.up.drop_next = 1  # the client's CONNECTION_CLOSE
    closed_at = pair.now
    client.close(12, "before HANDSHAKE_DONE", now=pair.now)
    seen: list[ConnectionTerminated] = []
    pair.run(lambda: _terminated(server, seen))
    learned_after = pair.now - closed_at
    pair.run(lambda: client.terminated)
    assert (seen[0].error_code, seen[0].reason, seen[0].by_peer) == (
        12, "before HANDSHAKE_DONE", True)
    assert pair.up.dropped == 1
    assert client.counters.close_resends == 0
    assert client.counters.close_resends_skipped == 1
    assert client.close_packets_seen >= 1  # the server's repeat was answered
    assert learned_after < 3 * client.pto()


def test_a_close_whose_blind_copies_would_all_be_skipped_arms_no_resend_timer() -> None:
    """A client that closes before its handshake is confirmed, or with the server's
    ack-eliciting 1-RTT packets unacknowledged (a connect-then-close client, the common
    case), would skip every blind copy: the server sends again and is answered. Its only
    timer is now the end of the closing period; before, one fired 1/4 PTO after the
    close only to skip the copy."""
    pair, held = _complete_not_confirmed(seed=17)
    before_done = pair.client
    pair2, held2 = _complete_not_confirmed(seed=19)
    acked_none = pair2.client
    pair2.client_ep.receive_datagrams([(d, SERVER_ADDR, 0) for d in held2], pair2.now)
    assert acked_none.handshake_confirmed and acked_none.spaces[2].ack_eliciting_pending
    for p, client in ((pair, before_done), (pair2, acked_none)):
        client.close(5, "done", now=p.now)
        assert client.counters.close_resends_skipped == 1  # counted once, at the close
        assert client.close_resend_at is None
        assert client.timer() == client.close_deadline == p.now + 3 * client.pto()
        wakeups = 0
        while not client.terminated:
            p.now = client.timer()
            client.handle_timer(p.now)
            wakeups += 1
        assert wakeups == 1 and client.counters.close_resends == 0
    # a quiet connection still arms the blind copies (the tests above)
    quiet, _ = _quiet_pair()
    quiet.client.close(6, "quiet", now=quiet.now)
    assert quiet.client.timer() == quiet.client.close_resend_at < quiet.client.close_deadline


def test_close_copies_are_the_same_packet_until_the_spaces_change() -> None:
    """Repeats of the close are the first closing datagram byte for byte (one packet
    number per space, RFC 9000 §10.2.1); once the handshake is confirmed while closing,
    the next copy is built again with the 1-RTT packet only."""
    pair, _ = _quiet_pair()
    client = pair.client
    pn_before = client.spaces[2].next_pn
    client.close(3, "same bytes", now=pair.now)
    first = pair.client_ep.datagrams_to_send(client, pair.now)
    for _ in range(len(RESEND_DELAYS)):
        assert client.close_resend_at is not None
        pair.now = client.close_resend_at
        client.handle_timer(pair.now)
        assert pair.client_ep.datagrams_to_send(client, pair.now) == first
    assert client.spaces[2].next_pn == pn_before + 1
    assert client.counters.close_resends == len(RESEND_DELAYS)

    # before confirmation the close goes in Handshake and 1-RTT packets, and the answers
    # to the server's packets that come while closing are the same datagram
    early, held = _complete_not_confirmed(seed=13)
    c = early.client
    c.close(4, "early", now=early.now)
    closing = early.client_ep.datagrams_to_send(c, early.now)
    assert len(closing) == 1 and closing[0][0] & 0x80  # Handshake packet first
    early.client_ep.receive_datagrams([(d, SERVER_ADDR, 0) for d in held], early.now)
    assert c.close_pending  # answered: the same bytes
    assert early.client_ep.datagrams_to_send(c, early.now) == closing
    # the handshake confirmed meanwhile (what a HANDSHAKE_DONE does; the copy is keyed on
    # it): the next copy is built again, the close in a 1-RTT packet only
    c.handshake_confirmed = True
    c.close_pending = True
    answer = early.client_ep.datagrams_to_send(c, early.now)
    assert len(answer) == 1 and not answer[0][0] & 0x80
    assert len(answer[0]) < len(closing[0])


def test_connections_draining_close_together_end_at_one_deadline() -> None:
    """The draining period lasts 3 PTO at least and ends on a grid (DRAIN_GRID), so a
    server's connections whose clients closed a few ms apart end in one timer wake-up."""
    pair = MemoryPair()
    second = pair.add_client()
    pair.run(lambda: pair.client.handshake_confirmed and second.handshake_confirmed)
    pair.now = (math.floor(pair.now / DRAIN_GRID) + 1) * DRAIN_GRID + 0.001
    starts = []
    for client in (pair.client, second):
        client.close(0, now=pair.now)
        starts.append(pair.now)
        pair.step()
        pair.now += 0.005
    servers = pair.server_conns
    assert [s.state for s in servers] == [DRAINING, DRAINING]
    for server, start in zip(servers, starts, strict=True):
        assert server.close_deadline is not None
        assert start + 3 * server.pto() <= server.close_deadline
        assert server.close_deadline < start + 3 * server.pto() + DRAIN_GRID
    for now, pto in ((0.0, 0.001), (12.3456, 0.0333), (1e6 + 0.1, 0.2)):
        end = draining_deadline(now, pto)
        assert now + 3 * pto <= end < now + 3 * pto + DRAIN_GRID
    # same PTO, starts 5 ms apart inside one grid slot: one deadline for both
    slot = 100 * DRAIN_GRID
    assert draining_deadline(slot + 0.001, 0.01) == draining_deadline(slot + 0.006, 0.01)


def test_closing_a_server_or_a_client_endpoint_sends_each_connection_its_close() -> None:
    """``QuicServer.close()`` and ``ClientEndpoint.close()`` close every connection with
    code 0. The closes used to be only scheduled, and the socket closed at once: no
    CONNECTION_CLOSE left, and each peer learned of it at its idle timeout (60 s here)."""

    async def confirmed(accepted: list[quicflow.QuicConnection], n: int) -> None:
        while len(accepted) < n or not accepted[n - 1].conn.handshake_confirmed:
            await asyncio.sleep(0.01)  # the server has the client's Finished

    async def main() -> list[BaseException | None]:
        accepted: list[quicflow.QuicConnection] = []
        config = server_config(idle_timeout=60.0)
        server = await quicflow.serve(None, "127.0.0.1", 0, configuration=config,
                                      connection_handler=accepted.append)
        seen: list[BaseException | None] = []
        try:
            async with quicflow.connect(
                "127.0.0.1", server.address[1], configuration=client_config(idle_timeout=60.0)
            ) as conn:
                await confirmed(accepted, 1)
                server.close()
                await conn.wait_closed()
                seen.append(conn._close_error)
            server = await quicflow.serve(None, "127.0.0.1", 0, configuration=config,
                                          connection_handler=accepted.append)
            async with quicflow.client_endpoint(
                "127.0.0.1", configuration=client_config(idle_timeout=60.0)
            ) as ep:
                async with ep.connect("127.0.0.1", server.address[1]):
                    await confirmed(accepted, 2)
                    ep.close()
                    await accepted[1].wait_closed()
            seen.append(accepted[1]._close_error)
        finally:
            server.close()
        return seen

    seen = run(main(), 30)
    assert len(seen) == 2
    for exc in seen:
        assert isinstance(exc, quicflow.ConnectionClosedError), repr(exc)
        assert (exc.error_code, exc.by_peer, exc.application) == (0, True, True), repr(exc)


def test_a_drained_connection_leaves_the_engine_and_its_neighbour_keeps_working() -> None:
    """A connection closed by its peer keeps its keys and CIDs while draining (late
    packets are absorbed, RFC 9000 §10.2), then drops exactly its own engine entries
    (openers of its CIDs, its sealer) in one step; a second connection on the same
    server still delivers a stream intact."""
    pair = MemoryPair()
    second = pair.add_client()
    pair.run(lambda: pair.client.handshake_confirmed and second.handshake_confirmed)
    engine = pair.server.engine
    for conn in pair.server_conns:
        assert conn.host_cids and all(e.cid in engine for e in conn.host_cids)
        assert conn.seal_key in engine
    pair.client.close(4, "bye", now=pair.now)
    pair.step()
    [closing] = [c for c in pair.server_conns if c.state == DRAINING]
    [other] = [c for c in pair.server_conns if c is not closing]
    mine = [e.cid for e in closing.host_cids]
    assert all(cid in engine for cid in mine)  # routed until the period ends
    pair.run(lambda: closing.terminated)
    assert not any(cid in engine for cid in mine) and closing.seal_key not in engine
    assert all(e.cid in engine for e in other.host_cids) and other.seal_key in engine
    data = hashlib.sha256(b"neighbour").digest() * 4000
    sid = second.open_stream()
    second.send_stream_data(sid, data, end_stream=True)
    got = bytearray()

    def done() -> bool:
        got.extend(other.read_stream(sid))
        return sid in other.streams and other.stream_at_eof(sid)

    pair.run(done)
    assert hashlib.sha256(bytes(got)).digest() == hashlib.sha256(data).digest()


def test_a_peer_whose_first_probes_go_unanswered_still_gets_the_close() -> None:
    """The close and every answer in the first 6 PTO are lost while the server waits for
    the ACK of its 1-RTT packets: its later PTO probes (7 and 15 PTO after its last
    packet) are still answered, because each packet received while closing keeps the
    period open for the next probe and a probe long after the last answer is answered
    whatever the count. Before, the period ended at 3 PTO and the server learnt of the
    close only at its idle timeout, as an idle timeout."""
    pair, server = _close_with_server_packets_unacknowledged()
    client = pair.client
    closed_at = pair.now
    pto = client.pto()
    pair.up.drop_next = 10_000
    pair.run(lambda: pair.now >= closed_at + 6 * pto)
    lost = pair.up.dropped
    assert not client.terminated and lost >= 2  # the close and an answer, at least
    pair.up.drop_next = 0
    seen: list[ConnectionTerminated] = []
    pair.run(lambda: _terminated(server, seen), max_time=closed_at + 60)
    assert (seen[0].error_code, seen[0].reason, seen[0].by_peer) == (11, "closing early", True)
    assert pair.now - closed_at < MAX_CLOSING_PTOS * pto
    pair.run(lambda: client.terminated)


def test_a_peer_that_keeps_sending_holds_a_closing_connection_a_bounded_time() -> None:
    """The server never hears the close and sends a small packet every PTO/8: the client
    answers at most a few times per PTO and ends MAX_CLOSING_PTOS PTOs after its close."""
    pair, server = _quiet_pair()
    client = pair.client
    pto = client.pto()
    pair.up.drop_next = 10_000
    client.close(5, "", now=pair.now)
    closed_at = pair.now
    sid = server.open_stream()
    while not client.terminated:
        server.send_stream_data(sid, b"z" * 10)
        pair.step()
        pair.now += pto / 8
        client.handle_timer(pair.now)
        assert pair.now - closed_at < 2 * MAX_CLOSING_PTOS * pto
    elapsed = pair.now - closed_at
    assert MAX_CLOSING_PTOS * pto - pto <= elapsed <= MAX_CLOSING_PTOS * pto + pto
    answers = pair.up.dropped
    assert answers <= 2 * elapsed / pto + math.log2(client.close_packets_seen) + 2


def test_a_client_close_with_an_initial_packet_fills_1200_bytes_and_reaches_the_server(
) -> None:
    """RFC 9000 §14.1: a client's datagram with an Initial packet has at least 1200
    bytes, its CONNECTION_CLOSE's too; a server discards an Initial in a smaller one.
    Before, the close was padded to a guessed 1200 - 80 bytes of payload (1166 bytes
    in all here), so the server dropped it and went on with the handshake."""
    for with_handshake_keys in (False, True):
        pair = MemoryPair(seed=5)
        client = pair.client
        for d in pair.client_ep.datagrams_to_send(client, pair.now):
            pair.server.receive(d, pair.client_addr, pair.now)
        (server,) = pair.server_conns
        if with_handshake_keys:  # the close then holds an Initial and a Handshake packet
            for d in pair.server.datagrams_to_send(server, pair.now):
                pair.client_ep.receive(d, SERVER_ADDR, pair.now)
        client.close(0x0A, "closing in the handshake", application=False)
        (datagram,) = pair.client_ep.datagrams_to_send(client, pair.now)
        assert len(datagram) in (1200, 1201)
        pair.server.receive(datagram, pair.client_addr, pair.now)
        assert server.counters.dropped_short_initial == 0
        ends = [e for e in server.pop_events() if isinstance(e, ConnectionTerminated)]
        assert ends and ends[0].error_code == 0x0A and ends[0].by_peer
