"""`gpt2kit eval TASK`: one typed config, one call: load the model, run the task, print and save results."""

from __future__ import annotations

import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpt2kit.atomic import check_writable
from gpt2kit.errors import ConfigError, DataError
from gpt2kit.eval.results import EvalResult, format_table, write_json
from gpt2kit.fields import check_types

Task = Literal["perplexity", "lambada", "hellaswag", "wikitext"]
TASKS: tuple[str, ...] = typing.get_args(Task)
Protocol = Literal["lm-eval", "paper-last-token"]  # LAMBADA's two protocols (docs/evaluation.md)


@dataclass
class EvalConfig:
    """What `gpt2kit eval` runs. Its fields are the flags of `gpt2kit eval` (cli/flags.py), their help the flags' help."""

    task: Task = field(metadata={"help": "what to evaluate"})
    model: str = field(
        default="gpt2",
        metadata={"help": "preset, hub id or local folder (used when run_eval loads it, and as the results label)"},
    )
    data: list[str] = field(default_factory=list, metadata={"help": "data file(s); a folder = its *.txt files (perplexity)"})
    limit: int | None = field(default=None, metadata={"help": "first N examples (tokens for perplexity, articles for wikitext)"})
    batch_size: int = field(default=8, metadata={"help": "windows / requests per forward pass"})
    stride: int | None = field(
        default=None,
        metadata={"help": "sliding-window stride (default: n_positions, no overlap; 512 = transformers guide)"},
    )
    bos: bool = field(default=True, metadata={"help": "perplexity: prefix <|endoftext|>, so the first token is scored too"})
    protocols: tuple[Protocol, ...] = field(
        default=typing.get_args(Protocol), metadata={"help": "lambada protocol(s) to run (default: both)"}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, mps or auto"})
    dtype: str = field(default="auto", metadata={"help": "auto (fp32), float32, bfloat16 or float16"})
    output: str | None = field(default=None, metadata={"help": "write the results as JSON to this file"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on stderr"})

    def __post_init__(self) -> None:
        check_types(self)
        if self.task not in TASKS:
            raise ConfigError(f"unknown eval task {self.task!r}; choose one of {TASKS}.")
        if unknown := sorted(set(self.protocols) - set(typing.get_args(Protocol))):
            raise ConfigError(f"unknown lambada protocol(s) {unknown}; choose from {typing.get_args(Protocol)}.")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}.")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}.")
        if self.stride is not None and self.stride < 1:
            raise ConfigError(f"--stride must be >= 1, got {self.stride}.")
        if not self.data:
            raise ConfigError(
                f"`eval {self.task}` needs --data FILE: no benchmark data is downloaded. "
                "docs/evaluation.md says where to get lambada_test.jsonl, hellaswag_val.jsonl and wiki.test.raw."
            )
        if self.task != "perplexity" and len(self.data) != 1:
            raise ConfigError(f"`eval {self.task}` reads one --data file, got {len(self.data)}.")


def text_files(paths: list[str]) -> list[Path]:
    """Files as given; a directory stands for its *.txt files, sorted."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.txt"))
            if not found:
                raise DataError(f"{p}: the folder holds no *.txt files to evaluate.")
            out += found
        else:
            out.append(p)
    return out


def evaluate(cfg: EvalConfig, model, tokenizer) -> list[EvalResult]:
    """Run cfg.task on an already loaded model; returns the result rows."""
    name = cfg.model
    if cfg.task == "perplexity":
        from gpt2kit.eval.perplexity import files_perplexity

        files = text_files(cfg.data)
        r = files_perplexity(model, tokenizer, files, cfg.limit, stride=cfg.stride, bos=cfg.bos, batch_size=cfg.batch_size,
                             progress=cfg.progress)  # fmt: skip
        stride = cfg.stride or model.config.n_positions
        protocol = f"sliding-window-stride{stride}" + ("" if cfg.bos else "-nobos")
        return [
            EvalResult("perplexity", protocol, "token_perplexity", r.token_perplexity, name, r.n_tokens),
            EvalResult("perplexity", protocol, "bits_per_byte", r.bits_per_byte, name, r.n_tokens),
            EvalResult("perplexity", protocol, "word_perplexity", r.word_perplexity, name, r.n_tokens),
        ]
    if cfg.task == "lambada":
        from gpt2kit.eval.lambada import evaluate_lambada, load_lambada

        texts = load_lambada(cfg.data[0], cfg.limit)
        return evaluate_lambada(model, tokenizer, texts, tuple(cfg.protocols), cfg.batch_size, cfg.progress, name)
    if cfg.task == "hellaswag":
        from gpt2kit.eval.hellaswag import evaluate_hellaswag, load_hellaswag

        examples = load_hellaswag(cfg.data[0], cfg.limit)
        return evaluate_hellaswag(model, tokenizer, examples, cfg.batch_size, cfg.progress, name)
    from gpt2kit.eval.wikitext import evaluate_wikitext, load_wikitext

    pages = load_wikitext(cfg.data[0], cfg.limit)
    return evaluate_wikitext(model, tokenizer, pages, cfg.stride, cfg.batch_size, cfg.progress, name)


def run_eval(cfg: EvalConfig, model=None, tokenizer=None, out=None) -> list[EvalResult]:
    """Evaluate (loading cfg.model unless a model is given), print the table to `out`, write cfg.output."""
    for path in cfg.data:  # fail on a wrong path before spending time on loading the model
        if not os.path.exists(path):
            raise DataError(f"{path}: no such file or folder (--data). See docs/evaluation.md for where to get it.")
    if cfg.output:  # a read-only --output fails now, not after the evaluation
        check_writable(cfg.output)
    if model is None:
        from gpt2kit.pretrained import from_pretrained

        model = from_pretrained(cfg.model, device=cfg.device, dtype=None if cfg.dtype == "auto" else cfg.dtype)
    if tokenizer is None:
        from gpt2kit.tokenizer import Tokenizer

        tokenizer = Tokenizer()
    results = evaluate(cfg, model, tokenizer)
    print(format_table(results), file=out or sys.stdout)
    if cfg.output:
        write_json(cfg.output, results)
    return results
