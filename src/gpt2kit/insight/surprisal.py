"""Surprisal of a text: for every token, its log-probability, the rank of the actual token among all
next-token candidates, and the most likely alternatives; with perplexity, bits per byte and GLTR's buckets.

The windows are eval's (`eval.perplexity.window_requests`): <|endoftext|> in front, every token scored
exactly once, each window reading the model's context before the tokens it scores. So the sum of the
per-token log-probabilities here is `text_perplexity`'s NLL, token by token (tests/test_insight.py checks
each one against `eval.loglikelihood.score_tokens`). What differs is only what is kept per position: eval
needs log p(target) alone (its LogitHead never forms the log-probabilities); here the full log-softmax of
each scored row is formed, CHUNK rows at a time, for the rank, the top alternatives, and the mean and
variance of log p under the model's own distribution (what Fast-DetectGPT needs, see detect.py).

Shapes: N scored tokens, k alternatives, V vocabulary.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass

import torch

from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import InputError
from gpt2kit.eval.loglikelihood import eval_mode
from gpt2kit.eval.perplexity import window_requests
from gpt2kit.insight.tokens import token_label

CHUNK = 256  # scored rows whose (rows, V) float32 log-probabilities exist at once (51 MB)
GLTR_BUCKETS = (10, 100, 1000)  # GLTR's colours: top 10 green, top 100 yellow, top 1000 red, else purple
LN2 = math.log(2)


@dataclass(frozen=True)
class PositionStats:
    """Per scored token (N of them), as tensors on the CPU.

    logprob (N,) float64 log p(token | before), nats; rank (N,) long, 1 = the model's top choice;
    top_ids / top_logprobs (N, k) the k most likely tokens at that position; expected (N,) float64
    E_{x~p}[log p(x)] (minus the entropy); variance (N,) float64 Var_{x~p}[log p(x)]."""

    logprob: torch.Tensor
    rank: torch.Tensor
    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    expected: torch.Tensor
    variance: torch.Tensor
    n_windows: int

    def prefix(self, n: int) -> PositionStats:
        """The first n tokens' stats: what scoring only the text's first n tokens gives (the model is causal
        and, within the first window, reads the same context)."""
        return PositionStats(*(t[:n] for t in (self.logprob, self.rank, self.top_ids, self.top_logprobs,
                                               self.expected, self.variance)), n_windows=self.n_windows)  # fmt: skip


@dataclass(frozen=True)
class TokenScore:
    index: int  # position in the text's tokens
    token_id: int
    text: str  # the text this token completes (a split character goes with its last piece): joined = the text
    label: str  # readable form (token_label)
    logprob: float  # nats
    bits: float  # surprisal, -log2 p
    rank: int
    top: list[tuple[str, float]]  # (label, probability) of the top alternatives


@dataclass(frozen=True)
class TextScores:
    tokens: list[TokenScore]
    nll: float  # nats, summed over the tokens
    n_bytes: int
    n_windows: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / len(self.tokens))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / LN2 / self.n_bytes

    @property
    def buckets(self) -> dict[str, float]:
        """GLTR: the fraction of tokens whose rank is within the top 10, 100, 1000 (cumulative)."""
        n = len(self.tokens)
        return {f"top{b}": sum(t.rank <= b for t in self.tokens) / n for b in GLTR_BUCKETS}

    def summary(self) -> dict:
        return {"tokens": len(self.tokens), "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "nll_nats": self.nll, "windows": self.n_windows, "gltr": self.buckets}  # fmt: skip

    def to_dict(self) -> dict:
        rows = [{"index": t.index, "token_id": t.token_id, "text": t.text, "label": t.label, "logprob": t.logprob,
                 "bits": t.bits, "rank": t.rank, "top": [{"token": a, "prob": p} for a, p in t.top]}
                for t in self.tokens]  # fmt: skip
        return {"summary": self.summary(), "tokens": rows}


def position_stats(model, seq: list[int], stride: int | None = None, top: int = 5, n_vocab: int = 50257) -> PositionStats:
    """Score S[1:] of seq (S[0] is context only) in eval's sliding windows -> PositionStats (N = len(seq) - 1)."""
    requests = window_requests(seq, model.config.n_positions, stride)
    if not requests:
        raise InputError("the text has no tokens to score.")
    max_len, device = model.config.n_positions, model.lm_head.weight.device
    parts: list[tuple[torch.Tensor, ...]] = []
    with eval_mode(model):
        for ctx, cont in requests:
            whole = (list(ctx) + list(cont))[-(max_len + 1) :]  # as score_tokens reads a request
            x = torch.tensor([whole[:-1]], dtype=torch.long, device=device)  # (1, T)
            k = len(cont)
            h = model.hidden_states(x)[0, -k:]  # (k, C): the positions that predict `cont`
            targets = torch.tensor(whole[-k:], device=device)  # (k,)
            for s in range(0, k, CHUNK):
                parts.append(_row_stats(model, h[s : s + CHUNK], targets[s : s + CHUNK], top, n_vocab))
    cat = [torch.cat([p[i] for p in parts]).cpu() for i in range(6)]
    return PositionStats(*cat, n_windows=len(requests))


def _row_stats(model, h: torch.Tensor, targets: torch.Tensor, top: int, n_vocab: int) -> tuple[torch.Tensor, ...]:
    """(r, C) hidden states, (r,) targets -> logprob, rank, top ids, top logprobs, E[log p], Var[log p]."""
    lp = torch.log_softmax(model.lm_head(h)[:, :n_vocab].float(), dim=-1)  # (r, V)
    tgt = lp.gather(1, targets[:, None])  # (r, 1)
    rank = (lp > tgt).sum(dim=1) + 1  # (r,): 1 + how many tokens are more likely
    top_lp, top_ids = torch.topk(lp, top, dim=-1)  # (r, k)
    plp = lp.exp() * lp  # (r, V)
    expected = plp.sum(dim=1, dtype=torch.float64)  # (r,): 50k terms, added in float64
    variance = (plp * lp).sum(dim=1, dtype=torch.float64) - expected.square()  # (r,)
    return tgt[:, 0].double(), rank, top_ids, top_lp, expected, variance


def score_text(model, tokenizer, text: str, stride: int | None = None, top: int = 5) -> TextScores:
    """Every token of `text` (with <|endoftext|> in front, as eval's perplexity) -> TextScores."""
    ids = tokenizer.encode_ordinary(text)
    if not ids:
        raise InputError("the text is empty: there is nothing to score.")
    stats = position_stats(model, [GPT2_EOT_ID] + ids, stride, top, tokenizer.n_vocab)
    tokens = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    top_ids, top_p = stats.top_ids.tolist(), stats.top_logprobs.exp().tolist()
    for i, (t, lp, r) in enumerate(zip(ids, stats.logprob.tolist(), stats.rank.tolist())):
        b = tokenizer.token_bytes(t)
        alts = [(token_label(tokenizer.token_bytes(a)), p) for a, p in zip(top_ids[i], top_p[i])]
        tokens.append(TokenScore(i, t, decoder.decode(b, final=i == len(ids) - 1), token_label(b), lp, -lp / LN2, r, alts))
    return TextScores(tokens, -float(stats.logprob.sum()), len(tokenizer.decode_bytes(ids)), stats.n_windows)
