"""The native twin of transport/inline.py's made functions (``_native.object_plan``,
crypto/_native_src/plan.c) makes the same objects as the Python reference: the same
classes and values in every slot, every list, dict and object new per call, constants
and arguments shared, and the same errors for bad calls."""

from __future__ import annotations

import dataclasses
import gc
import sys
from typing import Any

import pytest

from quicflow.crypto.extension import EXT, python_forced
from quicflow.transport import factory, startup
from quicflow.transport.inline import Arg, Inline, _python_make, inline_init
from quicflow.transport.rangeset import RangeSet
from quicflow.transport.streams import SendStream


@pytest.fixture(autouse=True)
def _native(require: Any) -> None:
    require(EXT is not None, "the native extension is not built")


def _native_or_python() -> str:
    """What inline_init gives in this run: the C twin, or the Python function with
    QUICFLOW_ENGINE=python."""
    return "function" if python_forced() else "Plan"


_ARGS: set[int] = set()  # ids of the calls' arguments: shared, not walked into


def _dump(obj: Any, seen: dict[int, Any], shared: list[Any]) -> Any:
    """Every slot, recursively, with the classes; mutables by their first-seen order
    (two calls must not share any, one call's graph is a tree); other values themselves
    with their identity noted in ``shared``."""
    if id(obj) not in _ARGS and (isinstance(obj, (list, dict)) or (
            dataclasses.is_dataclass(obj) and not isinstance(obj, type))):
        assert id(obj) not in seen, "a mutable object reached twice"
        seen[id(obj)] = obj
        if isinstance(obj, list):
            return ["list", *(_dump(x, seen, shared) for x in obj)]
        if isinstance(obj, dict):
            return ("dict", tuple(sorted((k, _dump(v, seen, shared)) for k, v in obj.items())))
        return (type(obj), tuple((f.name, _dump(getattr(obj, f.name), seen, shared))
                                 for f in dataclasses.fields(obj)))
    shared.append(obj)
    return (type(obj), repr(obj))


def _same(reference: Any, native: Any, other: Any, args: dict[str, Any]) -> None:
    _ARGS.clear()
    _ARGS.update(id(v) for v in args.values())
    seen_r: dict[int, Any] = {}
    seen_n: dict[int, Any] = {}
    seen_o: dict[int, Any] = {}
    shared_r: list[Any] = []
    shared_n: list[Any] = []
    assert _dump(reference, seen_r, shared_r) == _dump(native, seen_n, shared_n)
    _dump(other, seen_o, [])
    assert not set(seen_n) & set(seen_r) and not set(seen_n) & set(seen_o)
    # the values that are not made per call are the very same objects
    assert len(shared_r) == len(shared_n)
    for a, b in zip(shared_r, shared_n, strict=True):
        assert a is b or (type(a) in (int, float) and a == b)


def _connection_args() -> dict[str, Any]:
    from quicflow.crypto.offload import SoftwareOffloadEngine
    from quicflow.transport.config import Configuration

    cfg = Configuration(alpn_protocols=["x"])
    return dict(configuration=cfg, now_created=5.0, original_dcid=b"\x01" * 8,
                peer_address=("127.0.0.1", 4433), local_cid_length=8,
                engine=SoftwareOffloadEngine(), seal_key=b"k" * 16, cid_issuer=None,
                cc_algorithm="newreno", max_pto_period=2.5, pmtud=True, pmtud_next_at=0.0)


def _connection_specs() -> list[tuple[type, dict[str, Any]]]:
    from quicflow.transport.connection import Connection

    return [(Connection, dict(
        configuration=Arg("configuration"), is_client=is_client,
        now_created=Arg("now_created"), original_dcid=Arg("original_dcid"),
        peer_address=Arg("peer_address"), local_cid_length=Arg("local_cid_length"),
        engine=Arg("engine"), seal_key=Arg("seal_key"), cid_issuer=Arg("cid_issuer"),
        spaces=startup.SPACE_SPECS if is_client else startup.SERVER_SPACE_SPECS,
        probes_pending=[0, 0, 0], send_protectors=[None] * 4,
        recv_protectors=[None] * 4, **startup.recovery_spec(is_client)))
        for is_client in (False, True)]


def test_the_connection_and_its_parts_are_made_by_the_native_twin() -> None:
    kind = _native_or_python()
    assert type(factory._MAKE_CONNECTION[False]).__name__ == kind
    assert type(factory._MAKE_CONNECTION[True]).__name__ == kind
    assert type(startup._new_space).__name__ == kind


@pytest.mark.parametrize("is_client", [False, True])
def test_a_new_connection_is_the_same_as_the_python_reference(is_client: bool) -> None:
    cls, values = _connection_specs()[is_client]
    reference, plan, params = _python_make(cls, values)
    native = EXT.object_plan(plan, params)
    args = _connection_args()
    _same(reference(**args), native(**args), native(**args), args)
    made = native(**args)
    assert made.configuration is args["configuration"] and made.engine is args["engine"]
    assert made.loss.cc.algorithm == "newreno" and made.loss.max_pto_period == 2.5
    assert made.pmtud.enabled is True and made.is_client is is_client


def test_spaces_recovery_and_given_values_are_the_same_as_the_reference() -> None:
    specs: list[tuple[type, dict[str, Any], dict[str, Any]]] = [
        (spec.cls, spec.values, {}) for spec in startup.SPACE_SPECS]
    for is_client in (False, True):
        rec = startup.recovery_spec(is_client)
        specs += [(rec["loss"].cls, rec["loss"].values,
                   dict(cc_algorithm="cubic", max_pto_period=0.0)),
                  (rec["pacer"].cls, rec["pacer"].values, {}),
                  (rec["pmtud"].cls, rec["pmtud"].values,
                   dict(pmtud=False, pmtud_next_at=float("inf")))]
    specs.append((SendStream, dict(max_data=Arg("limit"), acked=Inline(
        RangeSet, starts=[1, Inline(RangeSet)], ends=Arg("ends"))), dict(limit=9, ends=[2])))
    for cls, values, args in specs:
        reference, plan, params = _python_make(cls, values)
        native = EXT.object_plan(plan, params)
        _same(reference(**args), native(**args), native(**args), args)


def test_a_default_factory_that_is_not_inlined_is_called_per_object() -> None:
    calls: list[int] = []

    def counted() -> list[int]:
        calls.append(1)
        return [len(calls)]

    @dataclasses.dataclass(slots=True)
    class Holder:
        made: list[int] = dataclasses.field(default_factory=counted)
        table: dict[int, int] = dataclasses.field(default_factory=dict)

    make = inline_init(Holder)
    assert type(make).__name__ == _native_or_python()
    a, b = make(), make()
    assert a.made == [1] and b.made == [2] and a.table == {} and a.table is not b.table


def test_bad_calls_raise_type_error_as_the_python_function_does() -> None:
    make = inline_init(SendStream, max_data=Arg("limit"), next_offset=Arg("start"))
    assert type(make).__name__ == _native_or_python()
    assert make(limit=3, start=1).max_data == 3
    assert make(**{"start": 2, "limit": 4}).next_offset == 2
    with pytest.raises(TypeError):
        make(3, 1)
    with pytest.raises(TypeError, match="missing"):
        make(limit=3)
    with pytest.raises(TypeError, match="unexpected"):
        make(limit=3, start=1, other=2)


def test_classes_whose_slots_c_cannot_set_keep_the_python_function() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Frozen:
        x: int = 0

    @dataclasses.dataclass
    class NoSlots:
        x: int = 0

    class Custom:
        __slots__ = ("x",)

        def __setattr__(self, name: str, value: Any) -> None:
            object.__setattr__(self, name, value + 1)

    make = inline_init(NoSlots)
    assert type(make).__name__ == "function" and make().x == 0
    make = inline_init(Frozen)  # (its __setattr__ refuses, in Python as it would in C)
    assert type(make).__name__ == "function"
    with pytest.raises(dataclasses.FrozenInstanceError):
        make()
    with pytest.raises(TypeError):
        EXT.object_plan(("o", Custom, (("x", ("c", 1)),)), ())
    with pytest.raises(TypeError):
        EXT.object_plan(("o", SendStream, (("nope", ("c", 1)),)), ())
    with pytest.raises(TypeError):
        EXT.object_plan(("o", SendStream, (("max_data", ("c", 1)), ("max_data", ("c", 2)))), ())
    with pytest.raises(TypeError):
        EXT.object_plan(("a", 1), ("x",))
    with pytest.raises(TypeError):
        EXT.object_plan(("q",), ())
    assert EXT.object_plan(("l", (("c", 1), ("a", 0))), ("x",))(x=2) == [1, 2]


def test_no_reference_is_leaked_or_lost() -> None:
    make = factory._MAKE_CONNECTION[False]
    args = _connection_args()
    # (the objects only these calls use: None, True and the like are everywhere)
    mine = [v for v in args.values() if type(v) not in (type(None), bool, int, float, str)]
    before = [sys.getrefcount(v) for v in mine]
    for _ in range(200):
        make(**args)
    gc.collect()
    for _ in range(3):
        make(**args)
    blocks = sys.getallocatedblocks()
    for _ in range(2000):
        make(**args)
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 200
    assert [sys.getrefcount(v) for v in mine] == before
    with pytest.raises(TypeError):
        make(**{k: v for k, v in args.items() if k != "engine"})
    assert [sys.getrefcount(v) for v in mine] == before


def test_fast_init_twins_equal_their_constructors() -> None:
    from quicflow.transport.inline import fast_init
    from quicflow.transport.recovery import SentPacket, new_sent_packet
    from quicflow.transport.state import LocalCid, PeerCid, new_local_cid, new_peer_cid

    if python_forced():  # (the constructors themselves)
        assert (new_sent_packet, new_local_cid, new_peer_cid) == (SentPacket, LocalCid, PeerCid)
    else:
        assert {type(f).__name__ for f in (new_sent_packet, new_local_cid, new_peer_cid)} == {
            "Plan"}
    frames: list[object] = [("crypto", 0, 5)]
    cases = [
        (new_sent_packet(7, 1.5, 1200, True, False, 2, frames),
         SentPacket(7, 1.5, 1200, True, False, 2, frames)),  # type: ignore[arg-type]
        (new_sent_packet(7, 1.5, size=1200, ack_eliciting=True, in_flight=False, epoch=2,
                         frames=frames), SentPacket(7, 1.5, 1200, True, False, 2, frames)),
        (new_local_cid(3, b"c" * 8, b"t" * 16), LocalCid(3, b"c" * 8, b"t" * 16)),
        (new_peer_cid(0, b"p", None), PeerCid(0, b"p", None)),
    ]
    for made, plain in cases:
        assert type(made) is type(plain)
        for f in dataclasses.fields(plain):
            a, b = getattr(made, f.name), getattr(plain, f.name)
            assert type(a) is type(b) and a == b, f.name
    assert cases[0][0].frames is frames  # (given, not copied: as the constructor does)
    short = fast_init(SentPacket, "pn", "time_sent", "size", "ack_eliciting", "in_flight",
                      "epoch")
    a, b = short(1, 2.0, 3, True, True, 2), short(1, 2.0, 3, True, True, 2)
    assert a.frames == [] and a.frames is not b.frames  # a default factory's, per object
    if not python_forced():  # (the twin takes only the fields it was made for)
        with pytest.raises(TypeError):
            new_sent_packet(1, 2.0, 3, True, True, 2, [], 1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        new_local_cid(1, b"x")
    with pytest.raises(TypeError, match="first fields"):
        fast_init(LocalCid, "cid")
