"""Restoring a malformed (unsealed) snapshot document fails with SnapshotError, never
AttributeError/TypeError, and never accepts a field of the wrong type (issue 10,
item 11): every field of every captured object is checked against its annotation."""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.crypto.offload import SoftwareOffloadEngine
from quicflow.transport import codec as codec_mod
from quicflow.transport.snapshot import SnapshotError, restore_connection, snapshot_connection

from .test_snapshot import _established


@cache
def _blob() -> bytes:
    net, client, _ = _established()
    assert client.conn is not None
    return snapshot_connection(client.conn, net.now, b"app")


def _doc() -> dict[str, Any]:
    blob = _blob()
    doc, _ = codec_mod.document(blob)
    return doc


def _encode(doc: dict[str, Any]) -> bytes:
    return codec_mod.assemble(doc, codec_mod.document(_blob())[1])


def _conn_fields(doc: dict[str, Any]) -> dict[str, Any]:
    pairs = doc["body"]["$d"]
    conn = next(v for k, v in pairs if k == "connection")
    fields: dict[str, Any] = conn["f"]
    return fields


def _restore(blob: bytes) -> None:
    restore_connection(blob, engine=SoftwareOffloadEngine(), now=1000.0)


def test_the_unmodified_document_restores() -> None:
    _restore(_encode(_doc()))


def _stream_part(f: dict[str, Any], part: str) -> dict[str, Any]:
    """The fields of the first stream's ``recv`` or ``send`` record."""
    record = f["streams"]["$d"][0][1]["f"][part]
    assert record is not None, "the captured connection has no such stream side"
    fields: dict[str, Any] = record["f"]
    return fields


def _set_ranges(fields: dict[str, Any], name: str, starts: list[int], ends: list[int]) -> None:
    fields[name] = {"$c": "RangeSet", "f": {"starts": starts, "ends": ends}}


EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    # well-typed but inconsistent state: the receive path would fail on a later packet
    "out-of-order range without its pieces": lambda f: _set_ranges(
        _stream_part(f, "recv"), "chunk_ranges", [1 << 40], [(1 << 40) + 5]),
    "ready_bytes not matching the buffers": lambda f: _stream_part(f, "recv").__setitem__(
        "ready_bytes", _stream_part(f, "recv")["ready_bytes"] + 5),
    "received packet ranges unsorted": lambda f: _set_ranges(
        f["spaces"][2]["f"], "received", [5, 1], [6, 2]),
    "send buffer_start past the buffer": lambda f: _stream_part(f, "send").__setitem__(
        "buffer_start", 1 << 30),
    "lost range below the acknowledged offset": lambda f: _set_ranges(
        _stream_part(f, "send"), "lost", [-10], [-5]),
    "stream filed under another id": lambda f: f["streams"]["$d"][0].__setitem__(0, 999),

    "int field holds a string": lambda f: f.__setitem__("key_updates_received", "one"),
    "bool field holds an int": lambda f: f.__setitem__("is_client", 1),
    "bytes field holds an int": lambda f: f.__setitem__("peer_cid", 7),
    "float field holds a string": lambda f: f.__setitem__("idle_deadline", "soon"),
    "dataclass field holds a list": lambda f: f.__setitem__("flow", [1, 2]),
    "dataclass field holds another class": lambda f: f.__setitem__(
        "flow", {"$c": "RangeSet", "f": {"starts": [], "ends": []}}),
    "optional dataclass holds an int": lambda f: f.__setitem__("peer_params", 5),
    "spaces of the wrong length": lambda f: f["spaces"].pop(),
    "stream table keyed by strings": lambda f: f.__setitem__(
        "streams", {"$d": [["0", v] for _, v in f["streams"]["$d"]]}),
    "list of ints holds a string": lambda f: f["flow"]["f"].__setitem__("max_data", "x"),
    "range list holds a float": lambda f: f["spaces"][2]["f"]["received"]["f"].__setitem__(
        "starts", [0.5]),
    "range list holds a bool": lambda f: f["spaces"][2]["f"]["received"]["f"].__setitem__(
        "ends", [True]),
    "range list holds a huge integer": lambda f: f["spaces"][2]["f"]["received"][
        "f"].__setitem__("ends", [1 << 70]),
    "float field holds a bool": lambda f: f.__setitem__("idle_deadline", True),
    "tuple of the wrong size": lambda f: f["cid_changes"].append({"$t": [True]}),
    "enum field holds an int": lambda f: f.__setitem__("cipher_suite", 4865),
    "counters hold a list": lambda f: f.__setitem__("counters", []),
    "huge integer": lambda f: f.__setitem__("next_host_cid_seq", 1 << 80),
}


@pytest.mark.parametrize("name", sorted(EDITS))
def test_malformed_field_raises_snapshot_error(name: str) -> None:
    doc = _doc()
    EDITS[name](_conn_fields(doc))
    with pytest.raises(SnapshotError):
        _restore(_encode(doc))


def _body_part(doc: dict[str, Any], name: str) -> Any:
    return next(v for k, v in doc["body"]["$d"] if k == name)


def _set_body_part(doc: dict[str, Any], name: str, value: Any) -> None:
    for pair in doc["body"]["$d"]:
        if pair[0] == name:
            pair[1] = value


def _keys(doc: dict[str, Any], index: int) -> dict[str, Any]:
    fields: dict[str, Any] = _body_part(doc, "keys")[index]["f"]
    return fields


def _path(doc: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = _body_part(doc, "path")["f"]
    return fields


_B64_5 = {"$b": "AAAAAAA="}  # 5 bytes
#: Edits of the parts a snapshot carries beside the connection record (the path and the
#: 1-RTT key state read from the offload engine, issue 7).
BODY_EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "send key phase 2": lambda d: _keys(d, 0).__setitem__("key_phase", 2),
    "receive key phase a string": lambda d: _keys(d, 1).__setitem__("key_phase", "1"),
    "send secret of the wrong length": lambda d: _keys(d, 0).__setitem__("secret", _B64_5),
    "receive hp key of the wrong length": lambda d: _keys(d, 1).__setitem__("hp_key", _B64_5),
    "hp key an int": lambda d: _keys(d, 0).__setitem__("hp_key", 7),
    "largest pn below -1": lambda d: _keys(d, 1).__setitem__("largest_pn", -5),
    "phase start pn huge": lambda d: _keys(d, 1).__setitem__("phase_start_pn", 1 << 63),
    "one key direction only": lambda d: _body_part(d, "keys").pop(),
    "keys hold a Path": lambda d: _body_part(d, "keys").__setitem__(0, _body_part(d, "path")),
    "path peer address differs": lambda d: _path(d).__setitem__(
        "peer_address", {"$t": ["127.0.0.2", 4433]}),
    "path validated an int": lambda d: _path(d).__setitem__("validated", 1),
    "path datagram size below 1200": lambda d: _path(d).__setitem__("max_datagram_size", 100),
    "path mtu cap huge": lambda d: _path(d).__setitem__("mtu_cap", 1 << 40),
    "path a key record": lambda d: _set_body_part(d, "path", _body_part(d, "keys")[0]),
    "previous path an int": lambda d: _set_body_part(d, "previous_path", 3),
    "previous path with a bad counter": lambda d: _set_body_part(d, "previous_path", {
        "$c": "Path", "f": {**_path(d), "bytes_sent_unvalidated": "many"}}),
}


@pytest.mark.parametrize("name", sorted(BODY_EDITS))
def test_malformed_path_or_keys_raise_snapshot_error_before_any_install(name: str) -> None:
    doc = _doc()
    BODY_EDITS[name](doc)
    engine = SoftwareOffloadEngine()
    with pytest.raises(SnapshotError):
        restore_connection(_encode(doc), engine=engine, now=1000.0)
    assert not engine._sealers and not engine._openers, "refused, yet keys were installed"


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("$c", "$e"):
                continue
            out += _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _leaves(v, (*path, i))
    else:
        out.append(path)
    return out


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=4),
                  st.floats(allow_nan=False, allow_infinity=False), st.just([]),
                  st.just({"$b": "AAAA"}), st.just({"$t": [1]}), st.just({"$d": []}))


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), _JUNK)
def test_any_leaf_replaced_restores_or_raises_snapshot_error(seed: int, junk: Any) -> None:
    doc = _doc()
    body = doc["body"]
    paths = _leaves(body)
    path = random.Random(seed).choice(paths)
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = junk
    try:
        _restore(_encode(doc))
    except SnapshotError:
        pass
