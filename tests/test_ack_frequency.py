"""The ACK Frequency extension (draft-ietf-quic-ack-frequency-14): the min_ack_delay
transport parameter, the ACK_FREQUENCY and IMMEDIATE_ACK frames, the error codes a peer
sees, the receiver honouring a request and the sender's threshold policy (ACK frames per
MiB of a download drop, bytes intact, also under loss), and snapshots."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.crypto.epoch import Epoch
from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport import ack_frequency as AF
from quicflow.transport.codec import assemble, document
from quicflow.transport.config import Configuration
from quicflow.transport.connection import Connection
from quicflow.transport.errors import PROTOCOL_VIOLATION, TRANSPORT_PARAMETER_ERROR, QuicError
from quicflow.transport.peer_params import NATIVE_DECODE, decode_peer_parameters
from quicflow.transport.receive import _process_frames
from quicflow.transport.snapshot import restore_connection, snapshot_connection
from quicflow.wire import frames as F
from quicflow.wire.errors import FrameEncodingError, TransportParameterError
from quicflow.wire.tparams import (
    MIN_ACK_DELAY,
    TransportParameters,
    decode_transport_parameters,
    encode_transport_parameters,
)
from quicflow.wire.varint import VARINT_MAX, encode_varint

from .support.forge import encode_frames
from .support.memory_pair import MemoryPair
from .support.snapshot_peer import ClientApp, LocalSide, ServerApp
from .test_hardening_protocol import _close_seen_by_client, _established, _inject, _settle
from .test_snapshot import _CERT, CLIENT_ADDR, SERVER_ADDR, Net, _check_download

varints = st.integers(min_value=0, max_value=VARINT_MAX)

# ---------------------------------------------------------------------- wire


@given(varints, varints, varints, varints)
def test_ack_frequency_frame_round_trips(seq: int, thr: int, delay: int, reorder: int) -> None:
    frame = F.AckFrequency(seq, thr, delay, reorder)
    out = bytearray()
    F.encode_frame(frame, out)
    assert out[:2] == b"\x40\xaf"  # type 0xaf: a two-byte varint (draft -14 §4)
    assert F.parse_frames(bytes(out)) == [frame]
    assert F.frame_size(frame) == len(out) and F.frame_type_of(frame) == F.ACK_FREQUENCY


def test_immediate_ack_frame_and_truncations() -> None:
    assert F.parse_frames(b"\x1f\x01") == [F.ImmediateAck(), F.Ping()]
    assert F.frame_type_of(F.ImmediateAck()) == 0x1F
    full = encode_frames([F.AckFrequency(1, 2, 3000, 1)])
    for cut in range(2, len(full)):
        with pytest.raises(FrameEncodingError) as info:
            F.parse_frames(full[:cut])
        assert info.value.frame_type == 0xAF and info.value.error_code == 0x07


@given(varints, varints, st.binary(max_size=8), st.booleans())
def test_the_c_parser_leaves_the_new_frames_to_python(
    seq: int, thr: int, tail: bytes, immediate: bool
) -> None:
    """C declines a payload with either frame (None); the receive path's parser gives
    the reference's frames, or its error, for it."""
    from quicflow.transport.frame_parse import CLASSES, NATIVE_PARSE, parse_frames

    payload = encode_frames([F.Ping(), F.ImmediateAck() if immediate
                             else F.AckFrequency(seq, thr, 1000, 1)]) + tail
    try:
        expected: list[F.Frame] | None = F.parse_frames(payload)
    except FrameEncodingError:
        expected = None
    if NATIVE_PARSE is not None:
        assert NATIVE_PARSE(payload, CLASSES) is None
    if expected is None:
        with pytest.raises(FrameEncodingError):
            parse_frames(payload)
    else:
        assert parse_frames(payload) == expected


@given(st.integers(min_value=0, max_value=25_000), st.booleans())
def test_min_ack_delay_parameter_both_decoders(value: int, from_server: bool) -> None:
    tp = TransportParameters(initial_source_connection_id=b"abcd", min_ack_delay=value)
    raw = encode_transport_parameters(tp)
    assert decode_transport_parameters(raw, from_server=from_server).min_ack_delay == value
    assert decode_peer_parameters(raw, from_server=from_server).min_ack_delay == value
    if NATIVE_DECODE is not None:
        from quicflow.wire.tparams import DECODE_SPECS, HIGH_SPECS, SERVER_ONLY_MASK

        values = NATIVE_DECODE(raw, from_server, DECODE_SPECS, SERVER_ONLY_MASK, HIGH_SPECS)
        assert values is not None and values["min_ack_delay"] == value


def _raw_params(min_ack_delay_value: bytes, max_ack_delay: int = 25) -> bytes:
    tp = TransportParameters(initial_source_connection_id=b"abcd", max_ack_delay=max_ack_delay)
    return (encode_transport_parameters(tp) + encode_varint(MIN_ACK_DELAY)
            + encode_varint(len(min_ack_delay_value)) + min_ack_delay_value)


@pytest.mark.parametrize(("value", "max_ack_delay", "message"), [
    (encode_varint(25_001), 25, "min_ack_delay above max_ack_delay"),
    (encode_varint(1), 0, "min_ack_delay above max_ack_delay"),
    (encode_varint(1 << 24), 16383, "2^24"),
    (encode_varint(1000) + b"\x00", 25, "bad length"),
    (b"", 25, "malformed"),
])
def test_bad_min_ack_delay_is_a_transport_parameter_error(
    value: bytes, max_ack_delay: int, message: str
) -> None:
    """(draft -14 §3) Both decoders raise the same error; the native one passes it on."""
    raw = _raw_params(value, max_ack_delay)
    for decode in (decode_transport_parameters, decode_peer_parameters):
        with pytest.raises(TransportParameterError, match=message.replace("^", r"\^")):
            decode(raw, from_server=False)


def test_a_peer_sees_transport_parameter_error_for_a_bad_min_ack_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that sends min_ack_delay above its max_ack_delay is refused with
    TRANSPORT_PARAMETER_ERROR (its handshake ends with the server's close)."""
    import quicflow.transport.startup as startup

    real = startup.local_min_ack_delay
    monkeypatch.setattr(startup, "local_min_ack_delay",
                        lambda cfg: 24_001 if cfg.max_ack_delay == 0.024 else real(cfg))
    # (a max_ack_delay of its own: the encoded parameters are kept per configuration
    # values, local_params.py, and no other test's client shares these)
    pair = MemoryPair(client_config=Configuration(alpn_protocols=["perf"], verify_peer=False,
                                                  max_ack_delay=0.024))
    from quicflow.transport.events import ConnectionTerminated

    events: list[object] = []

    def closed() -> bool:
        events.extend(pair.client.pop_events())
        return any(isinstance(e, ConnectionTerminated) for e in events)

    pair.run(closed)
    term = next(e for e in events if isinstance(e, ConnectionTerminated))
    assert (term.error_code, term.by_peer) == (TRANSPORT_PARAMETER_ERROR, True)


def test_parameters_follow_the_configuration() -> None:
    pair, client, server = _established()
    assert client.ack_freq.advertised_us == AF.MIN_ACK_DELAY_US
    assert server.peer_params is not None and server.peer_params.min_ack_delay == 1000
    assert server.ack_freq.peer_min_us == 1000 and client.ack_freq.peer_min_us == 1000
    pair, client, server = _established(ack_frequency=False)
    assert client.ack_freq.advertised_us == -1 and server.ack_freq.advertised_us == -1
    assert server.peer_params is not None and server.peer_params.min_ack_delay is None
    with pytest.raises(ValueError, match="ack_frequency_threshold"):
        Configuration(alpn_protocols=["x"], ack_frequency_threshold=0).validate()
    # a max_ack_delay below 1 ms: min_ack_delay never above it
    assert AF.local_min_ack_delay(Configuration(alpn_protocols=["x"], max_ack_delay=0.0)) == 0


# ---------------------------------------------------------------------- errors a peer sees


@pytest.mark.parametrize(("frame", "kw"), [
    (F.AckFrequency(0, 10, 999, 1), {}),  # requested max ack delay below our min_ack_delay
    (F.AckFrequency(0, 10, (1 << 14) * 1000, 1), {}),  # 2^14 ms or more
    (F.AckFrequency(0, 10, 25_000, 1), {"ack_frequency": False}),  # we never offered it
    (F.ImmediateAck(), {"ack_frequency": False}),
])
def test_protocol_violations(frame: F.Frame, kw: dict[str, Any]) -> None:
    pair, client, server = _established(**kw)
    _inject(pair, client, Epoch.ONE_RTT, [frame])
    term = _close_seen_by_client(pair)
    assert (term.error_code, term.frame_type) == (PROTOCOL_VIOLATION, F.frame_type_of(frame))


@pytest.mark.parametrize(("frame", "epoch"), [
    (F.AckFrequency(0, 10, 25_000, 1), Epoch.HANDSHAKE),
    (F.AckFrequency(0, 10, 25_000, 1), Epoch.INITIAL),
    (F.ImmediateAck(), Epoch.HANDSHAKE),
    (F.ImmediateAck(), Epoch.ZERO_RTT),  # draft -14 §5: IMMEDIATE_ACK not in 0-RTT
])
def test_frames_in_a_packet_type_that_forbids_them(frame: F.Frame, epoch: Epoch) -> None:
    pair, _, server = _established()
    with pytest.raises(QuicError) as info:
        _process_frames(server, encode_frames([frame]), epoch, pair.now)
    assert (info.value.code, info.value.frame_type) == (
        PROTOCOL_VIOLATION, F.frame_type_of(frame))


def test_ack_frequency_in_0rtt_is_taken() -> None:
    pair, _, server = _established()
    _process_frames(server, encode_frames([F.AckFrequency(107, 9, 30_000, 0)]),
                    Epoch.ZERO_RTT, pair.now)
    assert (server.ack_freq.recv_sequence, server.ack_freq.threshold) == (107, 9)


# ---------------------------------------------------------------------- the receiver


def _receiver() -> tuple[MemoryPair, Connection, Connection]:
    """An established pair whose server (the receiver here) takes the client's forged
    frames (sequence numbers from 100: the client's own requests so far are older; it
    makes no more) and runs RFC 9000's policy until they ask for another."""
    pair, client, server = _established()
    client.ack_freq.peer_min_us = -1
    af = server.ack_freq
    af.threshold, af.max_delay, af.reordering = 1, -1.0, 1
    return pair, client, server


def test_newest_request_applies_and_stale_ones_are_ignored() -> None:
    pair, client, server = _receiver()
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(105, 20, 40_000, 0)])
    af = server.ack_freq
    assert (af.recv_sequence, af.threshold, af.max_delay, af.reordering) == (105, 20, 0.04, 0)
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(103, 2, 1000, 1)])  # older: ignored
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(105, 2, 1000, 1)])  # same: ignored
    assert (af.recv_sequence, af.threshold, af.max_delay, af.reordering) == (105, 20, 0.04, 0)
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(106, 3, 1000, 1)])
    assert (af.recv_sequence, af.threshold, af.max_delay) == (106, 3, 0.001)


def _ack_only(pair: MemoryPair, client: Connection, server: Connection, n: int) -> bool:
    """Inject ``n`` PING packets to the server; True when it sends an ACK right away."""
    for _ in range(n):
        _inject(pair, client, Epoch.ONE_RTT, [F.Ping()])
    return bool(pair.server.datagrams_to_send(server, pair.now))


def test_threshold_delay_and_immediate_ack_are_honoured() -> None:
    pair, client, server = _receiver()
    assert _ack_only(pair, client, server, 2)  # RFC 9000: every second packet
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(100, 5, 30_000, 1)])
    assert server.spaces[2].ack_deadline == pytest.approx(pair.now + 0.030)
    # (the frame's own packet is the first of five held: not more than the threshold)
    assert not _ack_only(pair, client, server, 4)
    assert _ack_only(pair, client, server, 1)  # the sixth: past the threshold
    assert not _ack_only(pair, client, server, 1)
    _inject(pair, client, Epoch.ONE_RTT, [F.ImmediateAck()])
    assert pair.server.datagrams_to_send(server, pair.now)  # IMMEDIATE_ACK: at once
    assert not _ack_only(pair, client, server, 1)
    pair.now += 0.031  # the requested max ack delay, not ours (25 ms), bounds the wait
    server.handle_timer(pair.now)
    assert pair.server.datagrams_to_send(server, pair.now)


def test_reordering_threshold() -> None:
    """(draft -14 §6.2) 1: a gap is acknowledged at once (RFC 9000); 0: never for
    reordering; 3: once the gap is three packets old."""
    pair, client, server = _receiver()
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(100, 100, 25_000, 0)])
    pair.server.datagrams_to_send(server, pair.now)
    client.spaces[2].next_pn += 1  # a gap
    assert not _ack_only(pair, client, server, 1)
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(101, 100, 25_000, 3)])
    pair.server.datagrams_to_send(server, pair.now)
    client.spaces[2].next_pn += 1  # a new gap: packet p missing
    assert not _ack_only(pair, client, server, 1)  # p + 1
    assert not _ack_only(pair, client, server, 1)  # p + 2
    assert _ack_only(pair, client, server, 1)  # p + 3: largest - p = 3
    _inject(pair, client, Epoch.ONE_RTT, [F.AckFrequency(102, 100, 25_000, 1)])
    pair.server.datagrams_to_send(server, pair.now)
    client.spaces[2].next_pn += 1
    assert _ack_only(pair, client, server, 1)


# ---------------------------------------------------------------------- transfers


def _start(size: int, loss: float = 0.0, client_af: bool = True, server_af: bool = True,
           seed: int = 1) -> tuple[Net, LocalSide, LocalSide]:
    now = 1000.0
    cli_ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False,
                                    ack_frequency=client_af), is_server=False)
    conn = cli_ep.connect(SERVER_ADDR, now, server_name="localhost")
    client = LocalSide(cli_ep, ClientApp(size), SERVER_ADDR, conn)
    cert, key = _CERT
    srv_ep = Endpoint(Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                                    private_key=key, ack_frequency=server_af), is_server=True)
    server = LocalSide(srv_ep, ServerApp(), CLIENT_ADDR)
    return Net(client, server, now, loss=loss, seed=seed), client, server


def _download(size: int, **kw: Any) -> tuple[Connection, Connection]:
    net, client, server = _start(size, **kw)
    net.run(lambda: client.app.done, max_time=300)
    _check_download(client.app, size)
    assert client.conn is not None and server.conn is not None
    return client.conn, server.conn


def test_fewer_acks_per_mib_with_the_extension_bytes_intact() -> None:
    size = 4 << 20
    on_client, on_server = _download(size)
    off_client, off_server = _download(size, server_af=False)
    acks_on = on_client.counters.ack_frames_sent
    acks_off = off_client.counters.ack_frames_sent
    assert on_server.counters.ack_frequency_sent >= 2 and on_server.ack_freq.requested > 8
    assert on_client.ack_freq.threshold == on_server.ack_freq.requested
    assert off_server.counters.ack_frequency_sent == 0 and off_client.ack_freq.threshold == 1
    assert acks_on < 0.8 * acks_off, (acks_on, acks_off)
    assert on_server.counters.ack_frames_received < off_server.counters.ack_frames_received


def test_nothing_changes_with_a_peer_that_does_not_offer_it() -> None:
    """A client without the extension: the server asks nothing, the client's ACKs are
    those of RFC 9000 (the same counts as with both off)."""
    size = 1 << 20
    client, server = _download(size, client_af=False)
    both_off_client, _ = _download(size, client_af=False, server_af=False)
    assert server.ack_freq.peer_min_us == -1 and server.counters.ack_frequency_sent == 0
    assert client.peer_params is not None and client.peer_params.min_ack_delay == 1000
    assert client.counters.ack_frames_sent == both_off_client.counters.ack_frames_sent


@pytest.mark.parametrize(("loss", "size"), [(0.10, 512 << 10), (0.30, 128 << 10)])
def test_lossy_download_with_the_extension_arrives_intact(loss: float, size: int) -> None:
    client, server = _download(size, loss=loss, seed=3)
    assert server.counters.packets_lost > 0


def test_a_connection_with_nothing_to_send_asks_for_nothing() -> None:
    """Both sides offer the extension, but a handshake-only connection sends no
    ACK_FREQUENCY (a frame and an ACK of it would cost every short connection a datagram
    each way); the first request comes with data to send."""
    pair, client, server = _established()
    assert server.ack_freq.peer_min_us >= 0 and client.ack_freq.peer_min_us >= 0
    assert server.counters.ack_frequency_sent == 0 == client.counters.ack_frequency_sent
    sid = server.open_stream()
    server.send_stream_data(sid, bytes(200_000), end_stream=True)
    for _ in range(200):
        pair.step()
        pair.now += 0.0002
    assert server.counters.ack_frequency_sent >= 1
    assert client.counters.ack_frequency_received >= 1


def _asked_for_two(pair: MemoryPair, server: Connection) -> None:
    """(an established pair: a connection with nothing to send asks for nothing) as if
    the server had asked the client for a threshold of 2, acknowledged and settled."""
    server.ack_freq.requested, server.ack_freq.pending = 2, True
    _settle(pair)
    pair.now += 0.03  # past the client's ACK delay: what it held is acknowledged
    _settle(pair)


def test_a_pto_probe_carries_immediate_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once we asked for fewer ACKs, a 1-RTT PTO probe asks for one at once: the client
    (threshold 2 in force, no silence rule) got the data but its ACK was lost; the
    probe brings it an IMMEDIATE_ACK, and it answers at once."""
    import quicflow.transport.receive as receive_module

    taken: list[int] = []

    def counted(conn: Connection, frame: Any, epoch: Epoch, now: float) -> None:
        taken.append(int(conn.is_client))
        AF.on_immediate_ack(conn, frame, epoch, now)

    monkeypatch.setitem(receive_module._HANDLERS, F.ImmediateAck, counted)
    pair, client, server = _established()
    _asked_for_two(pair, server)
    assert client.ack_freq.recv_sequence >= 0 and client.ack_freq.threshold >= 2
    server.ack_freq.requested = 10  # as if asked for 10 (what the probe decision reads)
    sid = server.open_stream()
    server.send_stream_data(sid, b"data", end_stream=False)
    for d in pair.server.datagrams_to_send(server, pair.now):
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    assert pair.client_ep.datagrams_to_send(client, pair.now) == []  # the ACK waits
    deadline = client.timer()
    assert deadline is not None
    client.handle_timer(deadline)
    assert pair.client_ep.datagrams_to_send(client, deadline)  # the ACK: lost
    fired = server.loss.pto_fired
    probes: list[bytes] = []
    for _ in range(10):  # (the server's own ACK deadline may come first)
        deadline = server.timer()
        assert deadline is not None
        pair.now = deadline
        server.handle_timer(pair.now)
        out = pair.server.datagrams_to_send(server, pair.now)
        if server.loss.pto_fired > fired:
            probes = out
            break
        for d in out:  # (ACK-only packets: delivered, so the probe comes after no gap)
            pair.client_ep.receive(d, SERVER_ADDR, pair.now)
        assert pair.client_ep.datagrams_to_send(client, pair.now) == []
    assert probes and not server.ack_freq.immediate_pending and not taken
    pair.client_ep.receive(probes[0], SERVER_ADDR, pair.now)
    assert taken == [1]
    assert pair.client_ep.datagrams_to_send(client, pair.now), "the probe's ACK waited"


def test_without_immediate_ack_a_lone_packet_waits() -> None:
    """(the counterpart of the test above) the same lone packet without IMMEDIATE_ACK
    is acknowledged at the requested max ack delay, not at once."""
    pair, client, server = _established()
    _asked_for_two(pair, server)
    sid = server.open_stream()
    server.send_stream_data(sid, b"one", end_stream=False)
    for d in pair.server.datagrams_to_send(server, pair.now):
        pair.client_ep.receive(d, SERVER_ADDR, pair.now)
    assert pair.client_ep.datagrams_to_send(client, pair.now) == []


# ---------------------------------------------------------------------- snapshots


def _mid_download(server_af: bool) -> tuple[Net, LocalSide, LocalSide]:
    net, client, server = _start(2 << 20, server_af=server_af)
    net.run(lambda: len(client.app.received) >= 512 << 10)
    return net, client, server


def _restore(blob: bytes, net: Net, server: LocalSide) -> Connection:
    endpoint = Endpoint(server.endpoint.configuration, is_server=True)
    conn, state = restore_connection(blob, engine=endpoint.engine, now=net.now,
                                     configuration=endpoint.configuration)
    endpoint.adopt(conn)
    net.server = LocalSide(endpoint, ServerApp(state), CLIENT_ADDR, conn)
    return conn


def test_snapshot_keeps_the_state() -> None:
    net, client, server = _mid_download(True)
    old = server.conn
    assert old is not None and old.ack_freq.requested > 1
    blob = snapshot_connection(old, net.now, app_state=server.app.state())
    conn = _restore(blob, net, server)
    assert conn.ack_freq is not old.ack_freq
    for name in AF.AckFrequency.__slots__:
        if name != "pending":  # (what was in flight is declared lost on restore)
            assert getattr(conn.ack_freq, name) == getattr(old.ack_freq, name), name
    net.run(lambda: client.app.done, max_time=120)
    _check_download(client.app, 2 << 20)


def test_an_older_snapshot_restores_with_the_extension_off() -> None:
    """A capture of a build without the extension (no ack_freq field, no new counters;
    its server never sent min_ack_delay) restores with the extension off: the restored
    server asks for nothing and the download completes intact."""
    net, client, server = _mid_download(False)
    old = server.conn
    assert old is not None
    blob = snapshot_connection(old, net.now, app_state=server.app.state())
    doc, tail = document(blob)
    (conn_doc,) = [value for key, value in doc["body"]["$d"] if key == "connection"]
    fields = conn_doc["f"]
    del fields["ack_freq"]
    for name in ("ack_frames_sent", "ack_frames_received", "ack_frequency_sent",
                 "ack_frequency_received", "immediate_acks_received"):
        del fields["counters"]["f"][name]
    old_blob = assemble(doc, tail)
    conn = _restore(old_blob, net, server)
    assert conn.ack_freq.advertised_us == -1 and conn.ack_freq.peer_min_us == -1
    net.run(lambda: client.app.done, max_time=120)
    _check_download(client.app, 2 << 20)
    assert conn.counters.ack_frequency_sent == 0
