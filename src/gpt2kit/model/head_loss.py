"""The LM head and its cross-entropy in one pass over row chunks, without the (N, V) logits.

    loss = lm_head_loss(h, model.lm_head.weight, targets, n_valid=model.config.real_vocab_size)

is `F.cross_entropy((h @ W^T).float(), targets, ignore_index=IGNORE_INDEX)`, the mean over the counted
targets, computed `chunk_rows` rows at a time. For GPT-2 124M at 16 x 1024 tokens the plain path holds the
(16384, 50304) logits in bf16 (1.6 GB), their fp32 copy (3.3 GB) and the fp32 softmax gradient (3.3 GB);
here only one chunk of them lives at a time, and what autograd keeps for the backward is h, W, the targets
and one log-sum-exp per row: no (N, V) tensor at all. The backward recomputes each chunk's logits (one more
h @ W^T, ~1/3 more head FLOPs) and writes

    grad_h[rows] = (softmax - onehot) @ W,        grad_W += (softmax - onehot)^T @ h[rows]

with grad_W accumulated in fp32 across chunks.

Numerics follow the plain path exactly: under autocast the matmul runs in the autocast dtype and its
output is rounded to it before the fp32 softmax (as `lm_head(h).float()` is), and the softmax gradient is
rounded to it again before the two backward matmuls (as the Linear's backward sees it).

Padded vocabulary: W may have more rows than real tokens (50304 = 50257 rounded up to a multiple of 64,
so the head's matmuls tile evenly). Columns n_valid..V-1 are left out of the softmax (their logits are
set to -inf after the matmul), so the loss and every gradient equal the unpadded model's on W[:n_valid],
and the padded rows get exactly zero gradient. nanoGPT instead lets the padded rows take part in the
softmax; the loss then depends on them, and dropping them on export changes the model. We keep the
padded model and the exported 50257-row model the same function.
"""

from __future__ import annotations

import torch

from gpt2kit.config import IGNORE_INDEX

# Rows per chunk: at most this many bytes of fp32 logits (V = 50304: 1280 rows, 258 MB) at a time.
CHUNK_BYTES = 1 << 28


def lm_head_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    n_valid: int | None = None,
    chunk_rows: int = 0,
) -> torch.Tensor:
    """Mean next-token cross-entropy of the tied head.

    h: (..., C) final hidden states (after ln_f); weight: (V, C) the head; targets: (...) token ids, or
    IGNORE_INDEX for positions without loss. n_valid: real tokens (columns >= n_valid are padding, left out
    of the softmax); None = V. chunk_rows: rows per chunk (0 = as many as fit in CHUNK_BYTES of fp32 logits).
    -> a float32 scalar (nan when every target is IGNORE_INDEX, as F.cross_entropy gives).
    """
    V, C = weight.shape
    if h.shape[-1] != C or h.shape[:-1] != targets.shape:
        raise ValueError(f"lm_head_loss: h {tuple(h.shape)}, weight {tuple(weight.shape)} and targets {tuple(targets.shape)} disagree")
    n_valid = V if n_valid is None else n_valid
    if not 0 < n_valid <= V:
        raise ValueError(f"lm_head_loss: n_valid={n_valid} must be in [1, {V}] (the head's rows)")
    if chunk_rows <= 0:
        chunk_rows = max(64, CHUNK_BYTES // (4 * V) // 64 * 64)
    return _HeadLoss.apply(h.reshape(-1, C), weight, targets.reshape(-1), n_valid, chunk_rows)


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What `F.linear(h, weight)` would compute in: the autocast dtype when autocast is on, else promotion."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


def _chunk_logits(h_c: torch.Tensor, w: torch.Tensor, n_valid: int) -> torch.Tensor:
    """(n, C) @ (V, C)^T -> (n, V) float32 logits, rounded to the compute dtype first; padding -> -inf."""
    logits = (h_c @ w.t()).float()  # (n, V)
    if n_valid < logits.shape[1]:
        logits[:, n_valid:] = float("-inf")
    return logits


class _HeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, n_valid: int, chunk_rows: int):
        # h (N, C), weight (V, C), targets (N,) -> loss ()
        dtype = _compute_dtype(h, weight)
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            N = hc.shape[0]
            counted = targets != IGNORE_INDEX  # (N,)
            safe = torch.where(counted, targets, 0)  # (N,): any real id where ignored
            lse = torch.empty(N, dtype=torch.float32, device=h.device)  # (N,)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for a in range(0, N, chunk_rows):
                b = min(a + chunk_rows, N)
                logits = _chunk_logits(hc[a:b], wc, n_valid)  # (n, V)
                lse[a:b] = torch.logsumexp(logits, dim=1)
                picked = logits.gather(1, safe[a:b, None]).squeeze(1)  # (n,)
                total += torch.where(counted[a:b], lse[a:b] - picked, 0.0).sum()
            n_counted = counted.sum()
            loss = total / n_counted  # 0/0 = nan when nothing counts, like F.cross_entropy
        ctx.save_for_backward(hc, wc, safe, counted, lse, n_counted)
        ctx.meta = (n_valid, chunk_rows, h.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hc, wc, safe, counted, lse, n_counted = ctx.saved_tensors
        n_valid, chunk_rows, h_dtype, w_dtype = ctx.meta
        N = hc.shape[0]
        scale = grad_loss.float() / n_counted  # d loss / d (per-row loss) for counted rows
        grad_h = torch.empty(hc.shape, dtype=h_dtype, device=hc.device) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(wc.shape, dtype=torch.float32, device=wc.device) if ctx.needs_input_grad[1] else None
        with torch.autocast(hc.device.type, enabled=False):
            for a in range(0, N, chunk_rows):
                b = min(a + chunk_rows, N)
                logits = _chunk_logits(hc[a:b], wc, n_valid)  # (n, V)
                d = logits.sub_(lse[a:b, None]).exp_()  # softmax, in place; padding: exp(-inf) = 0
                d.scatter_add_(1, safe[a:b, None], torch.full((b - a, 1), -1.0, device=d.device))  # - onehot
                d.mul_(torch.where(counted[a:b], scale, 0.0)[:, None])  # (n, V) d loss / d logits
                d = d.to(wc.dtype)
                if grad_h is not None:
                    grad_h[a:b] = d @ wc  # (n, C)
                if grad_w is not None:
                    if d.dtype == torch.float32:
                        grad_w.addmm_(d.t(), hc[a:b])  # (V, C) += (V, n) @ (n, C)
                    else:  # the matmul accumulates in fp32 inside; its output rounds once per chunk
                        grad_w += (d.t() @ hc[a:b]).float()
        return grad_h, None if grad_w is None else grad_w.to(w_dtype), None, None, None
