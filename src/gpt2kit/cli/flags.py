"""Command-line flags derived from a typed config dataclass: the one way commands declare their options.

`add_config_flags(parser, Config)` adds one flag per field of `Config`, so a new field shows up in `--help`
by itself. The flag is the field's name with '-' for '_'; its help is the field's `metadata["help"]`; its
type comes from the annotation:

    annotation              flag
    bool                    --name / --no-name
    int, float, str         --name VALUE (argparse converts and checks VALUE)
    X | None                as X, default None
    Literal["a", "b"]       --name {a,b}
    tuple[T, ...], list[T]  --name VALUE, repeatable: each use adds one value
    dict[K, V]              --name KEY=VALUE, repeatable (with Flag(type=str); the command parses the texts)

The few flags that differ are declared per field with `Flag` (another name, nargs, choices, a metavar, a
positional, more help). `config_values(args, Config)` collects the fields back from the parsed arguments.
The configs validate the values themselves (`__post_init__`); argparse only converts them.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass

_MISSING = dataclasses.MISSING
_FIELD_DEFAULT = object()  # Flag.default when the field's own default applies


@dataclass(frozen=True)
class Flag:
    """How one field's flag differs from the rule in the module docstring (None: as the rule says)."""

    name: str | None = None  # e.g. "--banned-phrase" for banned_phrases; a name without "--" is a positional
    aliases: tuple[str, ...] = ()  # more option strings, e.g. ("-o",)
    help: str | None = None  # replaces the field's help
    help_suffix: str = ""  # appended to the help
    type: typing.Any = None  # the VALUE converter, for annotations the rule does not cover (dict[int, float])
    metavar: str | None = None
    nargs: str | None = None  # e.g. "+": one flag takes several values (instead of repeating the flag)
    choices: tuple | None = None
    default: typing.Any = _FIELD_DEFAULT  # the default shown and used (instead of the field's)


def add_config_flags(parser, cls: type, *, exclude: tuple[str, ...] = (), flags: dict[str, Flag] | None = None,
                     defaults: dict | None = None, unset: bool = False, default_note: str | None = None) -> None:  # fmt: skip
    """One flag per field of the dataclass `cls` (but `exclude`), onto `parser` (a parser or an argument group).

    `defaults` replaces field defaults (e.g. fine-tuning's). With `unset`, a flag that is not given stays
    out of the parsed arguments (argparse.SUPPRESS), so that a config file, a preset or a resumed run
    supplies the value; the help then names the default itself, or `default_note` (e.g. "the preset's")."""
    flags, defaults = flags or {}, defaults or {}
    unknown = (set(flags) | set(defaults) | set(exclude)) - {f.name for f in dataclasses.fields(cls)}
    assert not unknown, f"{cls.__name__} has no field(s) {sorted(unknown)}"
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in exclude:
            _add_flag(parser, f, hints[f.name], flags.get(f.name, Flag()), defaults, unset, default_note)


def _add_flag(parser, f: dataclasses.Field, annotation, spec: Flag, defaults: dict, unset: bool, note: str | None) -> None:
    help_text = spec.help if spec.help is not None else f.metadata.get("help")
    assert help_text, f"field {f.name} needs metadata={{'help': ...}}: it is the flag's help"
    default = spec.default if spec.default is not _FIELD_DEFAULT else defaults.get(f.name, _field_default(f))
    kind, choices, repeat = _kind(annotation)
    name = spec.name or "--" + f.name.replace("_", "-")
    kw: dict = {"help": help_text + spec.help_suffix}
    if unset:
        kw["help"] += f" (default: {note or repr(default)})"
        default = argparse.SUPPRESS
    if not name.startswith("-"):  # a positional: its name is the field's
        assert name == f.name, f"positional {name} must be named as its field {f.name}"
        parser.add_argument(name, choices=spec.choices or choices, **kw)
        return
    if kind is bool and spec.type is None:
        parser.add_argument(name, *spec.aliases, dest=f.name, action=argparse.BooleanOptionalAction, default=default, **kw)
        return
    converter = spec.type or kind
    assert converter is not None, f"field {f.name}: give Flag(type=...) for the annotation {annotation}"
    if repeat and spec.nargs is None:
        kw["action"] = "append"
        if not unset:  # argparse appends to the default list itself: start from a new empty list, or from None
            default = [] if not default else None  # when the field has values of its own (kept unless the flag is given)
    choices = spec.choices or choices
    metavar = spec.metavar or (None if choices else name.lstrip("-").upper().replace("-", "_"))  # None: {a,b}
    parser.add_argument(name, *spec.aliases, dest=f.name, type=converter, default=default, nargs=spec.nargs,
                        choices=choices, metavar=metavar, **kw)  # fmt: skip


def _field_default(f: dataclasses.Field):
    if f.default is not _MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not _MISSING else None


def _kind(annotation) -> tuple[typing.Any, tuple | None, bool]:
    """(VALUE converter or None, choices or None, repeatable) for a field's annotation."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        return _kind(rest[0]) if len(rest) == 1 else (None, None, False)
    if origin is typing.Literal:
        return type(args[0]), tuple(args), False
    if origin in (list, tuple) and args and (origin is list or args[-1] is Ellipsis):
        kind, choices, _ = _kind(args[0])
        return kind, choices, True
    if annotation in (bool, int, float, str):
        return annotation, None, False
    return None, None, origin is dict  # a dict: repeatable KEY=VALUE texts that the command parses (Flag(type=str))


def config_values(args: argparse.Namespace, cls: type, exclude: tuple[str, ...] = ()) -> dict:
    """The parsed values of `cls`'s fields (those present in `args`: unset flags are absent), for `cls(**...)`."""
    given, hints = vars(args), typing.get_type_hints(cls)
    values = {f.name: given[f.name] for f in dataclasses.fields(cls) if f.name in given and f.name not in exclude}
    return {k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v for k, v in values.items()}
