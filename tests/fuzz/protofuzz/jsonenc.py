"""A JSON writer that can also write what a JSON library refuses to.

The fuzzer needs lines that no well-behaved encoder produces: duplicate keys,
integers past 64 bits, NaN and Infinity literals, lone surrogate escapes,
raw invalid UTF-8 inside strings.  Values are ordinary Python JSON values plus
three markers: L{Raw} (bytes written as they are), L{Obj} (an object as a list
of pairs, so a key may repeat) and L{Str} (a string built of text and raw
escape parts).  Everything plain goes through orjson, so the common case is
as fast as the server's own encoder.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson


@attrs.frozen
class Raw:
    """Bytes written into the line as they are (a literal, a broken escape, anything)."""

    data: bytes


@attrs.define
class Obj:
    """A JSON object as ordered pairs: keys may repeat, values may be markers."""

    pairs: list[tuple[Any, Any]] = attrs.field(factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        """The value a last-wins parser reads for C{key}."""
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return default

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)

    def set(self, key: str, value: Any) -> None:
        """Replace every occurrence of C{key} by one, keeping its place (or append it)."""
        out: list[tuple[Any, Any]] = []
        placed = False
        for k, v in self.pairs:
            if k == key:
                if not placed:
                    out.append((key, value))
                    placed = True
            else:
                out.append((k, v))
        if not placed:
            out.append((key, value))
        self.pairs = out

    def remove(self, key: str) -> None:
        self.pairs = [(k, v) for k, v in self.pairs if k != key]

    def keys(self) -> list[Any]:
        return [k for k, _ in self.pairs]

    def copy(self) -> Obj:
        return Obj([(k, deep_copy(v)) for k, v in self.pairs])


@attrs.frozen
class Str:
    """A string literal made of plain text parts and L{Raw} parts (escapes, raw bytes)."""

    parts: tuple[Any, ...]


def deep_copy(value: Any) -> Any:
    if isinstance(value, Obj):
        return value.copy()
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    return value  # immutable: scalars, Raw, Str


_PLAIN = (str, bool, type(None))


def encode(value: Any) -> bytes:
    """The bytes of C{value} as a JSON text (or as the broken text its markers spell)."""
    if isinstance(value, _PLAIN):
        return orjson.dumps(value)
    if isinstance(value, int):
        return str(value).encode()  # any size: orjson stops at 64 bits
    if isinstance(value, float):
        return orjson.dumps(value)  # finite floats only; NaN/Infinity come as Raw
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, Str):
        out = [b'"']
        for part in value.parts:
            out.append(part.data if isinstance(part, Raw) else orjson.dumps(part)[1:-1])
        out.append(b'"')
        return b"".join(out)
    if isinstance(value, Obj):
        return b"{" + b",".join(encode(k) + b":" + encode(v) for k, v in value.pairs) + b"}"
    if isinstance(value, dict):
        try:
            return orjson.dumps(value)
        except TypeError:
            return encode(Obj(list(value.items())))
    if isinstance(value, list | tuple):
        try:
            return orjson.dumps(value)
        except TypeError:
            return b"[" + b",".join(encode(v) for v in value) + b"]"
    raise TypeError(f"cannot encode {type(value).__name__}")
