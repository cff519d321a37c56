"""qlog (draft-ietf-quic-qlog-main-schema / -quic-events, JSON-SEQ): every record of
the traces of a real loopback transfer, client and server, is loaded and checked — the
header, each event's name and field types, packet numbers, and that the frames one side
logged as sent are the frames the other side logged as received."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import quicflow
from quicflow.tls.certs import generate_self_signed
from quicflow.transport import qlog
from quicflow.transport.config import Configuration
from quicflow.transport.state import DRAINING
from tests.support import echo_proto
from tests.support.memory_pair import MemoryPair

_CERT = generate_self_signed(["localhost"])
UPLOAD = 300_000
DOWNLOAD = 700_000

PACKET_TYPES = {"initial", "handshake", "0RTT", "1RTT"}
EVENT_NAMES = {
    "connectivity:connection_started", "connectivity:connection_closed",
    "quic:packet_sent", "quic:packet_received", "recovery:packet_lost",
    "recovery:metrics_updated", "security:key_updated",
}
INT, STR, BOOL, NUM = int, str, bool, (int, float)
#: the fields each frame type must carry, with their JSON types
FRAME_FIELDS: dict[str, dict[str, Any]] = {
    "stream": {"stream_id": INT, "offset": INT, "length": INT, "fin": BOOL},
    "ack": {"ack_delay": NUM, "acked_ranges": list},
    "padding": {"length": INT},
    "ping": {},
    "crypto": {"offset": INT, "length": INT},
    "max_data": {"maximum": INT},
    "max_stream_data": {"stream_id": INT, "maximum": INT},
    "max_streams": {"maximum": INT, "stream_type": STR},
    "data_blocked": {"limit": INT},
    "stream_data_blocked": {"stream_id": INT, "limit": INT},
    "streams_blocked": {"limit": INT, "stream_type": STR},
    "new_connection_id": {"sequence_number": INT, "retire_prior_to": INT,
                          "connection_id": STR, "stateless_reset_token": STR},
    "retire_connection_id": {"sequence_number": INT},
    "path_challenge": {"data": STR},
    "path_response": {"data": STR},
    "connection_close": {"error_space": STR, "error_code": INT, "reason": STR},
    "reset_stream": {"stream_id": INT, "error_code": INT, "final_size": INT},
    "stop_sending": {"stream_id": INT, "error_code": INT},
    "new_token": {"token": dict},
    "handshake_done": {},
    "datagram": {"length": INT},
    "ack_frequency": {"sequence_number": INT, "ack_eliciting_threshold": INT,
                      "request_max_ack_delay": NUM, "reordering_threshold": INT},
    "immediate_ack": {},
}
METRICS = {"cwnd", "bytes_in_flight", "smoothed_rtt", "latest_rtt", "min_rtt", "rtt_variance"}


def _typed(value: Any, kind: Any) -> bool:
    if kind is INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def load(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSON-SEQ file (RFC 7464: RS, JSON text, LF)."""
    raw = path.read_bytes()
    assert raw.startswith(b"\x1e"), "a JSON-SEQ record starts with RS"
    records = []
    for chunk in raw.split(b"\x1e")[1:]:
        assert chunk.endswith(b"\n"), chunk[-40:]
        records.append(json.loads(chunk))
    return records


def check_trace(records: list[dict[str, Any]], role: str, odcid: str) -> None:
    """Field by field, every record of one trace."""
    head = records[0]
    assert head["qlog_version"] == "0.3" and head["qlog_format"] == "JSON-SEQ"
    trace = head["trace"]
    assert trace["vantage_point"]["type"] == role
    assert trace["common_fields"]["ODCID"] == odcid
    assert trace["common_fields"]["time_format"] == "relative"
    assert _typed(trace["common_fields"]["reference_time"], NUM)
    last = 0.0
    for rec in records[1:]:
        assert set(rec) == {"time", "name", "data"}, rec
        assert _typed(rec["time"], NUM) and rec["time"] >= last - 1.0, rec  # ms
        last = max(last, rec["time"])
        name, data = rec["name"], rec["data"]
        assert name in EVENT_NAMES, name
        assert isinstance(data, dict)
        if name in ("quic:packet_sent", "quic:packet_received"):
            header = data["header"]
            assert header["packet_type"] in PACKET_TYPES, header
            assert _typed(header["packet_number"], INT) and header["packet_number"] >= 0
            assert _typed(header["dcid"], STR)
            bytes.fromhex(header["dcid"])
            assert _typed(data["raw"]["length"], INT) and data["raw"]["length"] >= 20
            assert data["frames"], rec
            for frame in data["frames"]:
                fields = FRAME_FIELDS[frame["frame_type"]]
                for key, kind in fields.items():
                    assert _typed(frame[key], kind), (key, frame)
                if frame["frame_type"] == "ack":
                    for lo, hi in frame["acked_ranges"]:
                        assert _typed(lo, INT) and _typed(hi, INT) and 0 <= lo <= hi
        elif name == "recovery:metrics_updated":
            assert data and set(data) <= METRICS, data
            for value in data.values():
                assert _typed(value, NUM) and value >= 0
        elif name == "recovery:packet_lost":
            assert data["header"]["packet_type"] in PACKET_TYPES
            assert _typed(data["header"]["packet_number"], INT)
        elif name == "security:key_updated":
            assert data["key_type"].endswith("_secret") and data["key_type"].split("_")[0] in (
                "client", "server")
            assert data["trigger"] in ("tls", "local_update", "remote_update")
        elif name == "connectivity:connection_started":
            for key in ("src_ip", "dst_ip", "src_cid", "dst_cid", "ip_version"):
                assert _typed(data[key], STR)
            assert _typed(data["src_port"], INT) and _typed(data["dst_port"], INT)
        elif name == "connectivity:connection_closed":
            assert data["owner"] in ("local", "remote")


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r["data"] for r in records[1:] if r["name"] == name]


def stream_coverage(packets: list[dict[str, Any]], stream_id: int) -> tuple[int, bool]:
    """(bytes covered from 0 without a gap, whether a FIN frame ended there)."""
    ranges = []
    fin_at = -1
    for p in packets:
        for f in p["frames"]:
            if f["frame_type"] == "stream" and f["stream_id"] == stream_id:
                ranges.append((f["offset"], f["offset"] + f["length"]))
                if f["fin"]:
                    fin_at = f["offset"] + f["length"]
    end = 0
    for lo, hi in sorted(ranges):
        if lo > end:
            break
        end = max(end, hi)
    return end, fin_at == end


def _transfer(qlog_dir: str | None) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        cert, key = _CERT
        scfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                             private_key=key, qlog_dir=qlog_dir)
        server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                      configuration=scfg)
        try:
            ccfg = Configuration(alpn_protocols=["perf"], verify_peer=False,
                                 qlog_dir=qlog_dir)
            async with quicflow.connect("127.0.0.1", server.address[1],
                                        configuration=ccfg) as conn:
                reader, writer = await conn.create_stream()
                result = await echo_proto.client_exchange(
                    reader, writer, upload=os.urandom(UPLOAD), download=DOWNLOAD, seed=5)
                conn.conn.initiate_key_update()
                reader, writer = await conn.create_stream()
                second = await echo_proto.client_exchange(
                    reader, writer, upload=b"x" * 5000, download=5000, seed=6)
                result["ok"] = result["ok"] and second["ok"]
                # the path MTU search starts a PTO after confirmation; a busy host's PTO
                # can outlast the exchanges (CI, 2026-12-02: no probe in the trace):
                # the idle connection sends its first probe when it is due
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 5.0
                while conn.conn.pmtud.probes_sent < 1 and loop.time() < deadline:
                    await asyncio.sleep(0.005)
                result["stats"] = conn.stats()["connection"]
                result["odcid"] = conn.conn.original_dcid.hex()
            await asyncio.sleep(0.1)  # the server sees the close
        finally:
            server.close()
        return result

    return asyncio.run(main())


def test_loopback_trace_every_record(tmp_path: Path) -> None:
    result = _transfer(str(tmp_path))
    assert result["ok"]
    odcid = result["odcid"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{odcid}_client.sqlog", f"{odcid}_server.sqlog"]
    client = load(tmp_path / f"{odcid}_client.sqlog")
    server = load(tmp_path / f"{odcid}_server.sqlog")
    check_trace(client, "client", odcid)
    check_trace(server, "server", odcid)

    for records in (client, server):
        names = {r["name"] for r in records[1:]}
        assert {"connectivity:connection_started", "connectivity:connection_closed",
                "quic:packet_sent", "quic:packet_received", "recovery:metrics_updated",
                "security:key_updated"} <= names
        metrics = events(records, "recovery:metrics_updated")
        assert METRICS <= set().union(*metrics), "every metric reported at least once"
        # packet numbers: increasing and unique in each number space
        for space in ("initial", "handshake", "1RTT"):
            pns = [p["header"]["packet_number"] for p in events(records, "quic:packet_sent")
                   if p["header"]["packet_type"] == space]
            assert pns == sorted(set(pns)), space
            assert pns and pns[0] == 0, space

    # every packet the server logged as received is one the client logged as sent, with
    # the same frames (and the other way round)
    for sender, receiver in ((client, server), (server, client)):
        sent = {(p["header"]["packet_type"], p["header"]["packet_number"]): p
                for p in events(sender, "quic:packet_sent")}
        received = events(receiver, "quic:packet_received")
        assert len(received) >= 0.9 * len(sent)  # loopback: (nearly) nothing lost
        for p in received:
            key = (p["header"]["packet_type"], p["header"]["packet_number"])
            assert key in sent, key
            assert p["frames"] == sent[key]["frames"], key
            assert p["raw"]["length"] == sent[key]["raw"]["length"], key

    # the STREAM frames carry exactly the bytes moved: request header + upload one way,
    # response header + download the other, each ending with FIN
    up = echo_proto.REQUEST_HEADER.size + UPLOAD
    down = echo_proto.RESPONSE_HEADER_LEN + DOWNLOAD
    assert stream_coverage(events(client, "quic:packet_sent"), 0) == (up, True)
    assert stream_coverage(events(server, "quic:packet_received"), 0) == (up, True)
    assert stream_coverage(events(server, "quic:packet_sent"), 0) == (down, True)
    assert stream_coverage(events(client, "quic:packet_received"), 0) == (down, True)

    # counters agree with the trace
    stats = result["stats"]
    sent_client = events(client, "quic:packet_sent")
    assert len(sent_client) >= stats["packets_sent"]  # (+ the CONNECTION_CLOSE)
    # path MTU probes are in the trace: PING + PADDING at the probe size
    probes = [p for p in sent_client if [f["frame_type"] for f in p["frames"]] == [
        "ping", "padding"] and p["raw"]["length"] > 1200]
    assert len(probes) == stats["pmtud_probes_sent"] >= 1

    # the key update: started by the client, answered by the server
    def keys(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(k["key_type"], k["trigger"]) for k in events(records, "security:key_updated")]

    assert ("client_1rtt_secret", "local_update") in keys(client)
    assert ("server_1rtt_secret", "remote_update") in keys(client)
    assert ("client_1rtt_secret", "remote_update") in keys(server)
    assert ("client_initial_secret", "tls") in keys(server)
    closed_c = events(client, "connectivity:connection_closed")
    closed_s = events(server, "connectivity:connection_closed")
    assert [c["owner"] for c in closed_c] == ["local"]
    assert [c["owner"] for c in closed_s] == ["remote"]
    assert closed_s[0]["application_code"] == 0


def test_qlogdir_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QLOGDIR alone (no qlog_dir in the configuration) writes both traces."""
    monkeypatch.setenv("QLOGDIR", str(tmp_path / "q"))
    result = _transfer(None)
    assert result["ok"]
    names = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert names == [f"{result['odcid']}_client.sqlog", f"{result['odcid']}_server.sqlog"]
    for name in names:
        check_trace(load(tmp_path / "q" / name), name.split("_")[1].split(".")[0],
                    result["odcid"])


def test_forged_initial_leaves_no_file(tmp_path: Path) -> None:
    """An Initial that cannot be opened creates no connection, and no qlog file."""
    async def main() -> None:
        cert, key = _CERT
        cfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                            private_key=key, qlog_dir=str(tmp_path))
        server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                      configuration=cfg)
        try:
            forged = bytes([0xC3, 0, 0, 0, 1, 8]) + os.urandom(8) + bytes([0, 0])
            forged += bytes([0x44, 0xB0]) + os.urandom(1200)  # length 1200
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _ in range(5):
                    s.sendto(forged, server.address)
            await asyncio.sleep(0.2)
            stats = server.stats()["endpoint"]
            assert stats["dropped_undecryptable_initial"] == 5, stats
        finally:
            server.close()

    asyncio.run(main())
    assert list(tmp_path.iterdir()) == []


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def header(self, record: dict[str, Any]) -> None:
        self.records.append(json.loads(json.dumps(record)))

    def event(self, time: float, name: str, data: dict[str, Any]) -> None:
        self.records.append(json.loads(json.dumps({"time": time, "name": name, "data": data})))

    def close(self, keep: bool = True) -> None:
        self.closed = True


def test_packet_lost_events_under_loss() -> None:
    """In memory with 10 % loss: every packet declared lost is in the trace as
    recovery:packet_lost (and was logged as sent); the count matches the counter."""
    pair = MemoryPair(loss=0.1, seed=4)
    client_sink, server_sink = ListSink(), ListSink()
    qlog.start(pair.client, client_sink, pair.now, wall_time_ms=0.0)
    pair.server.qlog_factory = lambda conn, now: qlog.start(conn, server_sink, now,
                                                            wall_time_ms=0.0)
    pair.run(lambda: pair.client.handshake_confirmed and bool(pair.server_conns))
    client = pair.client
    sid = client.open_stream()
    client.send_stream_data(sid, os.urandom(400_000), end_stream=True)
    server = pair.server_conns[0]
    got = bytearray()

    def done() -> bool:
        server.pop_events()
        while sid in server.streams:
            chunk = server.read_stream(sid, 1 << 20)
            if not chunk:
                break
            got.extend(chunk)
        return len(got) == 400_000

    pair.run(done, max_time=120)
    check_trace(client_sink.records, "client", client.original_dcid.hex())
    check_trace(server_sink.records, "server", client.original_dcid.hex())
    lost = events(client_sink.records, "recovery:packet_lost")
    assert len(lost) == client.counters.packets_lost > 0
    sent = {(p["header"]["packet_type"], p["header"]["packet_number"])
            for p in events(client_sink.records, "quic:packet_sent")}
    for p in lost:
        assert (p["header"]["packet_type"], p["header"]["packet_number"]) in sent
    assert stream_coverage(events(client_sink.records, "quic:packet_sent"), sid) == (
        400_000, True)


def test_a_server_closed_while_its_connections_close_or_drain_keeps_their_whole_traces(
    tmp_path: Path,
) -> None:
    """A trace is written in blocks of 64 KiB and at the end when its connection is
    forgotten. A server closed before that lost the records since the last block: a
    connection still draining after its client's close (the test above failed now and
    then under load that way: the server's draining period outlived its 0.1 s wait), or
    one the server's close itself ended. Their traces now end with connection_closed."""
    cert, key = _CERT

    async def main() -> list[tuple[str, str]]:
        accepted: list[quicflow.QuicConnection] = []
        scfg = Configuration(alpn_protocols=["perf"], certificate_chain=[cert],
                             private_key=key, qlog_dir=str(tmp_path))
        # max_ack_delay 0.5 s: the server's PTO, hence its draining period (3 PTO),
        # lasts long enough to close the server while it drains (without the ACK
        # Frequency extension, with which the server would ask for a shorter delay)
        ccfg = Configuration(alpn_protocols=["perf"], verify_peer=False,
                             qlog_dir=str(tmp_path), max_ack_delay=0.5, ack_frequency=False)
        ends = []
        for server_closes in (False, True):
            server = await quicflow.serve(echo_proto.serve_stream, "127.0.0.1", 0,
                                          configuration=scfg,
                                          connection_handler=accepted.append)
            try:
                async with quicflow.connect("127.0.0.1", server.address[1],
                                            configuration=ccfg) as conn:
                    reader, writer = await conn.create_stream()
                    result = await echo_proto.client_exchange(
                        reader, writer, upload=b"u" * 5000, download=5000, seed=9)
                    assert result["ok"]
                    ends.append((conn.conn.original_dcid.hex(),
                                 "local" if server_closes else "remote"))
                    face = accepted[-1]
                    if server_closes:
                        server.close()
                        await conn.wait_closed()
                if not server_closes:
                    while not face.closed:  # the client's close reached the server
                        await asyncio.sleep(0.01)
                    assert face.conn.state == DRAINING and not face.conn.terminated
            finally:
                server.close()
        return ends

    for odcid, owner in asyncio.run(main()):
        server = load(tmp_path / f"{odcid}_server.sqlog")
        check_trace(server, "server", odcid)
        closed = events(server, "connectivity:connection_closed")
        assert [c["owner"] for c in closed] == [owner]
        if owner == "remote":  # the client's close was logged as received
            assert any(f["frame_type"] == "connection_close"
                       for p in events(server, "quic:packet_received") for f in p["frames"])
        client = load(tmp_path / f"{odcid}_client.sqlog")
        assert [c["owner"] for c in events(client, "connectivity:connection_closed")] == [
            "remote" if owner == "local" else "local"]
