"""Periodic samples during training: a short continuation of a fixed prompt, through the generation Engine.

The sample is `gpt2kit generate --bos --ignore-eos --temperature 0.8 --top-k 40 --seed S` with
S = seed * 1_000_003 + step (`sample_params`), so it draws from the request's own `torch.Generator`:
sampling never advances the global RNG that dropout uses, a run with samples has exactly the losses of a
run without them, and an interrupted-and-resumed run samples the same text at the same step.
"""

from __future__ import annotations

import contextlib

import torch

from gpt2kit.generate.engine import generate
from gpt2kit.generate.params import SamplingParams
from gpt2kit.model import GPT


def sample_params(n_tokens: int, seed: int, step: int, temperature: float = 0.8, top_k: int = 40) -> SamplingParams:
    """The sampling settings of the sample at `step`: top-k, its own seed, <|endoftext|> kept as text."""
    return SamplingParams(max_new_tokens=n_tokens, temperature=temperature, top_k=top_k, seed=seed * 1_000_003 + step,
                          ignore_eos=True)  # fmt: skip


def sample_text(model: GPT, tokenizer, prompt: str, n_tokens: int, seed: int, step: int, device: torch.device | None = None,
                autocast=None, temperature: float = 0.8, top_k: int = 40) -> str:  # fmt: skip
    """The prompt's continuation (text only), after <|endoftext|>; the model is left in the mode it was in.
    `device` is where the model is (the engine reads it from the weights); `autocast` wraps the forwards."""
    ids = tokenizer.encode_ordinary(prompt)
    n_tokens = min(n_tokens, model.config.n_positions - len(ids) - 1)  # the <|endoftext|> prefix takes one position
    if n_tokens <= 0:
        return ""
    was_training = model.training
    try:
        with autocast if autocast is not None else contextlib.nullcontext():
            # weights="model": the model's own modules, no inference copy to build at every sample
            [c] = generate(model, [ids], sample_params(n_tokens, seed, step, temperature, top_k),
                           token_bytes=tokenizer.token_bytes_table, max_batch=1, bos=True, weights="model")  # fmt: skip
    finally:
        model.train(was_training)
    return c.text
