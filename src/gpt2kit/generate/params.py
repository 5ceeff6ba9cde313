"""What a generation run is asked for, apart from the model: `SamplingParams` (one request's sampling controls and
stopping rules, validated on construction) and `GenerateOptions` (an engine's, per run).

No torch here: the `gpt2kit` command derives its flags from these dataclasses (cli/flags.py), so `gpt2kit generate
--help` answers without loading torch. The steps that apply them are sampling.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpt2kit.errors import ConfigError
from gpt2kit.fields import check_types
from gpt2kit.hugepages import wants_huge_pages

# Temperatures below this decode greedily: logits / 1e-6 already make the softmax one-hot in float32, and
# smaller ones overflow to inf (then NaN). Greedy is what such a temperature means.
GREEDY_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20  # OpenAI's limit for chat top_logprobs (its legacy completions allow 5)


@dataclass
class SamplingParams:
    """How one request is decoded: sampling controls and stopping rules. Validated on construction."""

    max_new_tokens: int = field(default=64, metadata={"help": "tokens to generate at most (0 allowed: prompt only)"})
    temperature: float = field(
        default=1.0, metadata={"help": f"softmax temperature; 0 (or below {GREEDY_TEMPERATURE:g}) = greedy (argmax)"}
    )
    top_k: int | None = field(default=None, metadata={"help": "keep only the k most likely tokens (None = off)"})
    top_p: float = field(
        default=1.0, metadata={"help": "nucleus: keep the smallest set of tokens with total probability >= top_p; 1 = off"}
    )
    min_p: float = field(default=0.0, metadata={"help": "keep tokens with probability >= min_p * p(most likely); 0 = off"})
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "CTRL-style penalty on tokens already in the prompt or output; 1 = off"}
    )
    presence_penalty: float = field(
        default=0.0, metadata={"help": "OpenAI-style: subtract this from the logit of every token already generated"}
    )
    frequency_penalty: float = field(
        default=0.0, metadata={"help": "OpenAI-style: subtract this times the count of each generated token"}
    )
    logit_bias: dict[int, float] = field(default_factory=dict, metadata={"help": "token id -> value added to its logit"})
    banned_token_ids: tuple[int, ...] = field(default=(), metadata={"help": "token ids that are never generated"})
    banned_phrases: tuple[str, ...] = field(
        default=(), metadata={"help": "content filter: text that is never completed (case-insensitive)"}
    )
    stop: tuple[str, ...] = field(
        default=(), metadata={"help": "stop strings, matched on the text across token boundaries; not emitted"}
    )
    stop_token_ids: tuple[int, ...] = field(default=(), metadata={"help": "token ids that end the output (not emitted)"})
    ignore_eos: bool = field(default=False, metadata={"help": "keep going after <|endoftext|> instead of stopping"})
    seed: int | None = field(default=None, metadata={"help": "seed of this request's torch.Generator (None = random)"})
    n: int = field(default=1, metadata={"help": "independent samples per prompt (sample i uses seed + i)"})
    sliding_window: bool = field(default=False, metadata={"help": "keep generating past the context by re-reading its last part"})
    logprobs: int | None = field(
        default=None,
        metadata={"help": "report each generated token's logprob and this many top alternatives (0..20; None = off)"},
    )
    prompt_logprobs: int | None = field(
        default=None, metadata={"help": "also report the prompt tokens' logprobs with this many alternatives (0..20)"}
    )

    def __post_init__(self) -> None:
        check_types(self, skip=_NORMALISED_HERE)

        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"SamplingParams.{name}={getattr(self, name)!r} is invalid: {rule}.")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise bad("max_new_tokens", "it must be an integer >= 0")
        if not _is_real(self.temperature) or self.temperature < 0:
            raise bad("temperature", "it must be a number >= 0 (0 means greedy decoding)")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise bad("top_k", "it must be an integer >= 1, or None to disable top-k (0 is not 'off' here)")
        if not _is_real(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise bad("top_p", "it must be in (0, 1]; 1 disables nucleus sampling")
        if not _is_real(self.min_p) or not (0.0 <= self.min_p <= 1.0):
            raise bad("min_p", "it must be in [0, 1]; 0 disables it")
        if not _is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "it must be > 0 (1 = off, > 1 discourages repeats)")
        for name in ("presence_penalty", "frequency_penalty"):
            if not _is_real(getattr(self, name)) or not (-2.0 <= getattr(self, name) <= 2.0):
                raise bad(name, "it must be a number in [-2, 2] (OpenAI's range); 0 = off")
        if not _is_int(self.n) or self.n < 1:
            raise bad("n", "it must be an integer >= 1")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise bad("seed", "it must be a non-negative integer or None")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not 0 <= v <= MAX_LOGPROBS):
                raise bad(
                    name,
                    f"it must be an integer in [0, {MAX_LOGPROBS}] (the number of top alternatives; 0 = only "
                    "the chosen token's logprob), or None to turn it off",
                )
        if not isinstance(self.logit_bias, dict):
            raise bad("logit_bias", "it must be a dict {token_id: bias}")
        self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        for k, v in self.logit_bias.items():
            if k < 0 or not math.isfinite(v) and v != -math.inf:
                raise ConfigError(f"SamplingParams.logit_bias[{k}]={v}: ids must be >= 0 and biases finite (or -inf to ban).")
        self.banned_token_ids = _int_tuple(self.banned_token_ids, "banned_token_ids")
        self.stop_token_ids = _int_tuple(self.stop_token_ids, "stop_token_ids")
        self.stop = _str_tuple(self.stop, "stop")
        self.banned_phrases = _str_tuple(self.banned_phrases, "banned_phrases")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def uses_counts(self) -> bool:
        """Whether the penalties need per-token counts of the context."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


# Fields that __post_init__ converts itself (a single stop string, {"5": 1.0} keys, -inf biases).
_NORMALISED_HERE = ("logit_bias", "banned_token_ids", "stop_token_ids", "stop", "banned_phrases")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_tuple(values: object, name: str) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"SamplingParams.{name} must be a list of token ids, got {values!r}.")
    out = tuple(values)
    if not all(_is_int(v) and v >= 0 for v in out):
        raise ConfigError(f"SamplingParams.{name} must hold non-negative integer token ids, got {list(out)!r}.")
    return out


def _str_tuple(values: object, name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    out = tuple(values)  # type: ignore[arg-type]
    if not all(isinstance(s, str) and s for s in out):
        raise ConfigError(f"SamplingParams.{name} must be a list of non-empty strings, got {list(out)!r}.")
    return out


@dataclass
class GenerateOptions:
    """Engine-level options (per run, not per request)."""

    max_batch: int = 8  # sequences decoded together, at most (the engine holds as many as a call has)
    weights: str = "auto"  # decode weights: auto (exact), model (the model's own modules), int8 (8-bit weights)
    bos: bool = False  # prepend <|endoftext|> to every prompt (allows empty prompts: unconditional samples)
    window_keep: int | None = None  # sliding window: tokens kept when the context is full (default: half)
    huge_pages: str = "auto"  # the decode step's memory in 2 MiB pages: on, off, auto (runs of 512+ tokens)

    def __post_init__(self) -> None:
        check_types(self)
        wants_huge_pages(self.huge_pages, None)  # a bad value fails here, not at the first prompt
