"""The LM head and its cross-entropy in one pass over row chunks, without the (N, V) logits.

    loss = lm_head_loss(h, model.lm_head.weight, targets, n_valid=model.config.real_vocab_size)

is `F.cross_entropy((h @ W^T).float(), targets, ignore_index=IGNORE_INDEX)`, the mean over the counted
targets, computed `chunk_rows` rows at a time. For GPT-2 124M at 16 x 1024 tokens the plain path holds the
(16384, 50304) logits in bf16 (1.6 GB), their fp32 copy (3.3 GB) and the fp32 softmax gradient (3.3 GB);
here only one chunk of them lives at a time. As in Liger-Kernel's fused linear cross-entropy, the forward
also computes the gradients while each chunk's softmax is at hand (when h or W needs one),

    grad_h[rows] = (softmax - onehot) @ W,        grad_W += (softmax - onehot)^T @ h[rows]

with grad_W accumulated in fp32 across chunks, and autograd keeps only those two, (N, C) and (V, C): no
(N, V) tensor, and no second h @ W^T in the backward, which just scales them by the incoming gradient.

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
    if not torch.is_grad_enabled():  # evaluation: detached inputs, so the forward computes no gradients
        h, weight = h.detach(), weight.detach()
    return _HeadLoss.apply(h.reshape(-1, C), weight, targets.reshape(-1), n_valid, chunk_rows)


def _compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """What `F.linear(h, weight)` would compute in: the autocast dtype when autocast is on, else promotion."""
    dev = h.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(h.dtype, weight.dtype)


def _chunk_logits(h_c: torch.Tensor, w: torch.Tensor, n_valid: int, bufs: dict) -> torch.Tensor:
    """(n, C) @ (V, C)^T -> (n, V) float32 logits, rounded to the compute dtype first; padding -> -inf. The
    products are written into buffers kept in `bufs` for every chunk ({dtype: (chunk, V)}): a fresh 258 MB
    block per chunk would fault in every page again (glibc hands blocks that large back to the kernel)."""
    n, V = h_c.shape[0], w.shape[0]

    def buf(dtype: torch.dtype) -> torch.Tensor:  # (n, V)
        if dtype not in bufs:
            bufs[dtype] = torch.empty(n, V, dtype=dtype, device=w.device)
        return bufs[dtype][:n]

    logits = buf(torch.float32)
    if w.dtype == torch.float32:
        torch.mm(h_c, w.t(), out=logits)
    else:
        logits.copy_(torch.mm(h_c, w.t(), out=buf(w.dtype)))
    if n_valid < V:
        logits[:, n_valid:] = float("-inf")
    return logits


class _HeadLoss(torch.autograd.Function):
    """Forward computes the loss and, when an input needs it, the gradients too (one pass over the chunks,
    no recompute); backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, h, weight, targets, n_valid: int, chunk_rows: int):
        # h (N, C), weight (V, C), targets (N,) -> loss ()
        dtype = _compute_dtype(h, weight)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.to(dtype), weight.to(dtype)
            N = hc.shape[0]
            counted = targets != IGNORE_INDEX  # (N,)
            safe = torch.where(counted, targets, 0)  # (N,): any real id where ignored
            n_counted = counted.sum()
            row_scale = counted / n_counted  # (N,): d loss / d row loss, 0 where ignored (nan if none count)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            grad_h = torch.empty(hc.shape, dtype=h.dtype, device=h.device) if want_h else None  # (N, C)
            grad_w = torch.zeros(wc.shape, dtype=torch.float32, device=h.device) if want_w else None  # (V, C)
            bufs: dict = {}  # the chunks' logits buffers (_chunk_logits)
            for a in range(0, N, chunk_rows):
                b = min(a + chunk_rows, N)
                logits = _chunk_logits(hc[a:b], wc, n_valid, bufs)  # (n, V)
                picked = logits.gather(1, safe[a:b, None]).squeeze(1)  # (n,)
                # the softmax in place, its normaliser kept: exp(x - max) / sum, lse = max + log(sum)
                top = logits.amax(dim=1)  # (n,)
                e = logits.sub_(top[:, None]).exp_()  # (n, V); padding: exp(-inf) = 0
                sums = e.sum(dim=1)  # (n,)
                total += torch.where(counted[a:b], top + sums.log() - picked, 0.0).sum()
                if want_h or want_w:
                    _chunk_grads(e, sums, safe[a:b], row_scale[a:b], hc[a:b], wc, grad_h, grad_w, a, b)
            loss = total / n_counted  # 0/0 = nan when nothing counts, like F.cross_entropy
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss  # () ; 1.0 for loss.backward(), 1/accum for loss / accum
        return (None if grad_h is None else grad_h * scale.to(grad_h.dtype),
                None if grad_w is None else grad_w * scale.to(grad_w.dtype), None, None, None)  # fmt: skip


def _chunk_grads(e, sums, targets, row_scale, h_c, w, grad_h, grad_w, a: int, b: int) -> None:
    """The chunk's d loss / d logits = (softmax - onehot) * row_scale, from e = exp(logits - max) and its row
    sums, in place in e, rounded to the compute dtype as the plain path's Linear backward sees it, then
    grad_h[a:b] = it @ W and grad_W += it^T @ h_c."""
    d = e.mul_((row_scale / sums)[:, None])  # (n, V) softmax * row_scale
    d.scatter_add_(1, targets[:, None], -row_scale[:, None].to(d.dtype))  # - onehot * row_scale
    d = d.to(w.dtype)
    if grad_h is not None:
        grad_h[a:b] = d @ w  # (n, C)
    if grad_w is not None:
        if d.dtype == torch.float32:
            grad_w.addmm_(d.t(), h_c)  # (V, C) += (V, n) @ (n, C)
        else:  # the matmul accumulates in fp32 inside; its output rounds once per chunk
            grad_w += (d.t() @ h_c).float()
