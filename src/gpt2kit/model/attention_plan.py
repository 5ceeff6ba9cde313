"""The dtype a 16-bit model's decode attention runs in: the model's own or float32, whichever this machine runs faster.

A decode step attends one query per row to every cached key and value (SDPA). In a bf16 or fp16 model that
attention can run in the model's dtype or in float32, and which is faster depends on the CPU's kernels, not
on the math. On a 2-core AMD EPYC VM (Zen 4: AVX-512 BF16, no AMX; torch 2.13, 12 heads of 64), SDPA for one
bf16 query took 72 us over 64 cached keys and 743 us over 1024: torch's flash kernel multiplies the 16-bit
blocks with a generic loop there. In float32, over a float32 cache, it took 19 and 110 us. So, as for the
linear kernels (kernels.py), both are timed the first time a model shape, dtype and batch runs on a machine,
through the model's own `CausalSelfAttention.attend`, and the faster is kept: cached with the kernel choices
(kernels.json), shown by `gpt2kit info --kernels`, forced by GPT2KIT_ATTENTION=model|float32. A float32 model,
and any model off the CPU, has nothing to choose.

With float32 chosen, the engine keeps its KV cache in float32, which holds twice the bytes of a 16-bit cache,
when that cache is at most FLOAT32_CACHE_MAX; a larger one (a server's many long rows) stays in the model's
dtype, and each layer converts the keys and values it reads. The measurement times the variant that will run.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict

import torch

from gpt2kit.errors import ConfigError
from gpt2kit.model.gpt import GPT, CausalSelfAttention
from gpt2kit.model.kernels import Choice, machine_key, read_choices, write_choices
from gpt2kit.model.kv_cache import StepPlan

CANDIDATES = ("model", "float32")
ENV = "GPT2KIT_ATTENTION"
KEYS_TIMED = (64, 512)  # cached keys one query attends: early in a generation, and well into it
CALLS_TIMED = 15  # per candidate and key count, alternating candidates; the median counts
FLOAT32_CACHE_MAX = 1 << 30  # bytes: a float32 KV cache for a 16-bit model is kept only up to this size


def cache_bytes(model: GPT, batch: int, max_len: int, dtype: torch.dtype) -> int:
    """Bytes of a (L, 2, batch, nh, max_len, hs) KV cache in `dtype`."""
    c = model.config
    return c.n_layer * 2 * batch * max_len * c.n_embd * dtype.itemsize


def float32_cache_fits(model: GPT, batch: int, max_len: int) -> bool:
    """Whether a float32 choice keeps the engine's cache of `batch` rows of `max_len` in float32."""
    return cache_bytes(model, batch, max_len, torch.float32) <= FLOAT32_CACHE_MAX


def plan_attention(model: GPT, batch: int, float32_cache: bool, remeasure: bool = False) -> Choice:
    """The measured (or cached) Choice for `model`'s decode attention at `batch` rows: kind 'model' or 'float32'.
    float32_cache: whether a float32 choice would read a float32 cache (else it converts a 16-bit one)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if dtype == torch.float32 or device.type != "cpu":
        return Choice("attention", batch, "model")
    forced = os.environ.get(ENV)
    if forced:
        if forced not in CANDIDATES:
            raise ConfigError(f"{ENV}={forced!r} is not an attention dtype; use one of {list(CANDIDATES)}.")
        return Choice("attention", batch, forced)
    c = model.config
    key = f"{dtype} | attention {c.n_head}x{c.head_dim} | {batch} rows | {'float32' if float32_cache else 'model'} cache"
    store = read_choices()
    table = store.setdefault(machine_key(), {})
    if key in table and not remeasure and table[key].get("kind") in CANDIDATES:
        return Choice(**{**table[key], "cached": True})
    us = _measure(model.transformer.h[0].attn, batch, dtype, float32_cache)
    choice = Choice("attention", batch, min(us, key=us.get), us=us)
    table[key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
    write_choices(store)
    return choice


def _measure(attn: CausalSelfAttention, batch: int, dtype: torch.dtype, float32_cache: bool) -> dict[str, float]:
    """Median microseconds of one decode step's attention call per candidate, summed over KEYS_TIMED."""
    g = torch.Generator().manual_seed(0)
    nh, hs = attn.n_head, attn.n_embd // attn.n_head
    us = dict.fromkeys(CANDIDATES, 0.0)
    before = attn.compute_dtype
    try:
        for K in KEYS_TIMED:
            q = torch.randn(batch, nh, 1, hs, generator=g).to(dtype)  # (B, nh, 1, hs)
            kv = torch.randn(2, batch, nh, K, hs, generator=g).to(dtype)  # (2, B, nh, K, hs): a cache's keys, values
            caches = {"model": kv, "float32": kv.float() if float32_cache else kv}
            plan = StepPlan(cols=torch.full((batch, 1), K - 1), position_ids=torch.full((batch, 1), K - 1),
                            attn_mask=None, n_keys=K, col=K - 1, causal=True)  # fmt: skip
            times: dict[str, list[float]] = {kind: [] for kind in CANDIDATES}
            for i in range(CALLS_TIMED + 2):  # the first two calls of each are warm-up
                for kind in CANDIDATES:
                    attn.compute_dtype = torch.float32 if kind == "float32" else None
                    k, v = caches[kind].unbind(0)
                    t0 = time.perf_counter()
                    attn.attend(q, k, v, plan)
                    if i >= 2:
                        times[kind].append(time.perf_counter() - t0)
            for kind in CANDIDATES:
                us[kind] += statistics.median(times[kind]) * 1e6
    finally:
        attn.compute_dtype = before
    return {kind: round(t, 1) for kind, t in us.items()}
