"""Type checks of a decoded snapshot tree before a connection is rebuilt from it.

The codec (:mod:`.codec`) only builds allow-listed dataclasses from a document; it does
not know what each field may hold. A document that is well-formed JSON but carries, say,
a string where an int belongs, a list of the wrong length or a stream table keyed by
strings would otherwise be accepted and fail later (AttributeError, TypeError, a wrong
packet on the wire) or never. :func:`check_tree` walks the tree once and checks every
field of every dataclass against its annotation (resolved with ``typing.get_type_hints``,
so a field added to a state class is checked without touching this module), plus the
fixed lengths in :data:`FIXED_LENGTHS`; anything else raises :class:`SnapshotError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from enum import Enum
from typing import Any

from .codec import SnapshotError

#: (class name, field name) -> the exact length the list must have.
FIXED_LENGTHS: dict[tuple[str, str], int] = {
    ("Connection", "spaces"): 3,
    ("Connection", "probes_pending"): 3,
    ("PacketSpace", "ecn_counts"): 3,
    ("PacketSpace", "ecn_peer_counts"): 3,
    ("LossDetection", "spaces"): 3,
}
#: Largest integer accepted anywhere (QUIC values are below 2**62; times are floats).
_MAX_INT = 1 << 64

_hints_cache: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _hints_cache.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _hints_cache[cls] = hints
    return hints


_shape_cache: dict[Any, tuple[Any, tuple[Any, ...]]] = {}


def _shape(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """``(typing.get_origin(hint), typing.get_args(hint))``, computed once per hint (a
    restore checks hundreds of values per connection against a few dozen hints)."""
    try:
        shape = _shape_cache.get(hint)
    except TypeError:  # an unhashable annotation
        return typing.get_origin(hint), typing.get_args(hint)
    if shape is None:
        shape = _shape_cache[hint] = (typing.get_origin(hint), typing.get_args(hint))
    return shape


def check_tree(root: Any, classes: Iterable[type[Any]], skip: dict[type[Any], frozenset[str]]
               ) -> None:
    """Raise :class:`SnapshotError` unless every field of every dataclass in ``root``
    (instances of ``classes``) holds a value of its annotated type. Fields in
    ``skip[cls]`` (runtime objects, not captured) are not checked."""
    allowed = frozenset(classes)
    stack: list[tuple[Any, Any, str]] = [(root, type(root), "snapshot")]
    while stack:
        value, hint, where = stack.pop()
        _check(value, hint, where, allowed, skip, stack)


def _fail(where: str, hint: Any, value: Any) -> SnapshotError:
    name = getattr(hint, "__name__", None) or repr(hint)
    return SnapshotError(f"snapshot field {where}: expected {name}, got "
                         f"{type(value).__name__}")


def _scalar_ok(value: Any, hint: Any) -> bool:
    """A value of a plain scalar hint that is fine as it is (the common case, decided
    without the general walk; False sends it there, which says what is wrong)."""
    t = type(value)
    if t is hint:
        return t is not int or -_MAX_INT < value < _MAX_INT
    return hint is float and t is int


_SCALARS = frozenset({int, float, bool, str, bytes, bytearray, type(None)})


def _check(value: Any, hint: Any, where: str, allowed: frozenset[type[Any]],
           skip: dict[type[Any], frozenset[str]],
           stack: list[tuple[Any, Any, str]]) -> None:
    if hint is Any or hint is object:
        return
    if hint in _SCALARS and _scalar_ok(value, hint):
        return
    origin, args = _shape(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = args
        if value is None and type(None) in options:
            return
        for option in options:
            if option is type(None):
                continue
            try:
                sub: list[tuple[Any, Any, str]] = []
                _check(value, option, where, allowed, skip, sub)
                while sub:  # nested parts of this option must hold too
                    v, h, w = sub.pop()
                    _check(v, h, w, allowed, skip, sub)
                return
            except SnapshotError:
                continue
        raise _fail(where, hint, value)
    if origin is None:
        _check_plain(value, hint, where, allowed, skip, stack)
        return
    if origin is list:
        if type(value) is not list:
            raise _fail(where, hint, value)
        item = args[0] if args else Any
        if item is int:  # (range sets, counts) no call per item
            for i, v in enumerate(value):
                if type(v) is not int or not -_MAX_INT < v < _MAX_INT:
                    _check_plain(v, item, f"{where}[{i}]", allowed, skip, stack)
            return
        if item in _SCALARS:  # no entry per item
            for i, v in enumerate(value):
                if not _scalar_ok(v, item):
                    _check_plain(v, item, f"{where}[{i}]", allowed, skip, stack)
            return
        for i, v in enumerate(value):
            stack.append((v, item, f"{where}[{i}]"))
        return
    if origin is tuple:
        if type(value) is not tuple:
            raise _fail(where, hint, value)
        if len(args) == 2 and args[1] is Ellipsis:
            for i, v in enumerate(value):
                stack.append((v, args[0], f"{where}[{i}]"))
            return
        if len(args) != len(value):
            raise SnapshotError(f"snapshot field {where}: expected {len(args)} items, "
                                f"got {len(value)}")
        for i, (v, h) in enumerate(zip(value, args, strict=True)):
            stack.append((v, h, f"{where}[{i}]"))
        return
    if origin is dict:
        if type(value) is not dict:
            raise _fail(where, hint, value)
        key_hint, value_hint = args if args else (Any, Any)
        for k, v in value.items():
            stack.append((k, key_hint, f"{where} key"))
            stack.append((v, value_hint, f"{where}[{k!r}]"))
        return
    if origin in (set, frozenset):
        if type(value) is not origin:
            raise _fail(where, hint, value)
        for v in value:
            stack.append((v, args[0] if args else Any, f"{where} member"))
        return
    raise SnapshotError(f"snapshot field {where}: unsupported annotation {hint!r}")


def _check_plain(value: Any, hint: Any, where: str, allowed: frozenset[type[Any]],
                 skip: dict[type[Any], frozenset[str]],
                 stack: list[tuple[Any, Any, str]]) -> None:
    t = type(value)
    if hint is bool:
        if t is not bool:
            raise _fail(where, hint, value)
        return
    if hint is int:
        if t is not int or not -_MAX_INT < value < _MAX_INT:
            raise _fail(where, hint, value)
        return
    if hint is float:
        if t is not float and t is not int:  # an int where a float belongs is fine
            raise _fail(where, hint, value)
        return
    if hint is str or hint is bytes or hint is bytearray or hint is type(None):
        if t is not hint:
            raise _fail(where, hint, value)
        return
    if isinstance(hint, type) and issubclass(hint, Enum):
        if t is not hint:
            raise _fail(where, hint, value)
        return
    skipped = skip.get(t, _NONE)
    plan = _plans.get((t, skipped)) if t is hint else None
    if plan is None and isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if t is not hint or t not in allowed:
            raise _fail(where, hint, value)
        plan = _plans[t, skipped] = _plan(t, skipped)
    if plan is not None:
        if t not in allowed:
            raise _fail(where, hint, value)
        for field_name, field_hint, field_where, length in plan:
            field_value = getattr(value, field_name)
            if length and (type(field_value) is not list or len(field_value) != length):
                raise SnapshotError(f"snapshot field {field_where}: expected a list "
                                    f"of {length}")
            if field_hint in _SCALARS and _scalar_ok(field_value, field_hint):
                continue  # (most fields: no stack entry)
            stack.append((field_value, field_hint, field_where))
        return
    if isinstance(hint, type):
        if not isinstance(value, hint):
            raise _fail(where, hint, value)
        return
    raise SnapshotError(f"snapshot field {where}: unsupported annotation {hint!r}")


#: per dataclass and fields skipped: (field, hint, "Class.field", fixed length or 0) for
#: each field checked
_plans: dict[tuple[type[Any], frozenset[str]], tuple[tuple[str, Any, str, int], ...]] = {}
_NONE: frozenset[str] = frozenset()


def _plan(cls: type[Any], skipped: frozenset[str]) -> tuple[tuple[str, Any, str, int], ...]:
    name = cls.__name__
    return tuple((field_name, field_hint, f"{name}.{field_name}",
                  FIXED_LENGTHS.get((name, field_name), 0))
                 for field_name, field_hint in _hints(cls).items()
                 if field_name not in skipped)


# ---------------------------------------------------------------------- consistency


def check_rangeset(starts: list[int], ends: list[int], where: str) -> None:
    """Sorted, disjoint, non-empty ``[start, end)`` ranges, as RangeSet keeps them."""
    if len(starts) != len(ends):
        raise SnapshotError(f"snapshot {where}: starts and ends differ in length")
    prev = None
    for start, end in zip(starts, ends, strict=True):
        if start >= end or (prev is not None and start <= prev):
            raise SnapshotError(f"snapshot {where}: ranges not sorted and disjoint")
        prev = end


def check_recv_stream(recv: Any, where: str) -> None:
    """The buffers of a RecvStream agree with its counters (the receive path relies on
    it: a stored piece it cannot find would raise on a later packet)."""
    ready = recv.ready
    if not 0 <= recv.ready_head <= len(ready) or recv.ready_pos < 0:
        raise SnapshotError(f"snapshot {where}: bad ready position")
    held = sum(len(c) for c in ready[recv.ready_head:]) - recv.ready_pos
    if held != recv.ready_bytes or (recv.ready_pos and recv.ready_head >= len(ready)):
        raise SnapshotError(f"snapshot {where}: ready_bytes does not match the buffers")
    ranges = recv.chunk_ranges
    check_rangeset(ranges.starts, ranges.ends, f"{where}.chunk_ranges")
    chunks = recv.chunks
    contiguous = recv.read_offset + recv.ready_bytes
    if ranges.starts and ranges.starts[0] <= contiguous:
        raise SnapshotError(f"snapshot {where}: out-of-order data below the contiguous end")
    pieces = total = cost = 0
    for start, end in zip(ranges.starts, ranges.ends, strict=True):
        pos = start
        while pos < end:
            piece = chunks.get(pos)
            if not piece or pos + len(piece) > end:
                raise SnapshotError(f"snapshot {where}: pieces do not tile chunk_ranges")
            pos += len(piece)
            pieces += 1
            total += len(piece)
            cost += max(len(piece), 1024)
    if pieces != len(chunks) or total != recv.chunk_bytes or cost != recv.chunk_cost:
        raise SnapshotError(f"snapshot {where}: out-of-order counters do not match")
    if recv.highest_offset < contiguous or recv.highest_offset > recv.max_data:
        raise SnapshotError(f"snapshot {where}: highest_offset out of range")


def check_send_stream(send: Any, where: str) -> None:
    if not 0 <= send.acked_offset <= send.next_offset <= send.write_offset:
        raise SnapshotError(f"snapshot {where}: offsets out of order")
    chunks, ends = send.chunks, send.chunk_ends
    if type(chunks) is not list or type(ends) is not list or len(chunks) != len(ends):
        raise SnapshotError(f"snapshot {where}: chunks and chunk_ends do not match")
    for chunk, end in zip(chunks, ends, strict=True):
        if type(chunk) not in (bytes, bytearray) or not chunk or type(end) is not int:
            raise SnapshotError(f"snapshot {where}: bad send chunk")
    at = ends[0] - len(chunks[0]) if chunks else send.acked_offset
    for chunk, end in zip(chunks, ends, strict=True):
        if end != at + len(chunk):
            raise SnapshotError(f"snapshot {where}: chunk_ends do not match the chunks")
        at = end
    if not 0 <= send.buffer_start < (len(chunks[0]) if chunks else 1):
        raise SnapshotError(f"snapshot {where}: buffer_start outside the buffer")
    if send.reset_code is None and (
        at != send.write_offset
        or (chunks and ends[0] - len(chunks[0]) + send.buffer_start != send.acked_offset)
    ):
        raise SnapshotError(f"snapshot {where}: buffer does not hold the unacknowledged data")
    for name in ("acked", "lost"):
        rs = getattr(send, name)
        check_rangeset(rs.starts, rs.ends, f"{where}.{name}")
    lost = send.lost
    if lost.starts and (lost.starts[0] < send.acked_offset or lost.ends[-1] > send.next_offset):
        raise SnapshotError(f"snapshot {where}: lost ranges outside the sent data")
