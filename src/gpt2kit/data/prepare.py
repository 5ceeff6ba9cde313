"""Text, JSONL or a Hugging Face dataset -> EOT-prefixed GPT-2 token ids -> train/val shards.

    prepare(["corpora/"], "data/corpora", val_tail=0.01)

Documents: a text file is one document (`docs="file"`), or every blank-line-separated block is one
(`docs="paragraph"`); a JSONL line is one document (its `text` field, or the field you name). Each
document is prefixed with <|endoftext|> (see `shards.py` for why prefix).

Validation split: `val_tail=f` sends the last fraction f of *each* input to val (for a text file, the
last f of its characters, cut at a paragraph or word boundary; for JSONL, the last f of its records),
so every source is represented in val and nothing in val was seen in train. `val_files` sends whole
files to val instead.

Speed: large texts are cut into ~1 MB chunks at boundaries where GPT-2's pre-tokenizer would split
anyway (`safe_cuts`), so chunks encode in parallel worker processes to exactly the ids of the whole
text (tested against tiktoken on every shared corpus).

Bad input (empty, binary, not UTF-8, malformed JSONL) raises DataError naming the file, or with
`on_bad_input="skip"` is skipped with a warning (gpt2kit.errors.warn) and listed in the summary; never lost silently.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gpt2kit.atomic import write_text
from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.data.shards import DTYPE, EOT_PLACEMENT, VERSION, ShardWriter, tokenizer_id
from gpt2kit.errors import ConfigError, DataError, warn
from gpt2kit.textfiles import read_jsonl, read_text

TEXT_SUFFIXES = {".txt", ".text"}  # what a folder contributes; a file named explicitly may have any name
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
CHUNK_CHARS = 1 << 20  # ~1 MB of text per worker task
# Cut points that GPT-2's pre-tokenizer (see gpt2_vocab.GPT2_PATTERN) splits at anyway, so encoding the
# two sides separately gives the same ids: between the two newlines of "X\n\nY", and before the space of
# "X Y" (X, Y non-space). No regex alternative can match across either point.
_PARA_CUT = re.compile(r"\S\n(?=\n\S)")
_WORD_CUT = re.compile(r"\S(?= \S)")


@dataclass
class SplitStats:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0
    shards: list[str] = field(default_factory=list)


@dataclass
class PrepareSummary:
    out_dir: str
    tokenizer: str
    eot_placement: str
    shard_version: int
    train: SplitStats
    val: SplitStats
    inputs: list[str]
    skipped: list[str]
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return (self.train.bytes + self.val.bytes) / 1e6 / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        d = asdict(self)
        total_tokens = self.train.tokens + self.val.tokens
        d["bytes_per_token"] = round((self.train.bytes + self.val.bytes) / max(total_tokens, 1), 4)
        d["mb_per_s"] = round(self.mb_per_s, 2)
        return d

    def report(self) -> str:
        d = self.to_dict()
        lines = [f"prepared {self.out_dir} ({self.tokenizer}, EOT {self.eot_placement}ed to each document)"]
        for name, s in (("train", self.train), ("val", self.val)):
            lines.append(
                f"  {name:<5} {s.documents:>9,} documents {s.tokens:>13,} tokens {s.bytes / 1e6:>9.1f} MB  {len(s.shards)} shard(s)"
            )
        lines.append(f"  {d['bytes_per_token']} bytes/token, {self.seconds:.1f} s, {d['mb_per_s']} MB/s")
        for s in self.skipped:
            lines.append(f"  skipped: {s}")
        return "\n".join(lines)


# Present in an output folder while `prepare` writes it; a folder that still has it was not finished.
INCOMPLETE = ".prepare-incomplete"

def prepare(
    inputs: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    val_tail: float = 0.0,
    val_files: list[str | os.PathLike] = (),
    docs: str = "file",
    text_field: str = "text",
    hf_dataset: str | None = None,
    workers: int | None = None,
    shard_tokens: int = 100_000_000,
    on_bad_input: str = "fail",
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Tokenize `inputs` (+ `val_files`, + a HF dataset) into `out_dir`/{train,val}_NNNNNN.bin + meta.json."""
    if not 0.0 <= val_tail < 1.0:
        raise ConfigError(f"val_tail must be a fraction in [0, 1), e.g. 0.01 for the last 1 % of each file; got {val_tail}.")
    if docs not in ("file", "paragraph"):
        raise ConfigError(f"docs must be 'file' or 'paragraph', got {docs!r}.")
    if on_bad_input not in ("fail", "skip"):
        raise ConfigError(f"on_bad_input must be 'fail' or 'skip', got {on_bad_input!r}.")
    if shard_tokens <= 0:
        raise ConfigError(f"shard_tokens must be positive, got {shard_tokens}.")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
        raise ConfigError(f"workers must be a positive number of processes, or 0/None for one per CPU core; got {workers!r}.")
    t0 = time.perf_counter()
    train_files = _expand(inputs)
    val_only = _expand(val_files)
    if not train_files and not val_only and not hf_dataset:
        raise DataError(f"no input files found in {[str(p) for p in inputs]} (folders are searched for *.txt and *.jsonl).")
    out = Path(out_dir)
    existed = out.exists()
    _check_out_dir(out, overwrite)  # (creates it)
    (out / INCOMPLETE).touch()  # until the run ends well: a killed run's shards look whole, this says they are not
    try:
        summary = _prepare_into(out, train_files, val_only, val_tail, docs, text_field, hf_dataset, workers, shard_tokens,
                             on_bad_input, progress, t0)  # fmt: skip
        (out / INCOMPLETE).unlink()
        return summary
    except BaseException:  # a failed run leaves no empty folder and no shards of its own behind
        if existed:
            for p in [*out.glob("train_*.bin"), *out.glob("val_*.bin"), out / INCOMPLETE]:  # (_check_out_dir left none of an older run)
                p.unlink(missing_ok=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _prepare_into(out: Path, train_files: list[Path], val_only: list[Path], val_tail: float, docs: str, text_field: str,
                  hf_dataset: str | None, workers: int | None, shard_tokens: int, on_bad_input: str, progress: bool,
                  t0: float) -> PrepareSummary:  # fmt: skip
    skipped: list[str] = []
    sources = [(p, "split") for p in train_files] + [(p, "val") for p in val_only]
    total_bytes = sum(p.stat().st_size for p, _ in sources)

    def tasks() -> Iterator[tuple[str, list[str], bool]]:
        for path, role in sources:
            try:
                yield from _file_tasks(path, role, val_tail, docs, text_field)
            except DataError as e:
                if on_bad_input == "fail":
                    raise
                warn(f"skipping {e}")
                skipped.append(str(e))
        if hf_dataset:
            yield from _hf_tasks(hf_dataset, text_field, val_tail)

    writers = {s: ShardWriter(out, s, shard_tokens) for s in ("train", "val")}
    stats = {s: SplitStats() for s in ("train", "val")}
    bar = _Progress(total_bytes, enabled=progress)
    workers = workers or os.cpu_count() or 1
    from gpt2kit.tokenizer import Tokenizer

    Tokenizer()  # load the vocabulary once, before forking, so workers inherit it
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers) as pool:
        for split, ids, n_docs, n_bytes in pool.imap(_encode_task, tasks(), chunksize=1):
            writers[split].add(ids)
            st = stats[split]
            st.documents += n_docs
            st.tokens += ids.size
            st.bytes += n_bytes
            bar.update(n_bytes, stats["train"].tokens + stats["val"].tokens)
    bar.close()
    if stats["train"].tokens == 0:
        raise DataError("all inputs were empty or skipped: no training tokens were written.")
    for s in ("train", "val"):  # no val shard at all without a val split (an empty one would fail later, at train time)
        stats[s].shards = [p.name for p in writers[s].close()] if stats[s].tokens else []
    summary = PrepareSummary(str(out), tokenizer_id(), EOT_PLACEMENT, VERSION, stats["train"], stats["val"],
                             [str(p) for p, _ in sources] + ([f"hf:{hf_dataset}"] if hf_dataset else []),
                             skipped, time.perf_counter() - t0)  # fmt: skip
    meta = summary.to_dict() | {"val_tail": val_tail, "docs": docs}
    write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return summary


# ---- work units ------------------------------------------------------------------------------------
def _encode_task(task: tuple[str, list[str], bool]) -> tuple[str, np.ndarray, int, int]:
    """(split, texts, new_docs) -> (split, ids uint16, documents started, UTF-8 bytes). Runs in a worker.

    new_docs: every text starts a document (gets the EOT prefix); otherwise the single text continues
    the previous task's document."""
    from gpt2kit.tokenizer import Tokenizer

    split, texts, new_docs = task
    tok = Tokenizer()
    parts = []
    for text in texts:
        if new_docs:
            parts.append([GPT2_EOT_ID])
        parts.append(tok.encode_ordinary(text))
    ids = np.concatenate([np.asarray(p, dtype=DTYPE) for p in parts])  # (n_tokens,)
    return split, ids, len(texts) if new_docs else 0, sum(len(t.encode("utf-8")) for t in texts)


def _file_tasks(path: Path, role: str, val_tail: float, docs: str, text_field: str) -> Iterator[tuple[str, list[str], bool]]:
    if path.suffix.lower() in JSONL_SUFFIXES:
        records = _read_jsonl(path, text_field)
        n_val = len(records) if role == "val" else int(len(records) * val_tail)
        cut = len(records) - n_val
        for split, recs in (("train", records[:cut]), ("val", records[cut:])):
            for i in range(0, len(recs), 256):
                yield split, recs[i : i + 256], True
        return
    text = read_text(path, "a UTF-8 text file to tokenize")
    if role == "val":
        parts = [("val", text)]
    else:
        cut = tail_cut(text, val_tail) if val_tail > 0 else len(text)
        parts = [("train", text[:cut]), ("val", text[cut:])]
    for split, part in parts:
        if not part.strip():
            continue
        if docs == "paragraph":
            paras = [p.strip() for p in re.split(r"\n[ \t]*\n", part) if p.strip()]
            batch: list[str] = []
            size = 0
            for p in paras:
                batch.append(p)
                size += len(p)
                if size >= CHUNK_CHARS:
                    yield split, batch, True
                    batch, size = [], 0
            if batch:
                yield split, batch, True
        else:
            for k, chunk in enumerate(chunk_text(part, CHUNK_CHARS)):
                yield split, [chunk], k == 0


def _hf_tasks(name: str, text_field: str, val_tail: float) -> Iterator[tuple[str, list[str], bool]]:
    try:
        import datasets
    except ImportError:
        raise DataError("--hf-dataset needs the `datasets` package: pip install datasets (and network access).") from None
    repo, _, split = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, split=split or "train")
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the message is what matters
        raise DataError(f"could not load Hugging Face dataset {name!r}: {type(e).__name__}: {str(e)[:300]}") from None
    if text_field not in ds.column_names:
        raise DataError(f"dataset {name!r} has no field {text_field!r}; its fields are {ds.column_names}. Use --text-field.")
    n = len(ds)
    cut = n - int(n * val_tail)
    for i in range(0, n, 256):
        j = min(i + 256, n)
        rows = ds[i:j][text_field]
        for split, texts in (("train", rows[: max(0, cut - i)]), ("val", rows[max(0, cut - i) :])):
            texts = [t for t in texts if t]
            if texts:
                yield split, texts, True


# ---- cutting text ----------------------------------------------------------------------------------
def safe_cuts(text: str, start: int) -> int | None:
    """The first position >= start where `text` can be cut without changing its GPT-2 tokens, or None."""
    for pattern in (_PARA_CUT, _WORD_CUT):
        m = pattern.search(text, start, min(len(text), start + (1 << 16)))
        if m:
            return m.start() + (2 if pattern is _PARA_CUT else 1)
    m = _WORD_CUT.search(text, start)
    return m.start() + 1 if m else None


def chunk_text(text: str, size: int) -> list[str]:
    """Cut `text` into pieces of about `size` characters at safe points: their encodings concatenate to
    the encoding of `text`."""
    chunks, pos = [], 0
    while len(text) - pos > size:
        cut = safe_cuts(text, pos + size)
        if cut is None:
            break
        chunks.append(text[pos:cut])
        pos = cut
    chunks.append(text[pos:])
    return chunks


def tail_cut(text: str, fraction: float) -> int:
    """Where the last `fraction` of `text` begins, moved back to the nearest blank line (or word) boundary."""
    target = int(len(text) * (1.0 - fraction))
    para = text.rfind("\n\n", 0, target)
    if para > 0 and target - para < max(1, len(text) // 20):
        return para + 1
    space = text.rfind(" ", 0, target)
    return space if space > 0 else target


# ---- reading and checking inputs -------------------------------------------------------------------
def _expand(inputs) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES | JSONL_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))  # fmt: skip
            if not found:
                raise DataError(f"folder {p} holds no *.txt or *.jsonl files to prepare.")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"input {p} does not exist. Pass text files, folders of them, or .jsonl files.")
    return files


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    """The non-empty `text_field` strings of a JSONL file (one document each)."""
    records = read_jsonl(path, {text_field: str}, "a JSONL file to tokenize", hint="Name the text field with --text-field.")
    texts = [r[text_field] for r in records if r[text_field]]
    if not texts:
        raise DataError(f"{path} has no non-empty {text_field!r} records.")
    return texts


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; pass a folder for the shards (it is created if missing).")
    old = sorted(out.glob("train_*.bin")) + sorted(out.glob("val_*.bin")) if out.is_dir() else []
    if old and not overwrite:
        raise DataError(
            f"{out} already holds shards ({old[0].name}, ...). Pass --overwrite to replace them, or choose another --out."
        )
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)


class _Progress:
    """A one-line progress bar on stderr: MB done / total, MB/s, tokens."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n_bytes: int, tokens: int) -> None:
        self.done += n_bytes
        now = time.perf_counter()
        if self.enabled and now - self.last > 0.5:
            self.last = now
            rate = self.done / 1e6 / (now - self.t0)
            frac = min(1.0, self.done / max(self.total, 1))
            bar = "#" * int(30 * frac)
            print(f"\rprepare [{bar:<30}] {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB  {rate:.1f} MB/s  {tokens:,} tokens",
                  end="", file=sys.stderr, flush=True)  # fmt: skip

    def close(self) -> None:
        if self.enabled and self.last > self.t0:
            print(file=sys.stderr)
