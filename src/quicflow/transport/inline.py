"""Constructors with the nested objects' set-up written inline, for state made per connection.

A new connection makes dozens of small slotted dataclass objects (packet number spaces,
their CRYPTO streams, the range sets inside those), each through its own ``__init__``:
one Python call per object, about 40 % of the cost of making them. :func:`inline_init`
writes, once per process, one function that builds such an object *and* the dataclass
objects its fields' default factories would make, with ``object.__new__`` and slot stores
only. The result is the same plain data the constructors give (tests/test_inline_init.py
compares them field by field), so snapshots and everything else see no difference.

Only dataclasses without ``__post_init__`` are inlined (a class with one is called as
usual, and an :class:`Inline` of one is refused unless made with
:meth:`Inline.post_init_done`, whose values must give what ``__post_init__`` would
check and set); a field's default factory that is not a dataclass is called as usual.

With the native engine the made function is its C twin: the writer describes the same
objects as a plan, which ``_native.object_plan`` (crypto/_native_src/plan.c) compiles
into one C call (tests/test_inline_plan.py compares the two field by field).
:func:`fast_init` gives the same for the plain constructor calls of a hot path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
#: a plan node (see crypto/_native_src/plan.c): ("c", value), ("a", index), ("d",),
#: ("f", factory), ("l", (node, ...)) or ("o", cls, ((name, node), ...))
Node = tuple[Any, ...]


class Inline:
    """A field's value made inline: ``cls`` with some fields given (``max_data=...``);
    a value may itself be an :class:`Inline`."""

    __slots__ = ("cls", "values", "skip_post_init")

    def __init__(self, cls: type, **values: Any) -> None:
        self.cls = cls
        self.values = values
        self.skip_post_init = False

    @classmethod
    def post_init_done(cls, target: type, **values: Any) -> Inline:
        """An Inline of a class with a ``__post_init__``, which is not run: ``values``
        give the fields it would set, and the caller does its checks."""
        made = cls(target, **values)
        made.skip_post_init = True
        return made


class Arg:
    """A field's value (at any depth) given as the made function's keyword-only argument
    ``name``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _inlinable(factory: Any) -> bool:
    return (isinstance(factory, type) and dataclasses.is_dataclass(factory)
            and not hasattr(factory, "__post_init__"))


class _Writer:
    """Writes the made function's source and, for the native twin (:func:`_native_make`),
    the same graph as a plan (``_native.object_plan``'s nodes)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ns: dict[str, Any] = {"_new": object.__new__}
        self.count = 0
        self.params: list[str] = []

    def const(self, value: Any) -> tuple[str, Node]:
        if value is None or value is True or value is False or type(value) in (int, float):
            return repr(value), ("c", value)
        self.count += 1
        name = f"_c{self.count}"
        self.ns[name] = value
        return name, ("c", value)

    def inline(self, spec: Inline) -> tuple[str, Node]:
        if hasattr(spec.cls, "__post_init__") and not spec.skip_post_init:
            raise TypeError(f"{spec.cls.__name__} has a __post_init__: see Inline.post_init_done")
        return self.build(spec.cls, spec.values)

    def build(self, cls: type, values: dict[str, Any]) -> tuple[str, Node]:
        """Lines that make a ``cls`` (fields from ``values``, else their defaults) into
        a new local variable, whose name is returned with the plan node of the object."""
        self.count += 1
        var = f"o{self.count}"
        self.lines.append(f"    {var} = _new({self.const(cls)[0]})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {sorted(unknown)}")
        fields: list[tuple[str, Node]] = []
        for f in dataclasses.fields(cls):
            node: Node
            if f.name in values:
                value = values[f.name]
                if isinstance(value, Inline):
                    expr, node = self.inline(value)
                elif isinstance(value, Arg):
                    if value.name in self.params:
                        raise TypeError(f"argument {value.name!r} given twice")
                    node = ("a", len(self.params))
                    self.params.append(value.name)
                    expr = value.name
                elif type(value) is list:  # a fresh list (of these constants) per call
                    items = [self.inline(v) if isinstance(v, Inline) else self.const(v)
                             for v in value]
                    expr = "[" + ", ".join(e for e, _ in items) + "]"
                    node = ("l", tuple(n for _, n in items))
                else:
                    expr, node = self.const(value)
            elif f.default_factory is not dataclasses.MISSING:
                factory = f.default_factory
                if factory is list:
                    expr, node = "[]", ("l", ())
                elif factory is dict:
                    expr, node = "{}", ("d",)
                elif _inlinable(factory):
                    expr, node = self.build(factory, {})  # type: ignore[arg-type]
                else:
                    expr, node = f"{self.const(factory)[0]}()", ("f", factory)
            elif f.default is not dataclasses.MISSING:
                expr, node = self.const(f.default)
            else:
                raise TypeError(f"{cls.__name__}.{f.name} has no default: give it")
            self.lines.append(f"    {var}.{f.name} = {expr}")
            fields.append((f.name, node))
        return var, ("o", cls, tuple(fields))


def inline_init(cls: type[T], **values: Any) -> Callable[..., T]:
    """A function that returns a new ``cls`` like ``cls(**values)``
    with every nested dataclass default made inline (see the module's docstring).
    Mutable defaults (``[]``, ``{}``, objects) are fresh per call, and so is a list
    given in ``values`` (a copy); other values given are shared: give only immutable
    ones, an :class:`Inline` or a list of them; an :class:`Arg` value becomes an
    argument of the function. With the native engine the function is its C twin
    (:func:`_native_make`)."""
    make, plan, params = _python_make(cls, values)
    native = _native_make(plan, params)
    return make if native is None else native


def _python_make(cls: type[T], values: dict[str, Any]
                 ) -> tuple[Callable[..., T], Node, tuple[str, ...]]:
    """The made function in Python (the reference), its plan and its argument names."""
    writer = _Writer()
    var, plan = writer.build(cls, values)
    params = "*, " + ", ".join(writer.params) if writer.params else ""
    source = f"def make({params}):\n" + "\n".join(writer.lines) + f"\n    return {var}\n"
    exec(compile(source, f"<inline_init {cls.__name__}>", "exec"), writer.ns)
    make: Callable[..., T] = writer.ns["make"]
    return make, plan, tuple(writer.params)


def fast_init(cls: Callable[..., T], *names: str) -> Callable[..., T]:
    """``cls`` itself (a slotted dataclass), or with the native engine its C twin for the
    calls a hot path makes: exactly the fields ``names``, in their order, by position
    or by name; every other field at its default (a default factory's value fresh per
    object, as the constructor makes it). Not for classes with a ``__post_init__``."""
    assert isinstance(cls, type)
    fields = [f.name for f in dataclasses.fields(cls)]
    if list(names) != fields[:len(names)]:
        raise TypeError(f"fast_init: {names} are not {cls.__name__}'s first fields")
    _, plan, params = _python_make(cls, {name: Arg(name) for name in names})
    native = _native_make(plan, params, len(names))
    return cls if native is None else native


def _native_make(plan: Node, params: tuple[str, ...], positional: int = 0
                 ) -> Callable[..., Any] | None:
    """The made function as one C call (``_native.object_plan``: the same objects, see
    crypto/_native_src/plan.c), or None without the native engine (or with
    QUICFLOW_ENGINE=python) or for a class whose slots C cannot set as Python does."""
    from ..crypto.extension import EXT, python_forced

    if EXT is None or python_forced():
        return None
    try:
        made: Callable[..., Any] = EXT.object_plan(plan, params, positional)
    except TypeError:
        return None
    return made
