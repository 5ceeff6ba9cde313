"""HellaSwag (`hellaswag_val.jsonl`): pick the ending of a caption among four, by log-likelihood.

Protocol = lm-evaluation-harness `hellaswag` (gpt2 124M: acc 0.2892, acc_norm 0.3114), zero-shot:
  - context = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
  - each choice = preprocess(ending), scored as the continuation " " + choice,
  - preprocess = strip, " [title]" -> ". ", drop "[...]" (WikiHow artifacts), "  " -> " ",
  - acc = the choice with the largest summed log-likelihood is the label;
    acc_norm = the largest log-likelihood divided by the choice's length in characters.

`hellaswag_scores(model, tokenizer, examples)` is the scorer the training loop can call at eval intervals.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from gpt2kit.errors import DataError
from gpt2kit.eval.loglikelihood import encode_pair, score_tokens
from gpt2kit.eval.results import EvalResult
from gpt2kit.textfiles import read_jsonl

WHAT = "HellaSwag (hellaswag_val.jsonl)"


@dataclass(frozen=True)
class HellaSwagExample:
    context: str
    choices: tuple[str, ...]
    label: int


def preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # brackets are artifacts of the WikiHow part of HellaSwag
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def make_example(record: dict) -> HellaSwagExample:
    ctx = record["ctx_a"] + " " + record["ctx_b"].capitalize()
    return HellaSwagExample(
        context=preprocess(record["activity_label"] + ": " + ctx),
        choices=tuple(preprocess(e) for e in record["endings"]),
        label=int(record["label"]),
    )


def load_hellaswag(path: str | os.PathLike, limit: int | None = None) -> list[HellaSwagExample]:
    fields = {"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": list, "label": (int, str)}
    examples = []
    for r in read_jsonl(path, fields, WHAT, limit):
        where = f"{path}:{r['_line']}"
        if len(r["endings"]) < 2 or not all(isinstance(e, str) for e in r["endings"]):
            raise DataError(f"{where}: 'endings' must be a list of at least two strings (HellaSwag has four).")
        label = r["label"]
        if isinstance(label, str) and not label.strip().isdigit():
            raise DataError(f"{where}: 'label' must be the index of the right ending, got {label!r}.")
        if not 0 <= int(label) < len(r["endings"]):
            raise DataError(f"{where}: 'label' {label} is not an index into the {len(r['endings'])} endings.")
        ex = make_example(r)
        # An empty ending scores no tokens (log-likelihood 0, the maximum), an empty context scores every
        # ending from nothing: either makes the example meaningless, and it would count as answered.
        if not preprocess(r["ctx_a"] + " " + r["ctx_b"]):
            raise DataError(f"{where}: the context ('ctx_a' + 'ctx_b') is empty; every HellaSwag example has one.")
        empty = [i for i, c in enumerate(ex.choices) if not c]
        if empty:
            raise DataError(f"{where}: ending {empty[0]} is empty (after HellaSwag's cleanup); every ending needs text.")
        examples.append(ex)
    return examples


def hellaswag_scores(model, tokenizer, examples: list[HellaSwagExample], batch_size: int = 16, progress: bool = False) -> dict:
    """{"acc", "acc_norm", "n"} over the examples; usable as an in-training eval."""
    requests, owners = [], []
    for i, ex in enumerate(examples):
        for choice in ex.choices:
            requests.append(encode_pair(tokenizer, ex.context, " " + choice))
            owners.append(i)
    lp = score_tokens(model, requests, batch_size, progress, "hellaswag").logprob  # (N * n_choices,)
    correct = correct_norm = 0
    pos = 0
    for ex in examples:
        k = len(ex.choices)
        ll = lp[pos : pos + k]
        lengths = torch.tensor([float(len(c)) for c in ex.choices], dtype=torch.float64)
        correct += int(int(ll.argmax()) == ex.label)
        correct_norm += int(int((ll / lengths).argmax()) == ex.label)
        pos += k
    n = len(examples)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}


def evaluate_hellaswag(model, tokenizer, examples, batch_size=16, progress=False, model_name="") -> list[EvalResult]:
    s = hellaswag_scores(model, tokenizer, examples, batch_size, progress)
    return [EvalResult("hellaswag", "lm-eval", m, s[m], model_name, s["n"]) for m in ("acc", "acc_norm")]
