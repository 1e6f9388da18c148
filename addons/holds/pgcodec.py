"""Hold records and grants to JSON and back, generically, from their type hints.

The book's records are dataclasses that other work keeps extending (new plain-data
fields on HoldRecord, HoldSpec, Grant); the PostgreSQL store must not need a change for
each. :func:`encode` walks any dataclass field by field (frozensets and tuples become
lists, bytes ``{"$b64": ...}``); :func:`decode` rebuilds the class from its resolved
type hints, ignores keys the class no longer has and lets missing keys take their
defaults, so a record written before a field existed still loads.

No pickle: the shared database must not be a way to run code in every gateway.
"""

from __future__ import annotations

import base64
import dataclasses
import sys
import types
import typing
from functools import cache
from typing import Any, Union


def encode(value: Any) -> Any:
    """``value`` as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"$b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (frozenset, set)):
        return sorted((encode(v) for v in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    names: dict[str, Any] = {}
    # The book names HoldSpec, RequestPrint, VerdictPrint only under TYPE_CHECKING.
    for name in ("addons.holds.spec", "addons.holds.binding", "addons.holds.book"):
        loaded = sys.modules.get(name) or __import__(name, fromlist=["_"])
        names.update({k: v for k, v in vars(loaded).items() if isinstance(v, type)})
    return typing.get_type_hints(cls, globalns=vars(module) if module else None, localns=names)


def decode(cls: Any, data: Any) -> Any:
    """Rebuild a value of type ``cls`` from :func:`encode`'s output."""
    if data is None:
        return None
    origin = typing.get_origin(cls)
    if origin is Union or origin is types.UnionType:
        options = [a for a in typing.get_args(cls) if a is not type(None)]
        return decode(options[0], data) if len(options) == 1 else data
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        hints = _hints(cls)
        kwargs = {f.name: decode(hints.get(f.name, Any), data[f.name])
                  for f in dataclasses.fields(cls) if f.init and f.name in data}
        return cls(**kwargs)
    if cls is bytes:
        return base64.b64decode(data["$b64"]) if isinstance(data, dict) else bytes(data)
    if origin in (frozenset, set, list):
        (item,) = typing.get_args(cls) or (Any,)
        return origin(decode(item, v) for v in data)
    if origin is tuple:
        args = typing.get_args(cls)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in data)
        if args:
            return tuple(decode(a, v) for a, v in zip(args, data, strict=False))
        return tuple(data)
    if origin is dict:
        key, item = typing.get_args(cls) or (Any, Any)
        return {k: decode(item, v) for k, v in data.items()}
    if cls is float and isinstance(data, int):
        return float(data)
    if cls in (frozenset, tuple, list, set):
        return cls(data)
    return data
