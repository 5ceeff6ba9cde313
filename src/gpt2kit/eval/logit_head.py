"""LogitHead: the output layer for scoring — final hidden states -> log p(target) and "target is the argmax".

Scoring needs two numbers per position, log p(target) = logit[target] - logsumexp(logits) and whether the
target is the argmax, never the (M, V) log-probabilities themselves. On the CPU the naive
`log_softmax(lm_head(h))` spends a third of its time outside the matrix product: every (M, 50257) float32
temporary is a fresh mmap that page-faults in, and `torch.logsumexp` makes two more of them. So:

  - the logits are made CHUNK rows at a time into one reused buffer (`torch.mm(..., out=)`), and the
    log-sum-exp runs in place in it (max + argmax in one pass, then subtract, exp and sum), so no (M, V)
    temporary is ever allocated;
  - on the CPU the weight is copied once, padded from 50257 to a multiple of 64 rows: MKL runs the
    50304-wide product about 30 % faster than the 50257-wide one (measured on the 2-core AVX2 machine,
    2048 rows: 623 vs 878 ms per 1024 rows); the padding columns are never read.

Measured there for 4096 positions of 124M: 4.5 s -> 3.2 s, with identical log-probabilities. Models in a
lower precision (bf16/fp16, on GPUs) keep the plain path: logits in the model's dtype, upcast per chunk.
Build one LogitHead per scoring call (the padded copy costs one pass over the weight) and drop it after.
"""

from __future__ import annotations

import torch

CHUNK = 1024  # rows of logits at once: 1024 x 50304 x 4 B = 206 MB, reused
PAD = 64


class LogitHead:
    def __init__(self, model, chunk: int = CHUNK) -> None:
        w = model.lm_head.weight.detach()  # (V, C)
        self.vocab = w.shape[0]
        self.chunk = chunk
        self.fast = w.dtype == torch.float32
        if self.fast and w.device.type == "cpu" and self.vocab % PAD:
            padded = w.new_zeros(-(-self.vocab // PAD) * PAD, w.shape[1])
            padded[: self.vocab] = w
            w = padded
        self.weight = w  # (Vp, C)
        self.lm_head = model.lm_head
        self._buf: torch.Tensor | None = None

    def __call__(self, h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h: (M, C) final hidden states (after ln_f); targets: (M,) next tokens ->
        (log p(target) (M,) float32, target is the argmax (M,) bool)."""
        lps, oks = [], []
        for s in range(0, h.shape[0], self.chunk):
            hs, t = h[s : s + self.chunk], targets[s : s + self.chunk]
            lp, ok = self._chunk(hs, t) if self.fast else self._plain(hs, t)
            lps.append(lp)
            oks.append(ok)
        if not lps:
            return h.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.bool, device=h.device)
        return torch.cat(lps), torch.cat(oks)

    def _chunk(self, h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = h.shape[0]
        if self._buf is None or self._buf.shape[0] < m:
            self._buf = torch.empty(m, self.weight.shape[0], device=h.device)
        buf = self._buf[:m]
        torch.mm(h, self.weight.t(), out=buf)  # (m, Vp)
        logits = buf[:, : self.vocab]  # (m, V) view
        target = logits.gather(1, t[:, None])[:, 0]  # before the in-place steps below
        top, argmax = logits.max(dim=-1)  # (m,), (m,)
        logits.sub_(top[:, None]).exp_()
        return target - (top + logits.sum(dim=-1).log()), argmax == t

    def _plain(self, h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.lm_head(h).float()  # (m, V)
        return logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1), logits.argmax(dim=-1) == t
