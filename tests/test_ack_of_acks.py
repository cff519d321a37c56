"""ACK frames for the peer's ACK-only packets (RFC 9000 §13.2.1, §13.2.4).

- A download's server acknowledges the client's packets only when an ack-eliciting one
  waits for it: no ACK frame the client receives in 1-RTT acknowledges nothing but the
  client's ACK-only packets (counted over a seeded in-memory download and one over
  loopback sockets, where the client reads through its batch receive path).
- A receiver that sends only ACKs still has them acknowledged: with windows so large
  that the client never sends a window update, it adds a PING to an ACK-only packet
  now and then (§13.2.4), so the records its loss recovery keeps for its ACK-only
  packets stay bounded (and its ACK ranges, as before: at most 64).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from quicflow.crypto.epoch import Epoch
from quicflow.transport import recovery, recovery_glue
from quicflow.transport import stream_api as S
from quicflow.transport.ack_send import ACK_ONLY_PING_AFTER
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from tests.support.memory_pair import _CERT, MemoryPair
from tests.support.transfer import run_transfer


class AckTally:
    """The 1-RTT ACK frames received per LossDetection, sorted by what they newly
    acknowledged: some ack-eliciting packet, only ACK-only packets, or nothing new."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_loss: dict[int, dict[str, int]] = {}
        self.clients: set[int] = set()
        # what recovery_glue.on_ack_frame calls: LossDetection.on_ack_received, or its
        # C twin for the common case (ack.c), which does not go through the method
        original = recovery_glue._ack_received

        def counted(loss: Any, epoch: Epoch, *args: Any) -> Any:
            acked, lost = original(loss, epoch, *args)
            if not loss.is_server:
                self.clients.add(id(loss))
            if epoch == Epoch.ONE_RTT:
                tally = self.by_loss.setdefault(id(loss), {"eliciting": 0, "ack_only": 0,
                                                           "nothing_new": 0})
                kind = ("nothing_new" if not acked else "eliciting"
                        if any(p.ack_eliciting for p in acked) else "ack_only")
                tally[kind] += 1
            return acked, lost

        monkeypatch.setattr(recovery_glue, "_ack_received", counted)

    def of(self, conn: Connection) -> dict[str, int]:
        return self.by_loss.get(id(conn.loss), {"eliciting": 0, "ack_only": 0,
                                                "nothing_new": 0})


def _download(pair: MemoryPair, size: int, watch: Any = None) -> bytes:
    """The server sends ``size`` bytes on a stream it opens; the client reads them as
    they come (its window updates are ack-eliciting). Returns what arrived."""
    pair.run(lambda: bool(pair.client.handshake_confirmed and pair.server_conns
                          and pair.server_conns[0].handshake_confirmed))
    (server,) = pair.server_conns
    client = pair.client
    data = hashlib.sha256(b"ackpig").digest() * (size // 32)
    sid = S.open_stream(server)
    S.send_stream_data(server, sid, data, True)
    got = bytearray()

    def done() -> bool:
        if watch is not None:
            watch()
        if S.stream_at_eof(client, sid) and len(got) == len(data):
            return not server.loss.cc.bytes_in_flight
        got.extend(S.read_stream(client, sid, -1, pair.now))
        return False

    pair.run(done, max_time=120)
    return bytes(got)


@pytest.mark.parametrize(("seed", "loss"), [(1, 0.0), (4, 0.02)])
def test_no_ack_frame_acknowledges_only_the_clients_ack_only_packets(
        seed: int, loss: float, monkeypatch: pytest.MonkeyPatch) -> None:
    tally = AckTally(monkeypatch)
    pair = MemoryPair(seed=seed, loss=loss)
    size = 4 << 20
    got = _download(pair, size)
    assert hashlib.sha256(got).digest() == hashlib.sha256(
        hashlib.sha256(b"ackpig").digest() * (size // 32)).digest()
    client = tally.of(pair.client)
    # the client's window updates (and PINGs) are acknowledged...
    assert client["eliciting"] > 0
    if not loss:
        # ...and no ACK frame comes for its ACK-only packets alone (with loss, the
        # server's PTO probes carry an ACK of whatever arrived, as RFC 9002 §6.2.4 asks)
        assert client["ack_only"] == 0, client


def test_a_loopback_download_client_gets_no_ack_of_its_acks_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Real sockets: the client reads through the batch receive path, where a packet
    with an ACK frame goes down the per-frame path."""
    tally = AckTally(monkeypatch)
    outcome = run_transfer(size=16 << 20)
    assert outcome.ok
    (client,) = [tally.by_loss[key] for key in tally.clients if key in tally.by_loss]
    assert client["eliciting"] > 0
    # (a PTO probe of the server, should the loaded machine ever fire one, carries an ACK
    # of whatever arrived: a few at most)
    assert client["ack_only"] <= 3, client


def _big_windows() -> Configuration:
    """A client that never needs to send a window update for the download."""
    return Configuration(alpn_protocols=["perf"], verify_peer=False, max_data=64 << 20,
                         max_data_window=64 << 20, max_stream_data=64 << 20,
                         max_stream_data_window=64 << 20)


@pytest.mark.parametrize(("seed", "loss"), [(2, 0.0), (3, 0.03)])
def test_a_client_that_only_acknowledges_elicits_acks_now_and_then(
        seed: int, loss: float, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = _CERT
    server_config = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                                  private_key=key)
    pair = MemoryPair(seed=seed, loss=loss, client_config=_big_windows(),
                      server_config=server_config)
    pings = [0]  # the client's ack-eliciting 1-RTT packets: its PINGs (nothing else goes)
    original = recovery.LossDetection.on_packet_sent

    def counted(loss: Any, pkt: Any) -> None:
        if loss is pair.client.loss and pkt.epoch == Epoch.ONE_RTT and pkt.ack_eliciting:
            pings[0] += 1
        original(loss, pkt)

    monkeypatch.setattr(recovery.LossDetection, "on_packet_sent", counted)
    most = {"records": 0, "ranges": 0}

    def watch() -> None:
        most["records"] = max(most["records"], len(pair.client.loss.spaces[2].sent))
        most["ranges"] = max(most["ranges"], len(pair.client.spaces[2].received))

    size = 8 << 20
    got = _download(pair, size, watch)
    assert len(got) == size
    acks = pair.client.counters.ack_frames_sent
    assert pings[0] > 0 and acks > 100
    # the records of unacknowledged packets stay near the PING's threshold (with loss:
    # plus the ACKs sent while a PING or its ACK is being recovered), not one per ACK
    # sent over the whole transfer
    assert most["records"] < acks // 3, (most, acks)
    if not loss:
        assert most["records"] <= ACK_ONLY_PING_AFTER, (most, acks)
    assert most["ranges"] <= 64, most  # (the ACK ranges kept: RangeSet's bound)
