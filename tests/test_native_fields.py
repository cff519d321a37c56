"""The native engine's field access (``crypto/_native_src/fields.c``) against Python's.

The C twins (bulk.c, ack.c, pacer.c) read and write the transport's slotted dataclasses
at slot offsets cached per (type, name); for anything but a plain slot of an object whose
type keeps the generic attribute access they go by name. Both ways must give what
``getattr`` / ``setattr`` give -- the same object or the same exception -- for the
transport's own classes, subclasses, unset slots, frozen dataclasses, properties,
``__getattr__`` and a class changed after its fields were cached; and a write must hold
exactly one reference to the new value and release the old one.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import weakref
from typing import Any

import pytest

from quicflow.crypto.extension import EXT
from quicflow.transport.congestion import CongestionControl, Pacer
from quicflow.transport.connection import Connection, ConnectionCounters
from quicflow.transport.recovery import LossDetection, SentPacket, SpaceState
from quicflow.transport.rtt import RttEstimator
from quicflow.transport.state import FlowControl
from quicflow.transport.streams import SendStream


@pytest.fixture(autouse=True)
def _native(require: Any) -> None:
    require(EXT is not None, "the native extension is not built")


@dataclasses.dataclass(slots=True, eq=False)
class Plain:
    a: Any = None
    b: Any = None


class Sub(Plain):  # (an instance dict beside the inherited slots)
    pass


class SubSlots(Plain):
    __slots__ = ("c",)


class SubProperty(Plain):
    @property  # type: ignore[override]
    def a(self) -> Any:
        return ("property", self.b)

    @a.setter
    def a(self, v: Any) -> None:
        self.b = ("set", v)


class SubGetattr(Plain):
    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        return ("missing", name)


class SubSetattr(Plain):
    __slots__ = ()

    def __setattr__(self, name: str, v: Any) -> None:
        object.__setattr__(self, name, ("wrapped", v))


@dataclasses.dataclass(slots=True, frozen=True)
class Frozen:
    a: Any = None


@dataclasses.dataclass(eq=False)
class NoSlots:
    a: Any = None


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", fn(*args)
    except Exception as exc:  # noqa: BLE001 (the exception is what is compared)
        return "raised", (type(exc), str(exc))


def _same(x: tuple[str, Any], y: tuple[str, Any]) -> None:
    assert x[0] == y[0], (x, y)
    if x[0] == "value":
        assert x[1] is y[1] or x[1] == y[1], (x, y)
    else:
        assert x[1] == y[1]


def _objects() -> list[Any]:
    out: list[Any] = []
    for cls in (Plain, Sub, SubSlots, SubProperty, SubGetattr, SubSetattr):
        out.append(cls(a=object(), b=object()))
    unset = Plain()
    del unset.a  # a NULL slot
    out.append(unset)
    out.append(Frozen(a=object()))
    out.append(NoSlots(a=object()))
    return out


@pytest.mark.parametrize("obj", _objects(), ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("name", ["a", "b", "c", "missing"])
def test_field_reads_and_writes_match_getattr_and_setattr(obj: Any, name: str) -> None:
    for _ in range(3):  # (the first access gives the type its version tag, then cached)
        _same(_outcome(EXT.field_get, obj, name), _outcome(getattr, obj, name))
    twin = type(obj).__new__(type(obj))
    for field in ("a", "b"):
        try:
            object.__setattr__(twin, field, getattr(obj, field))
        except AttributeError:
            pass
    for round_ in range(3):
        value = ("value", round_)
        got = _outcome(EXT.field_set, obj, name, value)
        want = _outcome(setattr, twin, name, value)
        assert got[0] == want[0] and (got[0] == "value" or got[1] == want[1]), (got, want)
        _same(_outcome(getattr, obj, name), _outcome(getattr, twin, name))


def test_plain_slots_take_the_cached_offset_and_the_rest_do_not() -> None:
    obj, sub, unset = Plain(a=1), Sub(a=1), Plain()
    del unset.a
    for o in (obj, sub, unset):
        o.b  # noqa: B018 (a named read: the type gets its version tag)
    assert EXT.field_slot(obj, "a", False) is not None
    assert EXT.field_slot(obj, "a", True) == EXT.field_slot(obj, "a", False)
    assert EXT.field_slot(sub, "a", False) == EXT.field_slot(obj, "a", False)
    with pytest.raises(AttributeError) as raised:
        EXT.field_get(unset, "a")  # (the unset slot: the named read's exception)
    with pytest.raises(AttributeError) as direct:
        unset.a  # noqa: B018
    assert str(raised.value) == str(direct.value)
    for o, name, write in ((SubProperty(), "a", False), (SubProperty(), "a", True),
                           (SubGetattr(), "a", False), (SubSetattr(), "a", True),
                           (Frozen(), "a", True), (NoSlots(), "a", False),
                           (obj, "missing", False)):
        getattr(o, name, None)
        assert EXT.field_slot(o, name, write) is None, (type(o).__name__, name, write)
    frozen = Frozen(a=1)
    frozen.a  # noqa: B018
    assert EXT.field_slot(frozen, "a", False) is not None  # (reads of a frozen one: slots)
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXT.field_set(frozen, "a", 2)
    assert frozen.a == 1


def test_a_class_changed_after_caching_is_read_and_written_by_name() -> None:
    @dataclasses.dataclass(slots=True, eq=False)
    class Changing:
        a: Any = None

    obj = Changing(a="slot")
    EXT.field_get(obj, "a")
    EXT.field_get(obj, "a")
    assert EXT.field_slot(obj, "a", False) is not None
    slot = Changing.__dict__["a"]
    Changing.a = property(lambda self: ("property", slot.__get__(self)))  # type: ignore
    assert EXT.field_get(obj, "a") == ("property", "slot")
    assert EXT.field_slot(obj, "a", False) is None
    with pytest.raises(AttributeError):
        EXT.field_set(obj, "a", 1)  # (a property without a setter)
    Changing.a = slot  # type: ignore[method-assign]
    EXT.field_get(obj, "a")
    assert EXT.field_slot(obj, "a", True) is not None
    seen: list[Any] = []

    def logged(self: Any, name: str, v: Any) -> None:
        seen.append((name, v))
        object.__setattr__(self, name, v)

    Changing.__setattr__ = logged  # type: ignore[assignment]
    EXT.field_set(obj, "a", 5)
    assert seen == [("a", 5)] and obj.a == 5


class _Value:
    pass


def test_writes_and_reads_hold_the_right_references() -> None:
    obj = Plain(a=_Value(), b=0)
    EXT.field_get(obj, "a")
    assert EXT.field_slot(obj, "a", True) is not None
    first = obj.a
    first_ref = weakref.ref(first)
    base = sys.getrefcount(first)
    got = EXT.field_get(obj, "a")
    assert got is first and sys.getrefcount(first) == base + 1
    del got
    assert sys.getrefcount(first) == base
    new = _Value()
    new_base = sys.getrefcount(new)
    EXT.field_set(obj, "a", new)
    assert sys.getrefcount(new) == new_base + 1  # (the slot's one reference)
    assert sys.getrefcount(first) == base - 1
    del first
    gc.collect()
    assert first_ref() is None  # (the old value released)
    EXT.field_set(obj, "a", new)  # (the same value again: still one reference)
    assert sys.getrefcount(new) == new_base + 1
    unset = Plain()
    del unset.a
    EXT.field_set(unset, "a", new)  # (into a NULL slot)
    assert sys.getrefcount(new) == new_base + 2 and unset.a is new
    del obj, unset
    assert sys.getrefcount(new) == new_base
    # many reads and writes of fresh values: nothing kept
    obj = Plain(a=0)
    refs = []
    for _ in range(2000):
        v = _Value()
        refs.append(weakref.ref(v))
        EXT.field_set(obj, "a", v)
        assert EXT.field_get(obj, "a") is v
        del v
    gc.collect()
    assert sum(r() is not None for r in refs) == 1  # (the last one, in the slot)


@pytest.mark.parametrize("cls", [Pacer, CongestionControl, LossDetection, SpaceState,
                                 SentPacket, RttEstimator, FlowControl, SendStream,
                                 Connection, ConnectionCounters])
def test_the_twins_classes_take_the_cached_offsets(cls: type) -> None:
    """The transport's classes the twins read are plain slotted ones (else the twins would
    still be right, by name, but slower)."""
    obj = cls.__new__(cls)
    for field in dataclasses.fields(cls):
        getattr(obj, field.name, None)
        assert EXT.field_slot(obj, field.name, False) is not None, field.name
        assert EXT.field_slot(obj, field.name, True) is not None, field.name
