"""Snapshots of connections that hold a lot of data: buffered bytes travel after the
document, raw (codec format 4), and any tampering with that part is refused."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.endpoint.endpoint import Endpoint
from quicflow.transport import codec as codec_mod
from quicflow.transport.codec import SnapshotError
from quicflow.transport.config import Configuration
from quicflow.transport.snapshot import (
    CODEC,
    open_snapshot,
    restore_connection,
    seal_snapshot,
    snapshot_connection,
    snapshot_info,
)
from tests.support.snapshot_peer import (
    CLIENT_ADDR,
    SERVER_ADDR,
    ClientApp,
    LocalSide,
    ServerApp,
    adopt,
)
from tests.test_snapshot import _server_endpoint, _start

PUSH = 2 << 20  # random bytes the server pushes on a stream the client does not read yet


def _unread(conn: Any, sid: int) -> int:
    stream = conn.streams.get(sid)
    recv = stream.recv if stream is not None else None
    return recv.contiguous_end - recv.read_offset if recv is not None else 0


def test_random_buffered_bytes_survive_both_sides_moving() -> None:
    """A server pushes 2 MiB of random bytes on a stream its client does not read: the
    client's receive window fills (1 MiB unread at the client), the rest waits at the
    server. Both ends are captured and restored in fresh endpoints; the client then reads
    the stream to its end and gets every byte (SHA-256)."""
    net, client, server = _start(size=1000)
    net.run(lambda: client.app.done)
    old_server, old_client = server.conn, client.conn
    assert old_server is not None and old_client is not None
    data = os.urandom(PUSH)
    sid = old_server.open_stream(bidirectional=False)
    old_server.send_stream_data(sid, data, True)
    net.run(lambda: _unread(old_client, sid) >= 512 * 1024, max_time=30)
    net.run_for(0.05)  # the client's window is full: the server is blocked
    old_server.pop_events()
    old_client.pop_events()

    server_blob = snapshot_connection(old_server, net.now, app_state=server.app.state())
    client_blob = snapshot_connection(old_client, net.now, app_state=client.app.state())
    for blob, least in ((server_blob, 1 << 20), (client_blob, 512 * 1024)):
        doc, tail = codec_mod.document(blob)
        assert doc["version"] == 4 and snapshot_info(blob)["version"] == 4
        # the random bytes are after the document, raw: neither base64 nor compressed
        assert len(tail) >= least and sum(doc["blobs"]) == len(tail)
        assert data[-4096:] in tail if blob is server_blob else data[4096:8192] in tail

    key = os.urandom(32)
    sealed_server = seal_snapshot(server_blob, key)
    sealed_client = seal_snapshot(client_blob, key)
    server_ep = _server_endpoint()
    new_server, state = restore_connection(open_snapshot(sealed_server, key),
                                           engine=server_ep.engine, now=net.now,
                                           configuration=server_ep.configuration)
    adopt(server_ep, new_server)
    client_ep = Endpoint(Configuration(alpn_protocols=["perf"], verify_peer=False),
                         is_server=False)
    new_client, client_state = restore_connection(open_snapshot(sealed_client, key),
                                                  engine=client_ep.engine, now=net.now)
    adopt(client_ep, new_client)
    net.server = LocalSide(server_ep, ServerApp(state), CLIENT_ADDR, new_server)
    net.client = LocalSide(client_ep, ClientApp(state=client_state), SERVER_ADDR, new_client)

    got = bytearray()

    def read_all() -> bool:
        got.extend(new_client.read_stream(sid))
        return new_client.stream_at_eof(sid)

    net.run(read_all, max_time=60)
    assert len(got) == PUSH
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def _big_blob() -> bytes:
    return CODEC.encode({"note": 1}, {"a": os.urandom(5000), "b": bytearray(os.urandom(2000)),
                                      "c": b"small"})


def test_codec_keeps_large_bytes_raw_and_round_trips() -> None:
    value = {"a": os.urandom(5000), "b": bytearray(os.urandom(2000)), "c": b"small",
             "d": [b"\x00" * codec_mod.OUT_OF_BAND, b"\x01" * (codec_mod.OUT_OF_BAND - 1)]}
    blob = CODEC.encode({}, value)
    doc, tail = codec_mod.document(blob)
    assert doc["blobs"] == [5000, 2000, codec_mod.OUT_OF_BAND]
    assert len(tail) == 7000 + codec_mod.OUT_OF_BAND
    _, out = CODEC.decode(blob)
    assert out == value and type(out["b"]) is bytearray and type(out["a"]) is bytes


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d, t: (d, t[:-1]), "do not match"),
        (lambda d, t: (d, t + b"x"), "do not match"),
        (lambda d, t: ({**d, "blobs": d["blobs"][:-1]}, t[: -d["blobs"][-1]]), "no out-of"),
        (lambda d, t: ({**d, "blobs": [*d["blobs"][:-1], -1]}, t), "malformed"),
        (lambda d, t: ({**d, "blobs": "5000"}, t), "malformed"),
        (lambda d, t: ({**d, "blobs": [*d["blobs"], 3]}, t + b"abc"), "nothing names"),
        (lambda d, t: (_set_ref(d, "b", 0), t), "used twice"),
        (lambda d, t: (_set_ref(d, "b", 7), t), "no out-of-band"),
        (lambda d, t: ({k: v for k, v in d.items() if k != "blobs"}, t), "do not match"),
    ],
)
def test_tampered_out_of_band_part_is_refused(edit: Any, message: str) -> None:
    doc, tail = codec_mod.document(_big_blob())
    doc, tail = edit(doc, tail)
    with pytest.raises(SnapshotError, match=message):
        CODEC.decode(codec_mod.assemble(doc, tail))


def _set_ref(doc: dict[str, Any], key: str, index: int) -> dict[str, Any]:
    for pair in doc["body"]["$d"]:
        if pair[0] == key:
            tag = next(iter(pair[1]))
            pair[1] = {tag: index}
    return doc


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-3, max_value=20_000), max_size=5),
       st.binary(max_size=64), st.integers(min_value=-2, max_value=4))
def test_any_out_of_band_layout_decodes_or_is_refused(
    lengths: list[int], extra: bytes, index: int
) -> None:
    """Whatever lengths, tail and index a document names, decoding returns the value the
    lengths describe or raises SnapshotError; nothing else escapes."""
    doc, tail = codec_mod.document(_big_blob())
    doc["blobs"] = lengths
    _set_ref(doc, "a", index)
    try:
        CODEC.decode(codec_mod.assemble(doc, tail + extra))
    except SnapshotError:
        pass
