"""Reading the text and JSON-lines files a user names: one reader for each kind, one wording for each problem.

Every command that reads a user's file (prepare, fine-tuning data, eval benchmark files, prompts, task
examples) goes through `read_text` or `read_jsonl`, so the same mistake gets the same one-line DataError
wherever it is made. Each message names the file (and the 1-based line, where there is one) and the fix:

    data.txt: no such file; pass the path of <what>.
    data.txt looks binary (it contains NUL bytes); expected <what>.
    data.txt:3: not valid UTF-8 (byte 0xe9 at offset 41); convert it first, e.g. `iconv -f latin1 -t utf-8 ...`.
    data.txt: the file is empty; expected <what>.
    data.jsonl:2: not valid JSON (<why> at column 9); every line of <what> must be one JSON object like {...}.
    data.jsonl:2: missing field 'text' (found ['txt']); each line of <what> must look like {"text": string}.
    data.jsonl:2: field 'text' should be string, got int (42).

Nothing here reads stdin or prints: the CLI reads '-' itself and passes the text on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from gpt2kit.errors import DataError

Kind = type | tuple[type, ...]
_SNIFF = 8192  # bytes looked at for NUL bytes (a text file has none)


def check_file(path: str | os.PathLike, what: str) -> Path:
    """The path, if it names a readable file; else a DataError saying what was expected there."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file; pass the path of {what}.")
    if path.is_dir():
        raise DataError(f"{path} is a directory; pass the path of {what}.")
    return path


def read_text(path: str | os.PathLike, what: str = "a UTF-8 text file") -> str:
    """The whole file as text; a DataError when it is missing, binary, not UTF-8 or empty (only whitespace)."""
    path = check_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror}); pass the path of {what}.") from None
    if b"\0" in data[:_SNIFF]:
        raise DataError(f"{path} looks binary (it contains NUL bytes); expected {what}.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data[: e.start].count(b"\n") + 1, e.start, data[e.start]) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected {what}.")
    return text


def read_jsonl(path: str | os.PathLike, fields: Mapping[str, Kind], what: str, limit: int | None = None,
               hint: str = "") -> list[dict]:  # fmt: skip
    """Records of a JSON-lines file, each checked to hold `fields` (name -> allowed type(s)).

    Blank lines are skipped; a line that is not a JSON object, lacks a field, or has a field of the wrong
    type raises DataError naming the file, the line and the expected shape (`hint`, if given, is added to
    the missing-field message: how to name another field). Each record gets its line number as "_line".
    `limit` stops after that many records (the rest of the file is not read).
    """
    path = check_file(path, what)
    shape = "{" + ", ".join(f'"{k}": {_type_name(t)}' for k, t in fields.items()) + "}"
    records: list[dict] = []
    for lineno, line in _lines(path):
        if limit is not None and len(records) >= limit:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line.rstrip("\r\n"))  # without the line end, so the column is in this line
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); every line of {what} "
                            f"must be one JSON object like {shape}.") from None  # fmt: skip
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object like {shape}, got {type(record).__name__}.")
        for name, kind in fields.items():
            if name not in record:
                raise DataError(f"{path}:{lineno}: missing field {name!r} (found {sorted(record)}); each line of {what} "
                                f"must look like {shape}.{' ' + hint if hint else ''}")  # fmt: skip
            value = record[name]
            if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
                raise DataError(f"{path}:{lineno}: field {name!r} should be {_type_name(kind)}, got "
                                f"{type(value).__name__} ({str(value)[:60]!r}).")  # fmt: skip
        record["_line"] = lineno
        records.append(record)
    if not records:
        raise DataError(f"{path}: the file is empty; expected {what}, one JSON object a line like {shape}.")
    return records


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 file, read lazily; a DataError at the first byte that is not UTF-8."""
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, lineno, offset + e.start, raw[e.start]) from None
            offset += len(raw)


def _not_utf8(path: Path, line: int, offset: int, byte: int) -> DataError:
    return DataError(f"{path}:{line}: not valid UTF-8 (byte {byte:#04x} at offset {offset}); convert it first, "
                     f"e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`.")  # fmt: skip


def _as_tuple(kind: Kind) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_name(kind: Kind) -> str:
    names = {str: "string", int: "integer", list: "list", float: "number", dict: "object"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))
