"""Log-likelihood of continuations: the one scoring primitive every evaluation task is built on.

A request is a pair of token lists (context, continuation). Its score is the summed log-probability
of the continuation tokens given everything before them, and whether greedy decoding would have
produced exactly the continuation (`is_greedy`). This is lm-evaluation-harness's `loglikelihood`
contract, computed the same way its HFLM does:

  - the model reads (context + continuation)[-(n_positions + 1):][:-1], i.e. the context is cut from
    the left when the pair is longer than the model's window, and the last token is never an input;
  - the logits at the last len(continuation) positions predict the continuation tokens.

What we do differently is only how fast: requests are sorted by length and batched with right padding
(a causal model's real positions never see padding to their right, so no attention mask is needed);
the vocabulary projection (`lm_head`, a third of the FLOPs of 124M) runs
only on the positions that are scored, through `LogitHead` (on the CPU: vocabulary blocks and an online
log-sum-exp, so a batch never materialises (B, T, V) logits); on the CPU the blocks run through an
inference copy of the model with the kernels this machine runs fastest (`scoring_copy`); and results stay
on the device until the end (no host sync per batch).

Text -> token pairs (`encode_pair`) follows lm-eval's TemplateLM: trailing whitespace of the context
moves to the continuation, the pair is encoded as one string, and the continuation is whatever follows
the context's own tokens; an empty context becomes <|endoftext|>.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import InputError
from gpt2kit.eval.logit_head import LogitHead
from gpt2kit.model.attention_plan import apply_causal, plan_causal
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kernels import PREFILL_ROWS, KernelLinear, inference_copy

# On the CPU a batch holds at most this many padded input tokens: at 2048 rows the matrix products already
# run at the CPU's fp32 rate, and bigger batches only add fresh multi-MB activations that glibc maps (and
# page-faults in) per call.
CPU_BATCH_TOKENS = 2048


@dataclass(frozen=True)
class Scores:
    """Per-request results, in request order. logprob: (N,) float64 summed log-probabilities;
    is_greedy: (N,) bool; n_tokens: (N,) int continuation lengths."""

    logprob: torch.Tensor
    is_greedy: torch.Tensor
    n_tokens: torch.Tensor


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context, continuation) text -> token ids, exactly as lm-eval's TemplateLM does for causal models."""
    if context == "":
        cont = tokenizer.encode_ordinary(continuation)
        if not cont:
            raise InputError("empty continuation: there is nothing to score.")
        # lm-eval: the prefix token (<|endoftext|>) is the context, unless the continuation starts with it.
        return ([GPT2_EOT_ID], cont) if cont[0] != GPT2_EOT_ID else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:  # "The cat" + " sat", never "The cat " + "sat": the space belongs to the next word's token
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode_ordinary(context + continuation)
    ctx = tokenizer.encode_ordinary(context)
    return ctx, whole[len(ctx) :]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run in eval mode and inference mode, then restore the model's train/eval flag (for in-training use)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def score_tokens(
    model,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "scoring",
) -> Scores:
    """Score (context_ids, continuation_ids) pairs; see the module docstring for the exact protocol."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}.")
    max_len = model.config.n_positions
    device = model.lm_head.weight.device
    inputs, n_conts = [], []
    for i, (ctx, cont) in enumerate(requests):
        if len(cont) == 0:
            raise InputError(f"request {i}: the continuation is empty; there is nothing to score.")
        if len(ctx) == 0:
            raise InputError(f"request {i}: the context is empty; start it with <|endoftext|> ({GPT2_EOT_ID}).")
        if len(cont) > max_len:
            raise InputError(f"request {i}: continuation of {len(cont)} tokens is longer than the model's context {max_len}.")
        whole = list(ctx) + list(cont)
        inputs.append(whole[-(max_len + 1) :])  # inputs are [:-1], targets [1:]
        n_conts.append(len(cont))
    n = len(inputs)
    # Longest first (as lm-eval): similar lengths share a batch, and an out-of-memory shows up at once.
    order = sorted(range(n), key=lambda i: -len(inputs[i]))
    logprob = torch.empty(n, dtype=torch.float64, device=device)
    wrong = torch.empty(n, dtype=torch.float32, device=device)
    bar = _progress(n, desc, progress)
    with eval_mode(model):
        scorer = scoring_copy(model)
        head = LogitHead(model, float32_weight=_float32_head(scorer))
        cap = CPU_BATCH_TOKENS if device.type == "cpu" else None
        for idx in _batches(order, [len(inputs[i]) - 1 for i in order], batch_size, cap):
            lp, wr = _score_batch(scorer, head, [inputs[i] for i in idx], [n_conts[i] for i in idx], device)
            where = torch.tensor(idx, device=device)
            logprob[where] = lp
            wrong[where] = wr
            bar.update(len(idx))
    bar.close()
    return Scores(logprob=logprob.cpu(), is_greedy=(wrong == 0).cpu(), n_tokens=torch.tensor(n_conts))


_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its weights' stamp, its scoring copy)
# The rows a scoring copy's kernels are measured for beside PREFILL_ROWS: products of up to twice PREFILL_ROWS (short
# requests batched) run the kind measured for PREFILL_ROWS, longer ones (perplexity's windows: 1024 rows a window) the
# kind measured for SCORING_ROWS. Which is fastest moves with the rows: on a 2-core Zen 3 VM, 124M's c_attn took
# oneDNN 6.4 ms against MKL's 10.8 at 256 rows, 24.2 against 22.9 at 1024 and 113 against 94 at 4096, and oneDNN
# was 10-20 % behind MKL on the other products from 1024 rows on (one layer, medians of seven calls).
SCORING_ROWS = 1024


def scoring_copy(model):
    """What scoring runs on. On the CPU, a GPT's inference copy (model/kernels.py: the same Block.forward, each
    linear layer through the kernel this machine runs fastest for its rows (SCORING_ROWS), c_fc with its GELU; many
    queries attended as measured, attention_plan.plan_causal), kept while the model's weights stay the same
    (same tensors, unmodified). Anything else, a model with LoRA layers, or one with hooks (the copy would skip
    them): the model."""
    if not isinstance(model, GPT) or model.lm_head.weight.device.type != "cpu":
        return model
    stamp = [(p.data_ptr(), p._version) for p in model.parameters()]
    held = _COPIES.get(model)
    if held is not None and held[0] == stamp:
        return held[1]
    try:
        scorer = inference_copy(model, PREFILL_ROWS, "auto", long_rows=SCORING_ROWS)  # a model with LoRA layers: itself
    except ValueError:  # hooks
        return model
    if scorer is model:
        return model
    kind = plan_causal(scorer).kind
    for block in scorer.transformer.h:
        apply_causal(block.attn, kind)
    _COPIES[model] = (stamp, scorer)
    return scorer


def _float32_head(scorer) -> torch.Tensor | None:
    """The (V, C) float32 head weight a scoring copy's `float32` kernel holds for many rows (a bf16 model on a CPU
    that emulates bf16 products), else None. Only that kind's is packed here (a copy packs its prompt kernels on their
    first call, and the scoring head runs apart from the copy's own)."""
    head = scorer.lm_head
    return head.prompt_kernel().w if isinstance(head, KernelLinear) and head.kinds[1] == "float32" else None


def _batches(order: list[int], lengths: list[int], batch_size: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Consecutive runs of `order` (longest first) of at most batch_size requests and, with max_tokens, at
    most max_tokens padded input tokens (a single longer request still makes a batch of its own)."""
    start = 0
    while start < len(order):
        size = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // max(lengths[start], 1)))
        yield order[start : start + size]
        start += size


def _score_batch(
    model, head: LogitHead, seqs: list[list[int]], n_conts: list[int], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """One right-padded batch: (summed log-prob (B,), number of non-greedy tokens (B,))."""
    B, T = len(seqs), max(len(s) for s in seqs) - 1
    x = torch.zeros(B, T, dtype=torch.long)  # padding id 0: causal attention keeps it out of real positions
    rows, cols, targets, owner = [], [], [], []
    for b, (s, k) in enumerate(zip(seqs, n_conts)):
        L = len(s) - 1
        x[b, :L] = torch.tensor(s[:-1])
        rows += [b] * k
        cols += range(L - k, L)  # the logits at these positions predict the continuation
        targets += s[L + 1 - k :]
        owner += [b] * k
    x = x.to(device, non_blocking=True)
    h = model.hidden_states(x)  # (B, T, C)
    h = h[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (M, C): scored positions only
    tok_lp, tok_ok = head(h, torch.tensor(targets, device=device))  # (M,), (M,)
    owner_t = torch.tensor(owner, device=device)
    lp = torch.zeros(B, dtype=torch.float64, device=device).index_add_(0, owner_t, tok_lp.double())
    wrong = torch.zeros(B, dtype=torch.float32, device=device).index_add_(0, owner_t, (~tok_ok).float())
    return lp, wrong


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=not enabled, dynamic_ncols=True, leave=False)


__all__ = ["Scores", "encode_pair", "eval_mode", "score_tokens", "scoring_copy"]
