"""Prompt/completion fine-tuning data: loss on the completion only (IGNORE_INDEX over the prompt).

One example, as token ids (P prompt tokens, C completion tokens):

    seq = [EOT] + prompt + completion + [EOT]          # P + C + 2 tokens
    x   = seq[:-1]                                      # (P + C + 1,)
    y   = seq[1:], with y[:P] = IGNORE_INDEX            # the model is never trained to predict the prompt

x[P] (the last prompt token) predicts the first completion token, and the final target is EOT, so the
model learns where a completion ends. Batches are right-padded to T with x = EOT, y = IGNORE_INDEX.
Too-long examples lose prompt tokens from the left first (the completion is what we train on), then
completion tokens from the right.

`SFTLoader` has the ShardLoader interface (next_batch / state_dict / load_state_dict / eval_batches), so the
training loop is the same loop: fine-tuning is a different dataset and a loss mask, not a second loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gpt2kit.config import GPT2_EOT_ID, IGNORE_INDEX
from gpt2kit.errors import ConfigError, DataError
from gpt2kit.textfiles import read_jsonl


def build_example(
    prompt_ids: list[int], completion_ids: list[int], T: int, eot: int = GPT2_EOT_ID
) -> tuple[list[int], list[int]]:
    """-> (x, y), each of length <= T; y is IGNORE_INDEX wherever the target is a prompt token."""
    if not completion_ids:
        raise DataError("an example has an empty completion: there is nothing to train on.")
    completion = completion_ids[: T - 1]  # room for at least the EOT prefix... and the final EOT target
    prompt = prompt_ids[max(0, len(prompt_ids) - (T - 1 - len(completion))) :] if T - 1 - len(completion) > 0 else []
    seq = [eot, *prompt, *completion, eot]
    x, y = seq[:-1], seq[1:]
    y = [IGNORE_INDEX] * len(prompt) + y[len(prompt) :]
    return x[:T], y[:T]


def read_prompt_completion(
    path: str | os.PathLike, prompt_field: str = "prompt", completion_field: str = "completion"
) -> list[tuple[str, str]]:
    """The (prompt, completion) pairs of a JSONL file, checked line by line."""
    records = read_jsonl(path, {prompt_field: str, completion_field: str}, "a prompt/completion fine-tuning file",
                         hint="Name the fields with --prompt-field / --completion-field.")  # fmt: skip
    return [(r[prompt_field], r[completion_field]) for r in records]


def is_prompt_completion_file(
    path: str | os.PathLike, prompt_field: str = "prompt", completion_field: str = "completion"
) -> bool:
    """True if the first record of a .jsonl file has both fields."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson")):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(rec, dict) and prompt_field in rec and completion_field in rec
    return False


class SFTLoader:
    """Batches of padded (x, y) examples, drawn at random (rank-aware, resumable) or in order for eval."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], B: int, T: int, rank: int = 0, world: int = 1,
                 order: str = "random", seed: int = 0) -> None:  # fmt: skip
        if not examples:
            raise DataError("no fine-tuning examples (after the validation split). Add more data or lower val_fraction.")
        if order not in ("random", "sequential"):
            raise ConfigError(f"order must be 'random' or 'sequential', got {order!r}.")
        self.examples, self.B, self.T, self.rank, self.world, self.order, self.seed = examples, B, T, rank, world, order, seed
        self.draws = 0

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]], tokenizer, B: int, T: int, **kw) -> SFTLoader:
        return cls([build_example(tokenizer.encode_ordinary(p), tokenizer.encode_ordinary(c), T) for p, c in pairs], B, T, **kw)

    def reset(self) -> None:
        self.draws = 0

    def state_dict(self) -> dict:
        return {"order": self.order, "seed": self.seed, "world": self.world, "B": self.B, "T": self.T, "draws": self.draws}

    def load_state_dict(self, state: dict) -> None:
        for key in ("order", "seed", "world", "B", "T"):
            if state.get(key) != getattr(self, key):
                raise ConfigError(
                    f"cannot resume fine-tuning data: checkpoint has {key}={state.get(key)!r}, this run {getattr(self, key)!r}."
                )
        self.draws = state["draws"]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> x (B, T) int64 padded with EOT, y (B, T) int64 padded with IGNORE_INDEX."""
        B, n = self.B, len(self.examples)
        if self.order == "random":
            rng = np.random.default_rng([self.seed, self.draws])
            idx = rng.integers(0, n, size=self.world * B)[self.rank * B : (self.rank + 1) * B]
        else:
            first = self.draws * self.world * B + self.rank * B
            idx = np.arange(first, first + B) % n
        self.draws += 1
        x = torch.full((B, self.T), GPT2_EOT_ID, dtype=torch.long)
        y = torch.full((B, self.T), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(idx):
            ex, ey = self.examples[int(i)]
            x[row, : len(ex)] = torch.tensor(ex)
            y[row, : len(ey)] = torch.tensor(ey)
        return x, y

    def eval_batches(self, max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.reset()
        n_batches = max(1, -(-len(self.examples) // (self.B * self.world)))
        for _ in range(min(max_batches, n_batches)):
            yield self.next_batch()


def split_pairs(pairs: list, val_fraction: float, seed: int = 0) -> tuple[list, list]:
    """A seeded shuffle, then the last `val_fraction` (at least one example, if any are asked for) is val."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = 0 if val_fraction <= 0 else max(1, int(len(pairs) * val_fraction))
    if n_val >= len(pairs):
        raise DataError(
            f"{len(pairs)} example(s) are too few to hold out {val_fraction:.0%} for validation; add data or set val_fraction 0."
        )
    train = [pairs[i] for i in order[: len(pairs) - n_val]]
    val = [pairs[i] for i in order[len(pairs) - n_val :]]
    return train, val
