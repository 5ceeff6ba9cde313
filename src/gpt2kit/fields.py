"""Typed config fields, checked in one place: every config dataclass calls `check_types(self)` first thing
in its `__post_init__`.

A JSON file or a caller can put any value in any field: `"lr": "3e-3"` (a string), `"seed": "abc"`,
`"n_head": null`, `"n_embd": 64.9`. Checked against the field's annotation, each becomes a one-line
ConfigError that names the field, the value and the type it needs, before a range check compares a string
with a number (a TypeError traceback) or an `int()` silently truncates 64.9 to 64.

    annotation        accepted                                          stored as
    int               an integer (not a bool; 64.0 and "64" are refused) int
    float             an integer or a float, not a bool, NaN or inf     float
    bool              True or False                                     as given
    str               a str                                             as given
    X | None          None, or what X accepts
    tuple[T, ...]     a list or tuple of what T accepts                 tuple
    list[T]           a list or tuple of what T accepts                 list
    anything else     left to the class's own checks
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing

from gpt2kit.errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_types(obj: object, skip: tuple[str, ...] = ()) -> None:
    """Check (and normalise: int -> float, list -> tuple) every annotated field of the dataclass `obj`."""
    cls = type(obj)
    for name, annotation in _field_types(cls).items():
        if name not in skip:
            value = check_value(getattr(obj, name), annotation, f"{cls.__name__}.{name}")
            object.__setattr__(obj, name, value)  # (works on frozen dataclasses too)


def check_value(value: object, annotation: object, where: str) -> object:
    """`value` if it fits `annotation` (see the module docstring), normalised; else ConfigError naming `where`."""
    ok, out = _fit(value, annotation)
    if not ok:
        hint = " (in JSON, write numbers without quotes)" if isinstance(value, str) and _numeric(annotation) else ""
        raise ConfigError(f"{where} must be {_describe(annotation)}, got {_show(value)}{hint}.")
    return out


@functools.cache
def _field_types(cls: type) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


def _fit(value: object, annotation: object) -> tuple[bool, object]:
    if annotation is bool or annotation is str:
        return isinstance(value, annotation), value
    if annotation is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, int(value) if ok else value
    if annotation is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return type(None) in args, value
        for arg in args:
            if arg is not type(None):
                ok, out = _fit(value, arg)
                if ok:
                    return True, out
        return False, value
    if origin in (tuple, list) and (origin is list or (len(args) == 2 and args[1] is Ellipsis)):
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_fit(v, args[0]) for v in value] if args else [(True, v) for v in value]
        return all(ok for ok, _ in items), origin(out for _, out in items)
    return True, value  # not a type this module knows: the class checks it itself


def _numeric(annotation: object) -> bool:
    return annotation in (int, float) or any(a in (int, float) for a in typing.get_args(annotation))


def _describe(annotation: object) -> str:
    if annotation in _NAMES:
        return _NAMES[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(["null" if a is type(None) else _describe(a) for a in args])
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return getattr(annotation, "__name__", str(annotation))


def _show(value: object) -> str:
    if value is None:
        return "null"
    kinds = {str: "a string", float: "a number", int: "an integer", bool: "a boolean", list: "a list", tuple: "a list",
             dict: "an object"}  # fmt: skip
    kind = kinds.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} ({kind})"
