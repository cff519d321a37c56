"""A versioned, self-describing codec for trees of plain-data dataclasses.

The document is JSON, compressed with zlib, behind a magic prefix; byte strings of
``OUT_OF_BAND`` bytes or more (a stream's buffered data) follow the compressed document
as they are, uncompressed, and the document names them by index (zlib and base64 in a
JSON string cost ~40 ms per MB of buffered data, which a handoff of a busy connection
waits for; buffered stream data rarely compresses). Nothing in a blob can
name code to run: dataclasses and enums are restored only from an explicit allow-list of
classes (looked up by their ``__name__`` in a registry built from Python objects, never
imported by name), instances are built without calling ``__init__``, and every tagged
value is checked. JSON objects are always tags, so the tree maps back without ambiguity:

======================  ==========================================
Python value            JSON
======================  ==========================================
None, bool, int, str    themselves
float                   itself; ``{"$f": "inf" | "-inf" | "nan"}``
bytes / bytearray       ``{"$b": base64}`` / ``{"$ba": base64}``; of ``OUT_OF_BAND``
                        bytes or more ``{"$b": index}`` / ``{"$ba": index}``: the
                        index-th of the raw byte strings after the document, whose
                        lengths the document's ``blobs`` array gives
list                    array
tuple                   ``{"$t": [...]}``
set / frozenset         ``{"$s": [...]}`` / ``{"$fs": [...]}``
dict (any keys)         ``{"$d": [[key, value], ...]}``
registered Enum         ``{"$e": "ClassName", "v": value}``
registered dataclass    ``{"$c": "ClassName", "f": {name: value}}``
======================  ==========================================

Each out-of-band string is used once; the lengths must cover exactly the bytes after the
compressed document. Fields listed in ``exclude`` are not written; on decode they (and
fields that a blob of an older layout lacks) take the field's default. A field the
class no longer has is an error: the blob was written by a different layout.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import zlib
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any

MAGIC = b"QFSNAP\x00"
#: Byte strings at least this long go after the document, uncompressed.
OUT_OF_BAND = 1024
#: Largest decompressed document accepted (a guard against zlib bombs).
DEFAULT_MAX_SIZE = 1 << 30
#: Deepest nesting of values accepted on decode.
MAX_DEPTH = 64

_FLOAT_NAMES = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
#: JSON values that decode to themselves
_PLAIN = frozenset({int, str, bool, float})


class SnapshotError(Exception):
    """A snapshot cannot be taken, or a blob is malformed, of another format/version,
    names an unknown class, or fails authentication."""


class Codec:
    """Encodes and decodes one document format (``format``/``version`` in its header)."""

    def __init__(
        self,
        *,
        format_name: str,
        version: int,
        classes: Iterable[type[Any]],
        enums: Iterable[type[Enum]] = (),
        exclude: Mapping[type[Any], Iterable[str]] | None = None,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.format_name = format_name
        self.version = version
        self.max_size = max_size
        self._classes: dict[str, type[Any]] = {}
        self._fields: dict[type[Any], tuple[dataclasses.Field[Any], ...]] = {}
        self._names: dict[type[Any], frozenset[str]] = {}
        for cls in classes:
            if not dataclasses.is_dataclass(cls):
                raise TypeError(f"{cls!r} is not a dataclass")
            self._register(self._classes, cls)
            self._fields[cls] = dataclasses.fields(cls)
            self._names[cls] = frozenset(f.name for f in self._fields[cls])
        self._enums: dict[str, type[Enum]] = {}
        for enum_cls in enums:
            self._register(self._enums, enum_cls)
        self._exclude: dict[type[Any], frozenset[str]] = {}
        for cls, names in (exclude or {}).items():
            known = {f.name for f in self._fields.get(cls, ())}
            unknown = set(names) - known
            if unknown:
                raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
            self._exclude[cls] = frozenset(names)
        #: the fields written, per class (those not excluded, in declaration order)
        self._written: dict[type[Any], tuple[str, ...]] = {
            cls: tuple(f.name for f in fields if f.name not in self._exclude.get(cls, ()))
            for cls, fields in self._fields.items()
        }

    @staticmethod
    def _register(table: dict[str, Any], cls: type[Any]) -> None:
        name = cls.__name__
        if name in table and table[name] is not cls:
            raise TypeError(f"two registered classes are named {name!r}")
        table[name] = cls

    # ------------------------------------------------------------------ encode

    def encode(self, header: Mapping[str, Any], body: Any) -> bytes:
        """``header`` holds plain JSON values; ``body`` any tree of supported values."""
        doc: dict[str, Any] = {"format": self.format_name, "version": self.version}
        for key, value in header.items():
            if key in ("format", "version", "body", "blobs"):
                raise ValueError(f"header key {key!r} is reserved")
            doc[key] = value
        blobs: list[bytes | bytearray] = []
        doc["body"] = self.to_json(body, blobs)
        if blobs:
            doc["blobs"] = [len(b) for b in blobs]
        try:
            text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
        except ValueError as exc:
            raise SnapshotError(f"header value not encodable: {exc}") from None
        # level 1: what is left in the document is small; speed matters in a handoff
        return b"".join((MAGIC, zlib.compress(text.encode("utf-8"), 1), *blobs))

    def to_json(self, value: Any, blobs: list[bytes | bytearray] | None = None) -> Any:
        """``value`` as JSON values; with ``blobs``, byte strings of ``OUT_OF_BAND``
        bytes or more are appended to it and named by index."""
        t = type(value)
        if value is None or t is bool or t is int or t is str:
            return value
        if t is float:
            if math.isfinite(value):
                return value
            return {"$f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if t is bytes or t is bytearray:
            tag = "$b" if t is bytes else "$ba"
            if blobs is not None and len(value) >= OUT_OF_BAND:
                blobs.append(value)
                return {tag: len(blobs) - 1}
            return {tag: base64.b64encode(value).decode("ascii")}
        if t is list:
            return [self.to_json(v, blobs) for v in value]
        if t is tuple:
            return {"$t": [self.to_json(v, blobs) for v in value]}
        if t is dict:
            return {"$d": [[self.to_json(k, blobs), self.to_json(v, blobs)]
                           for k, v in value.items()]}
        if t is set or t is frozenset:
            items = [self.to_json(v, blobs) for v in value]
            return {"$s" if t is set else "$fs": items}
        if isinstance(value, Enum):
            if self._enums.get(t.__name__) is not t:
                raise SnapshotError(f"enum class {t.__qualname__} is not registered")
            return {"$e": t.__name__, "v": self.to_json(value.value, blobs)}
        names = self._written.get(t)
        if names is not None:
            out: dict[str, Any] = {}
            for name in names:
                v = getattr(value, name)
                tv = type(v)
                # (ints, strings, booleans and None as they are: most fields, no call)
                out[name] = (v if v is None or tv is int or tv is str or tv is bool
                             else self.to_json(v, blobs))
            return {"$c": t.__name__, "f": out}
        raise SnapshotError(f"cannot encode a value of type {t.__qualname__}")

    # ------------------------------------------------------------------ decode

    def decode(self, blob: bytes | bytearray | memoryview) -> tuple[dict[str, Any], Any]:
        """Returns ``(header, body)``; raises :class:`SnapshotError` for anything wrong."""
        data = bytes(blob)
        if not data.startswith(MAGIC):
            raise SnapshotError("not a quicflow snapshot (bad magic)")
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(data[len(MAGIC):], self.max_size + 1)
        except zlib.error as exc:
            raise SnapshotError(f"corrupt snapshot: {exc}") from None
        if len(text) > self.max_size or inflater.unconsumed_tail:
            raise SnapshotError(f"snapshot larger than {self.max_size} bytes")
        if not inflater.eof:
            raise SnapshotError("corrupt snapshot: truncated")
        tail = inflater.unused_data  # the out-of-band byte strings
        if len(tail) > self.max_size:
            raise SnapshotError(f"snapshot larger than {self.max_size} bytes")
        try:
            doc = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise SnapshotError(f"corrupt snapshot document: {exc}") from None
        if not isinstance(doc, dict):
            raise SnapshotError("corrupt snapshot document: not an object")
        if doc.get("format") != self.format_name:
            raise SnapshotError(
                f"not a {self.format_name} document (format {doc.get('format')!r})"
            )
        version = doc.get("version")
        if version != self.version:
            raise SnapshotError(
                f"unsupported {self.format_name} version {version!r} "
                f"(this build reads version {self.version})"
            )
        if "body" not in doc:
            raise SnapshotError("snapshot has no body")
        blobs = _OutOfBand(doc.pop("blobs", []), tail)
        body = self.from_json(doc.pop("body"), 0, blobs)
        blobs.check_all_taken()
        return doc, body

    def from_json(self, value: Any, depth: int = 0, blobs: _OutOfBand | None = None) -> Any:
        if depth > MAX_DEPTH:
            raise SnapshotError("snapshot nested too deeply")
        t = type(value)
        if value is None or t is bool or t is int or t is str or t is float:
            return value
        d = depth + 1
        if t is list:  # (mostly ints: range sets, counts; taken as they are)
            return [v if v is None or type(v) in _PLAIN else self.from_json(v, d, blobs)
                    for v in value]
        if t is not dict:
            raise SnapshotError(f"unexpected JSON value of type {t.__name__}")
        if "$c" in value:
            return self._decode_dataclass(value, d, blobs)
        if len(value) == 1:
            ((tag, inner),) = value.items()
            if tag in ("$b", "$ba"):
                if type(inner) is int:
                    if blobs is None:
                        raise SnapshotError("out-of-band bytes outside a snapshot")
                    raw = blobs.take(inner)
                else:
                    raw = _b64(inner)
                return raw if tag == "$b" else bytearray(raw)
            if tag == "$f":
                if inner not in _FLOAT_NAMES:
                    raise SnapshotError(f"bad float tag {inner!r}")
                return _FLOAT_NAMES[inner]
            if tag in ("$t", "$s", "$fs", "$d") and type(inner) is not list:
                raise SnapshotError(f"{tag} needs an array")
            if tag == "$t":
                return tuple(self.from_json(v, d, blobs) for v in inner)
            if tag == "$s" or tag == "$fs":
                items = [self.from_json(v, d, blobs) for v in inner]
                try:
                    return set(items) if tag == "$s" else frozenset(items)
                except TypeError:
                    raise SnapshotError("unhashable set member") from None
            if tag == "$d":
                out: dict[Any, Any] = {}
                for pair in inner:
                    if type(pair) is not list or len(pair) != 2:
                        raise SnapshotError("$d needs [key, value] pairs")
                    key = self.from_json(pair[0], d, blobs)
                    try:
                        out[key] = self.from_json(pair[1], d, blobs)
                    except TypeError:
                        raise SnapshotError("unhashable dict key") from None
                return out
        if "$e" in value and set(value) == {"$e", "v"}:
            name = value["$e"]
            enum_cls = self._enums.get(name) if type(name) is str else None
            if enum_cls is None:
                raise SnapshotError(f"unknown enum class {name!r} in snapshot")
            try:
                return enum_cls(self.from_json(value["v"], d, blobs))
            except ValueError:
                raise SnapshotError(f"bad value {value['v']!r} for {name}") from None
        raise SnapshotError(f"unknown tag in snapshot: {sorted(value)!r}")

    def _decode_dataclass(self, value: dict[str, Any], depth: int,
                          blobs: _OutOfBand | None) -> Any:
        name = value["$c"]
        cls = self._classes.get(name) if type(name) is str else None
        if cls is None:
            raise SnapshotError(f"unknown class {name!r} in snapshot (not in the allow-list)")
        values = value.get("f")
        if set(value) != {"$c", "f"} or type(values) is not dict:
            raise SnapshotError(f"malformed {name} record")
        extra = values.keys() - self._names[cls]
        if extra:
            raise SnapshotError(f"{name} has no field(s) {sorted(extra)} (other layout?)")
        obj = object.__new__(cls)
        setattr_ = object.__setattr__
        for f in self._fields[cls]:
            field_name = f.name
            if field_name in values:
                field_value = values[field_name]
                if field_value is not None and type(field_value) not in _PLAIN:
                    field_value = self.from_json(field_value, depth, blobs)
            elif f.default is not dataclasses.MISSING:
                field_value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                field_value = f.default_factory()
            else:
                raise SnapshotError(f"{name} record lacks required field {field_name!r}")
            setattr_(obj, field_name, field_value)
        return obj


def document(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON document of ``blob`` and the raw bytes after it, unchecked (for tools
    and tests that look into or rewrite a document; ``assemble`` puts them back)."""
    inflater = zlib.decompressobj()
    text = inflater.decompress(bytes(blob)[len(MAGIC):])
    doc: dict[str, Any] = json.loads(text)
    return doc, inflater.unused_data


def assemble(doc: Mapping[str, Any], tail: bytes = b"") -> bytes:
    """A blob of ``doc`` and the raw bytes ``tail`` (the inverse of ``document``)."""
    return MAGIC + zlib.compress(json.dumps(doc).encode()) + tail


class _OutOfBand:
    """The raw byte strings after a document, each taken at most once."""

    __slots__ = ("_spans", "_data")

    def __init__(self, lengths: Any, tail: bytes) -> None:
        if type(lengths) is not list or any(
            type(n) is not int or n < 0 for n in lengths
        ):
            raise SnapshotError("malformed out-of-band lengths")
        if sum(lengths) != len(tail):
            raise SnapshotError("out-of-band bytes do not match their lengths")
        spans: list[tuple[int, int] | None] = []
        at = 0
        for n in lengths:
            spans.append((at, at + n))
            at += n
        self._spans = spans
        self._data = memoryview(tail)

    def take(self, index: int) -> bytes:
        if not 0 <= index < len(self._spans):
            raise SnapshotError(f"no out-of-band bytes #{index}")
        span = self._spans[index]
        if span is None:
            raise SnapshotError(f"out-of-band bytes #{index} used twice")
        self._spans[index] = None
        return bytes(self._data[span[0] : span[1]])

    def check_all_taken(self) -> None:
        if any(span is not None for span in self._spans):
            raise SnapshotError("out-of-band bytes that nothing names")


def _b64(text: Any) -> bytes:
    if type(text) is not str:
        raise SnapshotError("base64 value must be a string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SnapshotError("bad base64 in snapshot") from None


def _reject_constant(name: str) -> Any:
    raise SnapshotError(f"non-standard JSON constant {name} in snapshot")
