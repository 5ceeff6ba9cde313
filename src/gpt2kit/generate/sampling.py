"""The pure `logits -> logits` steps that turn a model's next-token logits into a token, as a SamplingParams
(params.py) asks.

Order, applied to one row of float32 logits (V,) per request (HF / vLLM order):

    repetition / presence / frequency penalty -> logit bias & banned ids -> temperature
    -> top-k -> top-p -> min-p -> sample (inverse CDF with the request's torch.Generator), or argmax

Every step is a small pure function `(V,) -> (V,)` that keeps at least one token, so each one can be tested
on hand-made logits. Parameters are validated once, in `SamplingParams.__post_init__`, with messages that
say what is wrong and what is allowed. Temperature 0 means greedy (argmax of the penalised, biased logits).
`logprobs` never changes what is drawn: they are reported from the raw logits (see logprobs.py).

Numerical safety, for every value the validation accepts (one request's parameters must never make a
batched step fail): a temperature below GREEDY_TEMPERATURE is greedy (dividing by 1e-40 overflows float32);
every step's output is clamped to finite float32 (a repetition penalty of 1e-38 divides logits into inf);
top-p keeps the most likely token explicitly (a top_p of 1e-300 is 0.0 in float32, and `before >= 0` would
drop every token); and `draw` returns NO_TOKEN instead of raising when nothing can be drawn (every logit
-inf or NaN), so the engine ends that one sequence and its neighbours go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from gpt2kit.generate.params import SamplingParams

# What `draw` returns for a row in which no token can be drawn (every logit -inf or NaN).
NO_TOKEN = -1
_FMAX = torch.finfo(torch.float32).max
# How many of the most likely tokens top-p looks among before it sorts the whole vocabulary's values (CPU).
TOP_P_CANDIDATES = 256


# ---- the pure steps: (V,) float32 -> (V,) float32 ---------------------------------------------------


def apply_penalties(
    logits: torch.Tensor, context_counts: torch.Tensor | None, output_counts: torch.Tensor | None, p: SamplingParams
) -> torch.Tensor:
    """Repetition penalty over the prompt + output (CTRL / HF: positive logits divided, negative
    multiplied), then OpenAI presence/frequency penalties over the output only. counts: (V,) float."""
    if p.repetition_penalty != 1.0 and context_counts is not None:
        seen = context_counts > 0
        penalised = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        # a penalty of 1e-38 divides into inf, 1e38 multiplies into -inf: clamp both (no token is banned yet)
        logits = _finite(torch.where(seen, penalised, logits), neginf=-_FMAX)
    if output_counts is not None and (p.presence_penalty or p.frequency_penalty):
        logits = logits - p.presence_penalty * (output_counts > 0).to(logits.dtype) - p.frequency_penalty * output_counts
    return logits


def _finite(logits: torch.Tensor, neginf: float = -math.inf, out: torch.Tensor | None = None) -> torch.Tensor:
    """inf -> the largest float32 (so softmax never computes inf - inf), NaN -> -inf (never drawn).
    -inf stays by default: it is how the steps mark a token that may not be drawn. `out=logits`: in place."""
    return torch.nan_to_num(logits, nan=-math.inf, posinf=_FMAX, neginf=neginf, out=out)


def apply_bias(logits: torch.Tensor, bias: dict[int, float], banned: torch.Tensor | None) -> torch.Tensor:
    """Add logit_bias; set banned ids (a (n,) long tensor) to -inf. One row of `apply_bias_rows`."""
    return apply_bias_rows(logits[None], [bias], [banned])[0]


def apply_bias_rows(
    logits: torch.Tensor, biases: Sequence[dict[int, float]], banned: Sequence[torch.Tensor | None], inplace: bool = False
) -> torch.Tensor:
    """(n, V) logits -> (n, V): row i gets biases[i] added (ids past V ignored) and banned[i] (a (k,) long
    tensor, or None) set to -inf, in one indexed write each for all rows; into `logits` itself with `inplace`."""
    V = logits.shape[-1]
    put = torch.Tensor.index_put_ if inplace else torch.Tensor.index_put
    entries = [(i, t, v) for i, bias in enumerate(biases) for t, v in bias.items() if t < V]
    if entries:
        rows, ids, vals = zip(*entries)
        index = (torch.tensor(rows, device=logits.device), torch.tensor(ids, device=logits.device))
        logits = put(logits, index, torch.tensor(vals, device=logits.device, dtype=logits.dtype), accumulate=True)
    bans = [(i, b) for i, b in enumerate(banned) if b is not None and b.numel()]
    if bans:
        rows_b = torch.cat([torch.full_like(b, i) for i, b in bans])  # (k,) row of each banned id
        logits = put(logits, (rows_b, torch.cat([b for _, b in bans])), torch.tensor(-math.inf, dtype=logits.dtype))
    return logits


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature (>= GREEDY_TEMPERATURE here: smaller ones decode greedily), clamped finite."""
    if temperature == 1.0:
        return logits
    scaled = (logits / temperature).clamp(-_FMAX, _FMAX)  # finite in, finite out (NaN stays NaN: never drawn)
    return torch.where(logits == -math.inf, logits, scaled)  # banned tokens stay banned


def apply_top_k(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep exactly the k largest logits (torch.topk + scatter, so ties beyond k never leak in)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    values, indices = torch.topk(logits, k)  # (k,), (k,)
    return torch.full_like(logits, -math.inf).scatter(0, indices, values)


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest prefix of tokens (by descending probability) whose total probability >= top_p."""
    if top_p >= 1.0:
        return logits
    log_total = torch.logsumexp(logits, dim=-1)  # () softmax's normaliser, over every token
    # On a CPU the nucleus is looked for among the TOP_P_CANDIDATES most likely tokens first (a top-k is ~30x faster
    # than sorting 50257 logits); it is exact when they hold top_p, else the whole vocabulary's values are sorted
    # (`_nucleus_by_value`). On a GPU the full sort is fast and checking the mass would sync with the host.
    kept = None
    if logits.device.type == "cpu" and logits.shape[-1] > TOP_P_CANDIDATES:
        ranked, order = torch.topk(logits, TOP_P_CANDIDATES)  # (k,), (k,) descending
        probs = torch.exp(ranked - log_total)
        if float(probs.sum()) >= top_p:  # the tokens after the candidates have at least top_p before them
            kept = order[: _nucleus_size(probs, top_p)]
        elif logits.dtype in (torch.float32, torch.float64):
            return _nucleus_by_value(logits, log_total, top_p)
    if kept is None:
        ranked, order = torch.sort(logits, descending=True)  # (V,), (V,)
        kept = order[: _nucleus_size(torch.exp(ranked - log_total), top_p)]
    return torch.full_like(logits, -math.inf).index_copy_(0, kept, logits[kept])


def _nucleus_size(probs: torch.Tensor, top_p: float) -> int:
    """How many of the descending probabilities `probs` (k,) the nucleus keeps: the first, and those with less than
    top_p before them (within float32's rounding of top_p counts as reaching it; in float32 a top_p of 1e-300 is 0.0,
    so the first is kept explicitly). The mass before each token never decreases: a binary search finds the end."""
    done = torch.cumsum(probs[:-1], 0, dtype=torch.float64)  # (k - 1,) the mass before each token after the first
    limit = torch.tensor([top_p * (1 - 1e-6)], dtype=torch.float64, device=probs.device)
    return 1 + int(torch.searchsorted(done, limit))


def _nucleus_by_value(logits: torch.Tensor, log_total: torch.Tensor, top_p: float) -> torch.Tensor:
    """apply_top_p over the whole vocabulary from its sorted values alone: numpy's SIMD sort of 50257 float32 values
    took 0.3-0.4 ms on a 2-core Zen 3 VM, torch.sort with indices 4.3 ms. The nucleus is every token above the last
    kept value, and as many of the tokens equal to it as the prefix holds (the first ones)."""
    values = logits.numpy()  # (V,)
    ranked = torch.from_numpy(np.sort(values)[::-1].copy())  # (V,) descending
    n = _nucleus_size(torch.exp(ranked - log_total), top_p)
    keep = values > float(ranked[n - 1])  # (V,) bool
    keep[np.flatnonzero(values == float(ranked[n - 1]))[: n - int(keep.sum())]] = True
    return torch.from_numpy(np.where(keep, values, np.float32(-np.inf)).astype(values.dtype, copy=False))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least min_p times the most likely token's. In log form,
    p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p): no softmax to underflow."""
    if min_p <= 0.0:
        return logits
    return logits.masked_fill(logits < logits.max() + math.log(min_p), -math.inf)


def process_logits(
    logits: torch.Tensor,
    p: SamplingParams,
    context_counts: torch.Tensor | None = None,
    output_counts: torch.Tensor | None = None,
    banned: torch.Tensor | None = None,
) -> torch.Tensor:
    """All steps but the draw: (V,) raw logits -> (V,) float32 logits whose -inf entries may never be drawn."""
    logits = logits.float()
    logits = apply_penalties(logits, context_counts, output_counts, p)
    logits = _finite(apply_bias(logits, p.logit_bias, banned))  # NaN from the model: never drawn
    if p.greedy:
        return logits
    logits = apply_temperature(logits, p.temperature)
    logits = apply_top_k(logits, p.top_k)
    logits = apply_top_p(logits, p.top_p)
    return apply_min_p(logits, p.min_p)


def draw(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """(V,) processed logits -> () long token id: argmax if greedy, else one draw from softmax(logits);
    NO_TOKEN when every logit is -inf or NaN. Never raises on bad numbers and never syncs with the device:
    the draw is given a valid distribution in every case (a uniform stand-in when nothing may be drawn)."""
    if p.greedy:
        return greedy_draw(logits[None])[0]
    logits = _finite(logits)
    ok = logits.amax() > -math.inf  # () bool, on the device (amax: 5x faster than (logits > -inf).any() on a CPU)
    probs = torch.softmax(torch.where(ok, logits, 0.0), dim=-1)  # softmax subtracts the max: stable
    return torch.where(ok, inverse_cdf(probs, generator), NO_TOKEN)


def inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(V,) probabilities -> () long: the first token whose cumulative probability exceeds u x total, for one
    uniform u in [0, 1) from `generator`. One random number per token, so a seed gives the same tokens whatever
    else the batch holds; ~15x faster than `torch.multinomial` over GPT-2's vocabulary on a CPU, which draws an
    exponential number per token. A token of probability 0 is never drawn: its cumulative sum equals the one
    before it, so it is never the first to exceed u."""
    cdf = torch.cumsum(probs, 0, dtype=torch.float64)  # (V,)
    u = torch.rand((), generator=generator, device=probs.device, dtype=torch.float64) * cdf[-1]
    u = torch.minimum(u, torch.nextafter(cdf[-1], cdf.new_zeros(())))  # u < total even where r x total rounds up
    return torch.searchsorted(cdf, u[None], right=True)[0]


def greedy_draw(logits: torch.Tensor) -> torch.Tensor:
    """(n, V) processed logits -> (n,) long: each row's argmax (its first maximum), NO_TOKEN for a row that is
    all -inf or NaN."""
    return _first_max(_finite(logits))


def greedy_tokens(
    logits: torch.Tensor, biases: Sequence[dict[int, float]], banned: Sequence[torch.Tensor | None], rows: Sequence[int] | None = None,
    host: np.ndarray | None = None,
) -> torch.Tensor:
    """(B, V) raw logits and n greedy rows of them that use no penalties (`rows`; default all B) -> (n,) long:
    what `process_logits` and `draw` give row by row (bias and banned ids, finite, argmax). On a CPU each row is
    one numpy argmax, over a copy only where the row has a bias or bans (4-26 us for 50257 logits, against the
    batched torch pass's 110-290: Zen 4 VM, warm / after a weight product); the batched pass decides whenever a
    winner is not finite (NaN, inf, nothing drawable), and on other devices. host: `logits.numpy()` of float32
    CPU logits, made once by a caller that draws from the same buffer every step (the view took ~50 us a step
    after a decode step's weight stream)."""
    rows = range(len(logits)) if rows is None else rows
    if host is not None or (logits.device.type == "cpu" and logits.dtype == torch.float32):
        drawn = _numpy_greedy(logits.numpy() if host is None else host, rows, biases, banned)
        if drawn is not None:
            return torch.from_numpy(drawn)
    x = logits.index_select(0, torch.tensor(list(rows), device=logits.device)).float()  # (n, V): a copy, overwritten
    x = apply_bias_rows(x, biases, banned, inplace=True)
    return _first_max(_finite(x, out=x))


def _numpy_greedy(
    x: np.ndarray, rows: Sequence[int], biases: Sequence[dict[int, float]], banned: Sequence[torch.Tensor | None]
) -> np.ndarray | None:
    """greedy_tokens on a CPU: (n,) int64, or None when some row's winner is not finite. A finite winner means
    the row held no NaN (argmax's first pick) and no inf, so its first maximum is the batched pass's too. The
    bias and bans are written here rather than by apply_bias_rows on a one-row copy: its index_put took ~100 us
    more a biased row (Zen 4 VM), the very cost this path exists to avoid; the tests hold both to one result."""
    V = x.shape[1]
    out = np.empty(len(rows), np.int64)
    for i, (b, bias, ban) in enumerate(zip(rows, biases, banned)):
        row = x[b]  # (V,) float32, a view
        ids = [t for t in bias if t < V]
        if ids or (ban is not None and ban.numel()):
            row = row.copy()
            row[ids] += np.array([bias[t] for t in ids], np.float32)  # float32 sums, as apply_bias_rows makes them
            if ban is not None:
                row[ban.numpy()] = -np.inf
        t = int(row.argmax())
        if not math.isfinite(row[t]):
            return None
        out[i] = t
    return out


def _first_max(logits: torch.Tensor) -> torch.Tensor:
    """(n, V) logits without NaN -> (n,) long: argmax's index (torch.max's is the same first maximum, in a
    third of argmax's time on a CPU), NO_TOKEN where the whole row is -inf."""
    best, tok = logits.max(-1)  # (n,), (n,)
    return torch.where(best > -math.inf, tok, NO_TOKEN)
