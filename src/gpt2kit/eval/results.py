"""Evaluation results: one row per (task, protocol, metric), printed as a table and saved as JSON.

The JSON file is a list of rows, each {"task", "protocol", "metric", "value", "model", "n", "date"},
written atomically, so runs of different models or checkpoints can be concatenated and compared.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class EvalResult:
    task: str  # "perplexity", "lambada", "hellaswag", "wikitext"
    protocol: str  # how it was computed, e.g. "lm-eval", "paper-last-token", "sliding-window-stride512"
    metric: str  # "acc", "acc_norm", "ppl", "word_perplexity", "bits_per_byte", ...
    value: float
    model: str = ""
    n: int = 0  # examples (passages, articles, files) or, for perplexity, scored tokens
    date: str = field(default_factory=_now)

    def to_dict(self) -> dict:
        return asdict(self)


def format_table(results: list[EvalResult]) -> str:
    """A plain-text table for the terminal."""
    header = ("task", "protocol", "metric", "value", "n", "model")
    rows = [(r.task, r.protocol, r.metric, f"{r.value:.4f}", str(r.n), r.model) for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in (3, 4) else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def write_json(path: str | os.PathLike, results: list[EvalResult]) -> None:
    """Write the rows as a JSON list, atomically (a crash never leaves half a file)."""
    from gpt2kit.atomic import write_text

    write_text(path, json.dumps([r.to_dict() for r in results], indent=2) + "\n")
