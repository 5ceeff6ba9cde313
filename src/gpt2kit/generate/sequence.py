"""Per-sequence records of the engine: the public Completion / TokenEvent, and the internal slot state."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gpt2kit.generate.content_filter import BannedPhraseFilter
from gpt2kit.generate.detok import IncrementalDetokenizer
from gpt2kit.generate.logprobs import TokenLogprob
from gpt2kit.generate.sampling import SamplingParams
from gpt2kit.generate.stopping import FinishReason, StopStringMatcher


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
    def plain_greedy(self) -> bool:
        p = self.params
        return p.greedy and not p.uses_counts and not p.logit_bias and self.banned is None and self.phrase_filter is None
