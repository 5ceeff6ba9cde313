"""Reading benchmark files from a path the user gives: JSONL with per-line checks, and raw text.

Nothing here downloads: the loaders read the standard files (`lambada_test.jsonl`, `hellaswag_val.jsonl`,
`wiki.test.raw`, any text file) from disk, and every problem is reported with the file and line number
and what the line should look like.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from gpt2kit.errors import DataError


def _check_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file. Pass the path of {what} (see docs/evaluation.md for where to get it).")
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass the path of {what}.")
    return path


def read_text(path: str | os.PathLike, what: str = "a UTF-8 text file") -> str:
    """The whole file as text; a clear DataError when it is missing, not UTF-8, or empty."""
    path = _check_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte offset {e.start}); convert the file to UTF-8.") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty (or only whitespace); expected {what}.")
    return text


def read_jsonl(
    path: str | os.PathLike,
    fields: Mapping[str, type | tuple[type, ...]],
    what: str,
    limit: int | None = None,
) -> list[dict]:
    """Records of a JSON-lines file, each checked to hold `fields` (name -> allowed type(s)).

    Blank lines are skipped; a line that is not a JSON object, or lacks a field, or has a field of the
    wrong type raises DataError naming the file, the 1-based line number and the expected shape.
    `limit` stops after that many records (the rest of the file is not read).
    """
    path = _check_file(path, what)
    shape = "{" + ", ".join(f'"{k}": {_type_name(t)}' for k, t in fields.items()) + "}"
    records: list[dict] = []
    with open(path, encoding="utf-8") as f:
        lineno = 0
        while True:
            if limit is not None and len(records) >= limit:
                break
            try:
                line = f.readline()
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno + 1}: not valid UTF-8; {what} must be UTF-8 JSON lines.") from None
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); every line of {what} "
                    f"must be one JSON object like {shape}."
                ) from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object like {shape}, got {type(record).__name__}.")
            for name, kind in fields.items():
                if name not in record:
                    raise DataError(f"{path}:{lineno}: missing field {name!r}; each line of {what} must look like {shape}.")
                if not isinstance(record[name], kind) or isinstance(record[name], bool) and bool not in _as_tuple(kind):
                    raise DataError(
                        f"{path}:{lineno}: field {name!r} should be {_type_name(kind)}, got "
                        f"{type(record[name]).__name__} ({str(record[name])[:60]!r})."
                    )
            record["_line"] = lineno
            records.append(record)
    if not records:
        raise DataError(f"{path}: the file is empty; expected {what}, one JSON object a line like {shape}.")
    return records


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", list: "list", float: "number", dict: "object"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))
