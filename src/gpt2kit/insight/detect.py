"""Was this text written by the model? Fast-DetectGPT's analytic sampling discrepancy, with GLTR's
statistics as the baseline, all from one forward pass of the scoring model (`surprisal.position_stats`).

Fast-DetectGPT (Bao et al., ICLR 2024, "Fast-DetectGPT: Efficient Zero-Shot Detection of Machine-Generated
Text via Conditional Probability Curvature"), with the same model as sampler and scorer:

    criterion = (sum_t log p(x_t) - sum_t E_{x~p_t}[log p(x)]) / sqrt(sum_t Var_{x~p_t}[log p(x)])

Text the model sampled sits near its own expected log-likelihood (criterion around 0, higher under
top-k/top-p); a person's text is less likely than the model expects (criterion well below 0). No training
data is needed; a logistic fit on calibration texts (calibration.py) turns the score into a probability.

GLTR (Gehrmann et al., ACL 2019 demo) is the baseline: the histogram of the actual tokens' ranks (top 10,
11-100, 101-1000, beyond), with the mean log-rank and mean log-likelihood beside it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import InputError
from gpt2kit.insight.calibration import Calibration, load_calibration, model_fingerprint, same_model
from gpt2kit.insight.surprisal import GLTR_BUCKETS, PositionStats, position_stats

MIN_TOKENS = 32  # below this the score varies too much to mean anything
MACHINE_AT, HUMAN_AT = 0.8, 0.2  # verdict thresholds on the calibrated probability


@dataclass(frozen=True)
class Evidence:
    """The per-text statistics every detector here is computed from."""

    n_tokens: int
    fast_detect: float  # Fast-DetectGPT criterion (higher = more like the model's own samples)
    log_likelihood: float  # mean log p per token, nats
    log_rank: float  # mean ln(rank) of the actual tokens (GLTR / DetectGPT's log-rank baseline)
    gltr_top10: float  # fraction of tokens in the model's top 10
    gltr_counts: dict[str, int]  # GLTR histogram: "1-10", "11-100", "101-1000", ">1000"


@dataclass(frozen=True)
class Detection:
    evidence: Evidence
    probability: float | None  # calibrated p(written by this model), None when not meaningful
    verdict: str  # one line
    notes: list[str] = field(default_factory=list)  # why a number is missing or should be read with care

    def to_dict(self) -> dict:
        return asdict(self)


def evidence_from_stats(stats: PositionStats) -> Evidence:
    """PositionStats of a text's tokens -> the detectors' statistics."""
    n = int(stats.logprob.numel())
    criterion = (stats.logprob.sum() - stats.expected.sum()) / stats.variance.sum().clamp_min(1e-12).sqrt()
    rank = stats.rank.double()
    edges = (0, *GLTR_BUCKETS)
    names = [f"{a + 1}-{b}" for a, b in zip(edges, edges[1:])] + [f">{GLTR_BUCKETS[-1]}"]
    counts = [int(((rank > a) & (rank <= b)).sum()) for a, b in zip(edges, edges[1:])]
    counts.append(int((rank > GLTR_BUCKETS[-1]).sum()))
    return Evidence(
        n_tokens=n,
        fast_detect=float(criterion),
        log_likelihood=float(stats.logprob.mean()),
        log_rank=float(rank.log().mean()),
        gltr_top10=counts[0] / n,
        gltr_counts=dict(zip(names, counts)),
    )


def text_evidence(model, tokenizer, text: str, stride: int | None = None) -> Evidence:
    """One forward over <|endoftext|> + the text (in windows past the context) -> Evidence."""
    ids = tokenizer.encode_ordinary(text)
    if not ids:
        raise InputError("the text is empty: there is nothing to judge.")
    return evidence_from_stats(position_stats(model, [GPT2_EOT_ID] + ids, stride, top=1, n_vocab=tokenizer.n_vocab))


def detect_text(model, tokenizer, text: str, calibration: Calibration | None | bool = True) -> Detection:
    """Score `text` and, where the calibration applies, give p(written by this model) and a verdict.

    calibration: True = the one shipped in the package, None/False = none, or a Calibration."""
    ev = text_evidence(model, tokenizer, text)
    cal = load_calibration() if calibration is True else (calibration or None)
    notes = [
        "The score says how typical the text is of THIS model's own samples. Text from another model "
        "(a larger GPT-2, a chat model) or edited by a person is outside what it was calibrated on."
    ]
    if ev.n_tokens < MIN_TOKENS:
        notes.insert(0, f"Only {ev.n_tokens} tokens: at least {MIN_TOKENS} are needed for a meaningful score.")
        return Detection(ev, None, f"too short to judge ({ev.n_tokens} tokens; needs {MIN_TOKENS}+)", notes)
    if cal is None or not same_model(cal.fingerprint, model_fingerprint(model)):
        where = "no calibration is installed" if cal is None else f"the calibration is for {cal.model_name}, not this model"
        notes.insert(0, f"No probability: {where}. The raw score still ranks texts (higher = more model-like).")
        return Detection(ev, None, f"score {ev.fast_detect:+.2f} (uncalibrated for this model)", notes)
    p, length = cal.probability(ev.fast_detect, ev.n_tokens)
    if abs(math.log(ev.n_tokens / length)) > math.log(1.5):
        notes.append(f"Calibrated on {length}-token passages; this text has {ev.n_tokens} tokens.")
    if p >= MACHINE_AT:
        verdict = f"likely written by this model (p = {p:.2f})"
    elif p <= HUMAN_AT:
        verdict = f"likely not written by this model (p = {p:.2f})"
    else:
        verdict = f"uncertain (p = {p:.2f})"
    return Detection(ev, p, verdict, notes)
