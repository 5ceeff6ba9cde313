"""Per-sequence records of the engine: the public Completion / TokenEvent, the internal slot state and its setup."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from gpt2kit.errors import ConfigError, InputError
from gpt2kit.generate.content_filter import BannedPhraseFilter, VocabIndex
from gpt2kit.generate.detok import IncrementalDetokenizer
from gpt2kit.generate.logprobs import TokenLogprob, prompt_logprobs
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.stopping import FinishReason, StopStringMatcher

if TYPE_CHECKING:
    from gpt2kit.generate.engine import Engine


@dataclass
class Completion:
    """One finished sequence."""

    request_id: object
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens (without a final <|endoftext|> / stop token)
    text: str | None  # the generated text (None when the engine has no token_bytes table)
    finish_reason: FinishReason
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it
    index: int = 0  # which of the n samples of its prompt
    prompt_index: int = 0  # which prompt (in generate/stream)
    # with SamplingParams.logprobs: one record per token of token_ids (raw-distribution logprobs)
    logprobs: list[TokenLogprob] | None = None
    # with SamplingParams.prompt_logprobs: one per prompt token, the first None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    error: str | None = None  # why it failed, when finish_reason is "error"


@dataclass
class TokenEvent:
    """What one step produced for one slot. `token` is None when the slot ended without a new token
    (end-of-text, a stop token, a cancel); `completion` is set on the last event of a sequence."""

    slot: int
    request_id: object
    token: int | None
    text: str  # new text this step ("" while a character or a possible stop string is held back)
    finished: bool = False
    finish_reason: FinishReason | None = None
    completion: Completion | None = None
    logprob: TokenLogprob | None = None  # `token`'s logprob and top alternatives (SamplingParams.logprobs)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on a sequence's first event only
    error: str | None = None  # on the last event of a sequence that failed (finish_reason "error")


@dataclass
class _Sequence:
    """Engine-internal state of one slot."""

    request_id: object
    params: SamplingParams
    prompt: list[int]
    generator: torch.Generator | None
    context: list[int]  # tokens fed to the model so far in this row (for the sliding window)
    index: int = 0
    prompt_index: int = 0
    output: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    pending: int | None = None  # token drawn last step, fed at this step's forward
    cancelled: bool = False
    stop: StopStringMatcher | None = None
    detok: IncrementalDetokenizer | None = None
    phrase_filter: BannedPhraseFilter | None = None
    context_counts: torch.Tensor | None = None  # (V,) float: prompt + output token counts
    output_counts: torch.Tensor | None = None  # (V,) float: output token counts
    banned: torch.Tensor | None = None  # (n,) long: banned ids from the params
    logprobs: list[TokenLogprob] | None = None  # per output token, when params.logprobs is set
    prompt_logprobs: list[TokenLogprob | None] | None = None  # computed at add time, sent with the first event
    started: bool = False  # whether an event was emitted yet
    error: str | None = None  # set when this sequence fails; it then ends with finish_reason "error"

    @property
    def batchable_greedy(self) -> bool:
        """Greedy with at most a logit bias and banned ids: drawn in one batched pass with its neighbours."""
        return self.params.greedy and not self.params.uses_counts and self.phrase_filter is None


def new_sequence(engine: Engine, prompt: Sequence[int], p: SamplingParams, request_id: object, bos: bool, index: int,
                 prompt_index: int) -> _Sequence:  # fmt: skip
    """Validate one request against the engine (vocabulary, context) and build its slot state."""
    if not isinstance(p, SamplingParams):
        raise ConfigError(f"expected SamplingParams, got {type(p).__name__}.")
    ids = [int(t) for t in prompt]
    if bos:
        ids = [engine.eot_id] + ids
    if not ids:
        raise InputError(
            "the prompt is empty: give at least one token, or use bos=True (CLI: --bos) to start from "
            f"<|endoftext|> (id {engine.eot_id}) for unconditional samples, as GPT-2 did."
        )
    V = engine.config.vocab_size
    bad = [t for t in ids if not 0 <= t < V]
    if bad:
        raise InputError(f"prompt token id {bad[0]} is outside the model's vocabulary [0, {V}).")
    context = ids
    if p.sliding_window:
        if len(ids) > engine.max_len:
            context = ids[-engine.window_keep :]
    else:
        if len(ids) > engine.max_len:
            raise InputError(
                f"the prompt has {len(ids)} tokens, more than the context of {engine.max_len}. Shorten it, or set "
                "sliding_window=True (CLI: --sliding-window) to keep only its last part."
            )
        if len(ids) + p.max_new_tokens - 1 > engine.max_len:
            raise InputError(
                f"prompt ({len(ids)} tokens) + max_new_tokens ({p.max_new_tokens}) does not fit the context of "
                f"{engine.max_len} tokens (the last token is never fed back, so up to {engine.max_len - len(ids) + 1} "
                "new tokens fit). Lower max_new_tokens, shorten the prompt, or set sliding_window=True "
                "(CLI: --sliding-window) to keep generating past the context."
            )
    needs_text = p.stop or p.banned_phrases
    if needs_text and engine.token_bytes is None:
        raise ConfigError("stop strings and banned phrases need the token-bytes table: create the Engine with token_bytes=...")
    seed = p.seed + index if p.seed is not None else random.getrandbits(63)
    gen = None
    if not p.greedy:
        gen = torch.Generator(device=engine.device)
        gen.manual_seed(seed)
    s = _Sequence(request_id=request_id, params=p, prompt=ids, generator=gen, context=list(context), index=index,
                  prompt_index=prompt_index, logprobs=[] if p.logprobs is not None else None)  # fmt: skip
    if engine.token_bytes is not None:
        s.stop = StopStringMatcher(p.stop)
        s.detok = IncrementalDetokenizer(engine.token_bytes)
        if p.banned_phrases:
            if engine.vocab_index is None:
                engine.vocab_index = VocabIndex(engine.token_bytes[: engine.n_vocab])
            tail = b"".join(engine.token_bytes[t] for t in ids[-64:] if t < engine.n_vocab)
            s.phrase_filter = BannedPhraseFilter(p.banned_phrases, engine.vocab_index, tail)
    if p.uses_counts:
        s.context_counts = torch.zeros(engine.n_vocab, device=engine.device)
        ctx = torch.tensor([t for t in ids if t < engine.n_vocab], dtype=torch.long, device=engine.device)
        s.context_counts.index_add_(0, ctx, torch.ones(len(ctx), device=engine.device))
        s.output_counts = torch.zeros(engine.n_vocab, device=engine.device)
    banned = [t for t in p.banned_token_ids if t < engine.n_vocab]
    if banned:
        s.banned = torch.tensor(banned, dtype=torch.long, device=engine.device)
    return s


def score_prompts(engine: Engine, seqs: list[_Sequence]) -> None:
    """Prompt logprobs for the sequences that asked: one uncached forward per distinct prompt."""
    done: dict[tuple[tuple[int, ...], int], list] = {}
    for s in seqs:
        k = s.params.prompt_logprobs
        if k is None:
            continue
        if len(s.prompt) > engine.config.n_positions:
            raise InputError(
                f"prompt_logprobs needs the whole prompt in one forward pass, but it has {len(s.prompt)} tokens, "
                f"more than the model's context of {engine.config.n_positions}. Shorten it or drop prompt_logprobs."
            )
        key = (tuple(s.prompt), k)
        if key not in done:
            done[key] = prompt_logprobs(engine.model, s.prompt, k, engine.n_vocab)
        s.prompt_logprobs = done[key]
