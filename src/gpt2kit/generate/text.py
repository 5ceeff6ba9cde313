"""Text in, text out, on top of the token-level Engine: encode prompts, complete them, stream text.

The tokenizer is passed in (anything with `encode_ordinary`, `token_bytes_table`, `n_vocab`, `eot_token`, e.g.
`gpt2kit.Tokenizer()`), so `generate/` still never imports `tokenizer/`; the CLI wires them together.

    tg = TextGenerator(model, gpt2kit.Tokenizer())
    [c] = tg.complete(["The meaning of life is"], SamplingParams(max_new_tokens=40, top_k=40, seed=0))
    for piece in tg.stream_text("Once upon a time", SamplingParams(max_new_tokens=40)): print(piece, end="")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from gpt2kit.errors import ConfigError, GenerationError
from gpt2kit.generate.engine import Completion, Engine
from gpt2kit.generate.params import GenerateOptions, SamplingParams
from gpt2kit.generate.scheduler import per_prompt_params
from gpt2kit.hugepages import wants_huge_pages
from gpt2kit.model.gpt import GPT


class TokenizerLike(Protocol):
    n_vocab: int
    eot_token: int
    token_bytes_table: list[bytes]  # table[id] = that token's bytes, every id (built once by the tokenizer)

    def encode_ordinary(self, text: str) -> list[int]: ...


class TextGenerator:
    """A model + tokenizer + one Engine; text prompts in, Completions (with text) out."""

    def __init__(self, model: GPT, tokenizer: TokenizerLike, options: GenerateOptions | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.options = options or GenerateOptions()
        self.table = tokenizer.token_bytes_table
        self._engine: Engine | None = None

    def engine(self, steps: int | None = None, rows: int | None = None) -> Engine:
        """The Engine, built on first use for runs of `steps` decode steps (None: it lives on) and `rows` sequences at
        once (None: max_batch), at most max_batch; built again, larger, for a call with more. Its kernels are chosen for
        its batch: one prompt's engine measures and packs one row's kernels only, where an engine of more rows measures
        its batch's too and may hold a third packed copy of the weights for one row (kernels.one_row_kinds)."""
        o = self.options
        want = o.max_batch if rows is None else max(1, min(rows, o.max_batch))
        if self._engine is None or self._engine.max_batch < want:
            self._engine = None  # the smaller engine's weights and cache freed before the next one packs its own
            self._engine = Engine(self.model, max_batch=want, token_bytes=self.table, eot_id=self.tokenizer.eot_token,
                                  window_keep=o.window_keep, weights=o.weights, huge_pages=wants_huge_pages(o.huge_pages, steps))  # fmt: skip
        return self._engine

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_ordinary(text)

    def complete(self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]) -> list[Completion]:
        ids = [self.encode(p) for p in prompts]
        per_prompt = per_prompt_params(params, len(ids))
        steps = max(p.max_new_tokens for p in per_prompt)
        completions = self.engine(steps, sum(p.n for p in per_prompt)).generate(ids, params, bos=self.options.bos)
        for c in completions:
            if c.error is not None:
                raise GenerationError(f"prompt {c.prompt_index + 1}, sample {c.index + 1}: {c.error}")
        return completions

    def stream_text(self, prompt: str, params: SamplingParams, cancel=None) -> Iterator[str]:
        """Text pieces of ONE completion as they are generated (their concatenation is the final text)."""
        if params.n != 1:
            raise ConfigError(f"streaming text needs n=1 (got n={params.n}); use complete() or JSONL output for several samples.")
        for ev in self.engine(params.max_new_tokens, 1).stream([self.encode(prompt)], params, bos=self.options.bos, cancel=cancel):
            if ev.error is not None:
                raise GenerationError(ev.error)
            if ev.text:
                yield ev.text
