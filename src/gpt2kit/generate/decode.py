"""DecodeRunner: the forward passes the engine needs, prefill (many tokens) and decode (one token per row).

Prefill is the model's own `hidden_states` (SDPA over the prompt) followed by the head on the LAST
position only: a 32-token prompt would otherwise compute a (32, 50257) logits matrix to use one row.

Decode (T = 1) is where a CPU spends its time, and it is memory-bound: every step streams all weights
once, so tokens/s ~ memory bandwidth / weight bytes. The fast path computes the model's exact math with
weights packed once for small-M products (measured on the 2-core AVX-512 machine, 124M, all matmuls of
one token, 1 thread; see benchmarks/RESULTS.md for end-to-end figures):
  - fp32 and bf16 on CPU: oneDNN's blocked weight layout (`mkldnn._reorder_linear_weight`, what
    torch.compile's CPU backend uses): bf16 12.7 ms vs 25.1 ms for `F.linear`; fp32 batch 8 36 ms vs 78 ms
    for MKL on pre-transposed weights (fallback where oneDNN is missing), batch 1 about equal;
  - `weights="bf16"`: weight-only bf16 (matmul inputs cast to bf16, residual stream, LayerNorm, attention
    and cache stay in the model's dtype);
  - `weights="int8"`: weight-only int8, one scale per output channel (`torch._weight_int8pack_mm`, whose
    fast kernel needs bf16 inputs: with fp32 inputs it is 10x slower): 12.5 ms at 1 thread, 4.4 ms at 2.
    Prefill still uses the model's own weights, so only the decode steps see the quantization error;
  - attention for one query is a (nh, 1, K) matvec: two small matmuls and a masked softmax instead of
    SDPA, whose CPU kernel for a single masked query dominated a torch.profiler trace of the step;
  - the step reads and writes the cache through `KVCache.plan/update`, so masks, positions and per-row
    lengths are exactly the model's.
The packed copies cost extra memory (auto: one more copy of the weights; bf16: half; int8: a quarter).
Cached fp32 decode equals the model's uncached forward to ~1e-5 (tests/test_engine.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gpt2kit.device import cpu_has_bf16
from gpt2kit.errors import ConfigError
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kv_cache import KVCache

WEIGHT_MODES = ("auto", "model", "bf16", "int8")


class _Matvec:
    """One nn.Linear packed for x (B, in) -> (B, out), in x's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mode: str) -> None:
        self.bias = bias
        self.mode = mode
        w = weight.detach()
        if mode in ("onednn", "bf16-onednn"):  # oneDNN's own blocked layout, packed once (what inductor uses)
            self.w = torch.ops.mkldnn._reorder_linear_weight(w if mode == "onednn" else w.to(torch.bfloat16), 1)
            self.b = None if bias is None else (bias.detach() if mode == "onednn" else bias.detach().to(torch.bfloat16))
        elif mode == "t":  # (in, out) row-major: MKL's faster fp32 matvec layout
            self.w = w.t().contiguous()
        elif mode == "bf16":  # weight-only bf16: (out, in) bf16, activations cast at the matmul
            self.w = w.to(torch.bfloat16).contiguous()
            self.b16 = bias.detach().to(torch.bfloat16) if bias is not None else None
        elif mode == "int8":  # symmetric per-output-channel int8, bf16 scales (the kernel's fast path)
            w = w.float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (out,)
            self.w = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()  # (out, in)
            self.scale = scale.to(torch.bfloat16)
        else:
            self.w = w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.w, self.b, "none", [], "")
        if self.mode == "bf16-onednn":
            return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.w, self.b, "none", [], "").to(x.dtype)
        if self.mode == "t":
            return torch.addmm(self.bias, x, self.w) if self.bias is not None else torch.mm(x, self.w)
        if self.mode == "bf16":
            return F.linear(x.to(torch.bfloat16), self.w, self.b16).to(x.dtype)
        if self.mode == "int8":  # with fp32 activations this kernel is ~10x slower than with bf16 (measured)
            y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.w, self.scale).to(x.dtype)
            return y + self.bias if self.bias is not None else y
        return F.linear(x, self.w, self.bias)


class DecodeRunner:
    """Prefill and one-token decode for an Engine. weights: 'auto' (best exact layout for the model's
    dtype), 'model' (the model's own modules, no packing), 'bf16' (weight-only bf16 decode: residual
    stream, LayerNorm, attention and cache stay in the model's dtype) or 'int8' (weight-only int8 decode)."""

    def __init__(self, model: GPT, weights: str = "auto") -> None:
        if weights not in WEIGHT_MODES:
            raise ConfigError(f"decode weights must be one of {WEIGHT_MODES}, got {weights!r}.")
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        if weights == "int8" and (device.type != "cpu" or not hasattr(torch, "_weight_int8pack_mm")):
            raise ConfigError("int8 weights need the CPU and torch >= 2.4 (torch._weight_int8pack_mm); use --dtype bf16 instead.")
        self.model = model
        self.weights = weights
        onednn = device.type == "cpu" and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        onednn_bf16 = onednn and cpu_has_bf16()  # on an AVX2-only CPU oneDNN's bf16 kernels refuse to run
        if onednn and dtype == torch.float32:
            auto, bf16 = "onednn", "bf16-onednn" if onednn_bf16 else "bf16"
        elif onednn_bf16 and dtype == torch.bfloat16:
            auto = bf16 = "onednn"
        else:
            auto = "t" if dtype == torch.float32 and device.type == "cpu" else "linear"
            bf16 = "bf16" if dtype != torch.bfloat16 else "linear"
        mode = {"int8": "int8", "bf16": bf16, "model": "linear"}.get(weights, auto)
        self.mode = mode
        self.layers = []
        if weights != "model":
            for block in model.transformer.h:
                self.layers.append(
                    tuple(
                        _Matvec(lin.weight, lin.bias, mode)
                        for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj)
                    )  # fmt: skip
                )
            self.head = _Matvec(model.lm_head.weight, None, mode)

    @torch.inference_mode()
    def prefill(self, idx: torch.Tensor, cache: KVCache, mask: torch.Tensor | None, logits: bool = True) -> torch.Tensor | None:
        """(B, T) ids (left-padded per `mask`) -> (B, V) next-token logits; fills the cache rows."""
        h = self.model.hidden_states(idx, cache, mask)  # (B, T, C)
        if not logits:
            return None
        return self.model.lm_head(h[:, -1])  # (B, V)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, 1) ids -> (B, V) logits, appending one column per row to the cache."""
        if self.weights == "model":
            return self.model.lm_head(self.model.hidden_states(tokens, cache, mask)[:, -1])
        return self._decode_packed(tokens, cache, mask)

    def _decode_packed(self, tokens: torch.Tensor, cache: KVCache, mask: torch.Tensor | None) -> torch.Tensor:
        tr = self.model.transformer
        cfg = self.model.config
        B, C, nh = tokens.shape[0], cfg.n_embd, cfg.n_head
        hs = C // nh
        plan = cache.plan(1, mask)
        x = tr.wte(tokens[:, 0]) + tr.wpe(plan.position_ids[:, 0])  # (B, C)
        bias = torch.zeros(plan.attn_mask.shape, dtype=x.dtype, device=x.device)  # (B, 1, 1, K)
        bias.masked_fill_(~plan.attn_mask, -math.inf)  # additive mask, shared by all layers
        scale = 1.0 / math.sqrt(hs)
        for layer, (block, (c_attn, a_proj, c_fc, m_proj)) in enumerate(zip(tr.h, self.layers)):
            h = block.ln_1(x)
            q, k, v = c_attn(h).split(C, dim=1)  # 3 x (B, C)
            q = q.view(B, nh, 1, hs)  # (B, nh, 1, hs)
            k_all, v_all = cache.update(layer, k.view(B, nh, 1, hs), v.view(B, nh, 1, hs), plan)  # (B, nh, K, hs)
            att = torch.matmul(q, k_all.to(q.dtype).transpose(-1, -2)).mul_(scale).add_(bias)  # (B, nh, 1, K)
            y = torch.matmul(torch.softmax(att, dim=-1), v_all.to(q.dtype))  # (B, nh, 1, hs)
            x = x + a_proj(y.view(B, C))  # (B, C)
            x = x + m_proj(F.gelu(c_fc(block.ln_2(x)), approximate="tanh"))
        return self.head(tr.ln_f(x))  # (B, V)
