"""Perplexity of text with sliding windows, and the validation loss (`batches_nll`) the training loop uses.

The protocol (docs/evaluation.md has the long form):

  1. The text is encoded with `encode_ordinary` and <|endoftext|> (id 50256) is put in front of it
     (`bos=True`, the default): GPT-2 was trained on EOT-separated documents, so EOT is its
     beginning-of-document token, and with it *every* token of the text is scored. With `bos=False`
     the first token is only context (as in the transformers perplexity guide) and is not scored.
  2. The sequence S (EOT + text tokens) is cut into windows of at most `max_len` (= n_positions, 1024)
     inputs. The first window predicts S[1 : max_len + 1]; every later window predicts the next `stride`
     tokens and reads the `max_len` tokens before each of them, so each scored token sees at least
     max_len - stride tokens of context (after the first window). Every token is scored exactly once.
     These are lm-evaluation-harness's rolling windows (`get_rolling_token_windows` with
     context_len = max_len - stride + 1); stride = max_len is its `loglikelihood_rolling` exactly.
  3. Token perplexity = exp(NLL / scored tokens); bits per byte = NLL / ln 2 / UTF-8 bytes of the scored
     text; word perplexity = exp(NLL / words), words counted as lm-eval does, len(re.split(r"\\s+", text)).
     Bytes and words are those of the scored tokens' text, so the three measure the same predictions.

Windows are independent, so they are batched (right padding) and the vocabulary projection runs only
on the positions each window scores (half of them at stride 512).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from gpt2kit.config import GPT2_EOT_ID, IGNORE_INDEX
from gpt2kit.errors import ConfigError, DataError
from gpt2kit.eval.loglikelihood import eval_mode, score_tokens


@dataclass(frozen=True)
class Window:
    """Inputs S[start:end] predict S[start+1:end+1]; only the last n_pred of those predictions count."""

    start: int
    end: int
    n_pred: int


@dataclass(frozen=True)
class PerplexityResult:
    nll: float  # summed negative log-likelihood, nats
    n_tokens: int  # tokens scored
    n_bytes: int  # UTF-8 bytes of the scored tokens
    n_words: int  # words of the scored text (lm-eval's count_words)
    n_windows: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(self.nll / self.n_tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.n_bytes

    @property
    def byte_perplexity(self) -> float:
        return math.exp(self.nll / self.n_bytes)

    @property
    def word_perplexity(self) -> float:
        return math.exp(self.nll / self.n_words)

    def __add__(self, other: PerplexityResult) -> PerplexityResult:
        return PerplexityResult(self.nll + other.nll, self.n_tokens + other.n_tokens, self.n_bytes + other.n_bytes,
                                self.n_words + other.n_words, self.n_windows + other.n_windows)  # fmt: skip


def count_words(text: str) -> int:
    """lm-evaluation-harness's word count (also counts the empty strings at a leading/trailing space)."""
    return len(re.split(r"\s+", text))


def sliding_windows(n: int, max_len: int, stride: int) -> list[Window]:
    """Windows over a sequence S of n tokens (S[0] is context only) so that S[1:] is each predicted once."""
    if not 1 <= stride <= max_len:
        raise ConfigError(f"stride must be in 1..{max_len} (the window length), got {stride}.")
    if n < 2:
        return []
    targets = n - 1  # S[1:], as lm-eval's token_list with S[0] the prefix token
    first = min(max_len, targets)
    windows = [Window(0, first, first)]
    done = first
    while done < targets:
        k = min(targets - done, stride)
        end = done + k  # predictions S[done+1 : end+1] come from inputs ending at S[end-1] ... S[end]
        windows.append(Window(max(0, end - max_len), end, k))
        done = end
    return windows


def window_requests(seq: Sequence[int], max_len: int, stride: int | None = None) -> list[tuple[list[int], list[int]]]:
    """The (context, continuation) pairs of seq's sliding windows, for `score_tokens`."""
    windows = sliding_windows(len(seq), max_len, max_len if stride is None else stride)
    seq = list(seq)
    return [(seq[w.start : w.end + 1 - w.n_pred], seq[w.end + 1 - w.n_pred : w.end + 1]) for w in windows]


def score_sequence(
    model, ids: Sequence[int], stride: int | None = None, batch_size: int = 8, progress: bool = False
) -> tuple[float, int, int]:
    """Summed NLL of S[1:] given its windows -> (nll, n_tokens_scored, n_windows). S = ids as given."""
    requests = window_requests(ids, model.config.n_positions, stride)
    if not requests:
        return 0.0, 0, 0
    scores = score_tokens(model, requests, batch_size=batch_size, progress=progress, desc="perplexity windows")
    return -float(scores.logprob.sum()), int(scores.n_tokens.sum()), len(requests)


def text_perplexity(
    model,
    tokenizer,
    text: str,
    stride: int | None = None,
    bos: bool = True,
    max_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity of one text (one document) under the protocol above; `max_tokens` keeps only its start."""
    ids = tokenizer.encode_ordinary(text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    seq = [GPT2_EOT_ID] + ids if bos else ids
    scored = ids if bos else ids[1:]
    if not scored:
        raise DataError("the text has too few tokens to score (needs at least one, two with bos=False).")
    nll, n_tok, n_win = score_sequence(model, seq, stride, batch_size, progress)
    assert n_tok == len(scored)
    scored_bytes = tokenizer.decode_bytes(scored)
    return PerplexityResult(nll, n_tok, len(scored_bytes), count_words(scored_bytes.decode("utf-8", "replace")), n_win)


def files_perplexity(
    model, tokenizer, paths: Iterable[str | os.PathLike], max_tokens: int | None = None, **options
) -> PerplexityResult:
    """Each file is one document (its own EOT prefix); results add up. `max_tokens` caps the total;
    `options` are text_perplexity's (stride, bos, batch_size, progress)."""
    from gpt2kit.textfiles import read_text

    total: PerplexityResult | None = None
    left = max_tokens
    for path in paths:
        if left is not None and left <= 0:
            break
        result = text_perplexity(model, tokenizer, read_text(path), max_tokens=left, **options)
        total = result if total is None else total + result
        if left is not None:
            left -= result.n_tokens
    if total is None:
        raise DataError("no text to evaluate: give at least one non-empty text file.")
    return total


def shards_loss(model, data_dir: str | os.PathLike, split: str = "val", batch_size: int = 8) -> tuple[float, int]:
    """Mean loss (nats/token) and tokens scored over a split of `gpt2kit prepare` shards: each shard (its
    documents already start with EOT) is one sequence, every token after its first scored once, in
    non-overlapping windows of the model's context. The protocol of the built-in model's card."""
    import numpy as np

    from gpt2kit.data.shards import find_shards, open_shard

    nll, n = 0.0, 0
    for shard in find_shards(data_dir, split):
        ids = np.asarray(open_shard(shard)).astype(np.int64).tolist()
        s_nll, s_n, _ = score_sequence(model, ids, stride=model.config.n_positions, batch_size=batch_size)
        nll, n = nll + s_nll, n + s_n
    if n == 0:
        raise DataError(f"no {split} tokens to score in {data_dir} (prepare it with --val-tail, e.g. 0.01).")
    return nll / n, n


def batches_nll(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int | None = None,
                autocast=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The validation loss, defined once: (summed NLL in nats, counted targets) over (x, y) batches; the
    token-weighted mean loss is their ratio. Used by the training loop's validation and by `val_perplexity`.

    x, y: (B, T) token ids with y already shifted (y[b, t] follows x[b, t]); IGNORE_INDEX targets do not
    count, so a batch with few valid targets weighs little (a mean of per-batch means would over-weight it).
    `model(x, y) -> (logits, loss)` with loss the mean over its counted targets, under `autocast` (a context
    manager, default none); the caller sets eval mode.
    Returns two 0-d tensors on `device` (default: the model's), with no host sync (a caller all-reduces them).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    acc = torch.float32 if device.type == "mps" else torch.float64  # (MPS has no float64)
    nll, count = torch.zeros((), dtype=acc, device=device), torch.zeros((), dtype=acc, device=device)
    with torch.no_grad():
        for i, (x, y) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast or contextlib.nullcontext():
                _, loss = model(x, y)  # (,) mean over the counted targets
            n = (y != IGNORE_INDEX).sum().to(acc)
            nll += torch.where(n > 0, loss.to(acc) * n, 0.0)  # a batch of ignored targets only has a NaN mean
            count += n
    return nll, count


def val_perplexity(model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int | None = None) -> dict:
    """Mean next-token loss and perplexity over (x, y) batches from a data loader, token-weighted
    (`batches_nll`, the training loop's validation loss).

    Runs in eval + inference mode and restores the model's mode. One host sync, at the end.
    Returns {"val_loss": mean nats/token, "val_perplexity": exp(val_loss), "val_tokens": n}.
    """
    with eval_mode(model):
        nll, count = batches_nll(model, batches, max_batches)
    if int(count) == 0:
        raise DataError("val_perplexity got no batches (or only ignored targets); check the validation loader.")
    mean = float(nll) / int(count)
    return {"val_loss": mean, "val_perplexity": math.exp(mean), "val_tokens": int(count)}
