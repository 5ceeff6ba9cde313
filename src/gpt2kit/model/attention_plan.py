"""How a decode step attends: torch's SDPA in the model's dtype, SDPA in float32, or gemv.c's one-query kernel.

A decode step attends one query per row to every cached key and value. Which implementation is fastest
depends on the CPU and on torch's kernels, not on the math, so, as for the linear kernels (kernels.py), each
candidate is timed the first time a model shape, dtype and batch runs on a machine, through the model's own
`CausalSelfAttention.attend` on one query over 64 and over 512 cached keys, and checked against float64 SDPA.
The fastest that matches is kept: cached with the kernel choices (kernels.json), shown by `gpt2kit info
--kernels`, forced by GPT2KIT_ATTENTION. Off the CPU there is nothing to choose. The candidates:
  - `model`: SDPA in the model's dtype;
  - `float32` (16-bit models): SDPA in float32. On a 2-core AMD EPYC VM (Zen 4: AVX-512 BF16, no AMX; torch
    2.13, 12 heads of 64) SDPA for one bf16 query took 72 us over 64 cached keys and 743 over 1024 (torch's
    flash kernel multiplies 16-bit blocks with a generic loop there); in float32, over a float32 cache, 19 and 110;
  - `gemv` (float32 and bf16 models, where gemv.c builds): attend.c, in gemv.c's library (`gemv.attend`), the
    scores, softmax and weighted sum in float32 over a cache in the model's dtype. On the same VM, warm, it took
    15 us over 64 bf16 keys and 90 over 1024 (SDPA 45 and 667), and about SDPA's time in float32; inside a
    decode step (124M, int8 weights, one process, alternating) a token took 5.25 against SDPA's 5.73 ms.

With `float32` chosen, the engine keeps its KV cache in float32, which holds twice the bytes of a 16-bit
cache, when that cache is at most FLOAT32_CACHE_MAX; a larger one (a server's many long rows) stays in the
model's dtype, and each layer converts the keys and values it reads. The measurement times the variant that
will run.

Many queries (prefill, and every scoring window of `gpt2kit eval`) are chosen the same way, once per model
dtype and head shape (`plan_causal`, timed over 128 and 1024 queries, forced by GPT2KIT_CAUSAL_ATTENTION):
  - `model`: SDPA (is_causal) in the model's dtype;
  - `gemv` (bf16 models, where causal.c builds: AVX-512 BF16): causal.c (`gemv.causal`), flash-style on the
    bf16 dot product. On the Zen 4 VM above a 1024-token window of 12 heads of 64 took 7.3-8.0 ms a layer
    against SDPA's 16.5-17.8.
It runs only plain causal attention in inference (no padding mask, no gradient, no recorded maps); the rest
runs SDPA. Float32 models have one candidate, SDPA, and nothing is timed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
import torch.nn.functional as F

from gpt2kit import machine
from gpt2kit.errors import ConfigError
from gpt2kit.model import gemv
from gpt2kit.model.gpt import GPT, CausalSelfAttention
from gpt2kit.model.kernels import Choice, machine_key, read_choices, write_measured
from gpt2kit.model.kv_cache import StepPlan

CANDIDATES = ("model", "float32", "gemv")
ENV = "GPT2KIT_ATTENTION"
KEYS_TIMED = (64, 512)  # cached keys one query attends: early in a generation, and well into it
CALLS_TIMED = 15  # per candidate and key count, alternating candidates; the median counts
CAUSAL_CANDIDATES = ("model", "gemv")
CAUSAL_ENV = "GPT2KIT_CAUSAL_ATTENTION"
QUERIES_TIMED = (128, 1024)  # queries (and keys) of one row's causal attention, at most the model's context
CAUSAL_CALLS_TIMED = 5
FLOAT32_CACHE_MAX = 1 << 30  # bytes: a float32 KV cache for a 16-bit model is kept only up to this size


def cache_bytes(model: GPT, batch: int, max_len: int, dtype: torch.dtype) -> int:
    """Bytes of a (L, 2, batch, nh, max_len, hs) KV cache in `dtype`."""
    c = model.config
    return c.n_layer * 2 * batch * max_len * c.n_embd * dtype.itemsize


def float32_cache_fits(model: GPT, batch: int, max_len: int) -> bool:
    """Whether a float32 choice keeps the engine's cache of `batch` rows of `max_len` in float32."""
    return cache_bytes(model, batch, max_len, torch.float32) <= FLOAT32_CACHE_MAX


def candidates(dtype: torch.dtype) -> dict[str, str | None]:
    """kind -> None where it can run for a `dtype` model on this CPU, else why not."""
    gemv_why = (
        gemv.unavailable(torch.float32)
        if dtype in gemv.ATTEND_DTYPES
        else f"gemv.c attends in float32 and bf16 only, not {dtype}"
    )
    return {"model": None, "float32": None if dtype != torch.float32 else "the model is float32 already", "gemv": gemv_why}


def apply(attn: CausalSelfAttention, kind: str) -> None:
    """Make `attn` (an inference copy's module) attend one query per row as `kind` does."""
    attn.compute_dtype = torch.float32 if kind == "float32" else None
    attn.one_query = gemv.attend if kind == "gemv" else None
    attn.one_query_step = gemv.attend_step if kind == "gemv" else None


def plan_attention(model: GPT, batch: int, float32_cache: bool, remeasure: bool = False) -> Choice:
    """The measured (or cached) Choice of `model`'s decode attention at `batch` rows: a kind of CANDIDATES.
    float32_cache: whether a float32 choice would read a float32 cache (else it converts a 16-bit one)."""
    dtype, c = next(model.parameters()).dtype, model.config
    key = f"{dtype} | attention {c.n_head}x{c.head_dim} | {batch} rows | {'float32' if float32_cache else 'model'} cache"
    measure = lambda kinds: _measure(model.transformer.h[0].attn, batch, dtype, float32_cache, kinds)  # noqa: E731
    return _plan(model, "attention", batch, ENV, CANDIDATES, candidates(dtype), key, measure, remeasure)


def causal_candidates(model: GPT) -> dict[str, str | None]:
    """kind of CAUSAL_CANDIDATES -> None where it can run for `model` on this CPU, else why not."""
    dtype = next(model.parameters()).dtype
    why = gemv.causal_unavailable(model.config.head_dim) if dtype == torch.bfloat16 else f"causal.c runs bf16 only, not {dtype}"
    return {"model": None, "gemv": why}


def plan_causal(model: GPT, remeasure: bool = False) -> Choice:
    """The measured (or cached) Choice of how `model` attends many queries causally: a kind of CAUSAL_CANDIDATES."""
    dtype, c = next(model.parameters()).dtype, model.config
    key = f"{dtype} | causal attention {c.n_head}x{c.head_dim}"
    measure = lambda kinds: _measure_causal(model, kinds)  # noqa: E731
    return _plan(model, "causal attention", 1, CAUSAL_ENV, CAUSAL_CANDIDATES, causal_candidates(model), key, measure,
                 remeasure)  # fmt: skip


def apply_causal(attn: CausalSelfAttention, kind: str) -> None:
    """Make `attn` attend many queries causally as `kind` does (model: SDPA)."""
    attn.many_query = gemv.causal if kind == "gemv" else None


def apply_to_blocks(model: GPT, kind: str) -> None:
    """Make every block of `model` (an inference copy) attend one query per row as `kind` does, and many queries as
    measured (plan_causal), unless a 16-bit model's attention runs in float32 (then prefill does too: SDPA)."""
    causal = plan_causal(model).kind if kind != "float32" else "model"
    for block in model.transformer.h:
        apply(block.attn, kind)
        apply_causal(block.attn, causal)


def _plan(model: GPT, role: str, rows: int, env: str, kinds: tuple[str, ...], usable: dict[str, str | None], key: str,
          measure: Callable[[list[str]], tuple[dict[str, float], dict[str, str]]], remeasure: bool) -> Choice:  # fmt: skip
    """The Choice of `role`: forced by `env`, else the cached one that still holds, else measured now (`measure`:
    runnable kinds -> (median us per kind, {kind: why its output is wrong})) and cached under `key`. Off the CPU,
    or with one kind to run, nothing is measured."""
    if next(model.parameters()).device.type != "cpu":
        return Choice(role, rows, "model")
    if forced := os.environ.get(env):
        if forced not in kinds:
            raise ConfigError(f"{env}={forced!r} is not an attention kind; use one of {list(kinds)}.")
        if usable[forced]:
            raise ConfigError(f"{env}={forced!r} does not run here ({usable[forced]}); unset it to choose by measurement.")
        return Choice(role, rows, forced)
    runnable = [k for k, why in usable.items() if why is None]
    rejected = {k: why for k, why in usable.items() if why}
    if len(runnable) == 1:
        return Choice(role, rows, runnable[0], rejected=rejected)
    store = read_choices()
    table = store.setdefault(machine_key(), {})
    entry = table.get(key, {})
    if not remeasure and _current(entry, usable, kinds):
        return Choice(**{**entry, "cached": True})
    meter = machine.busy_meter()
    us, wrong = measure(runnable)
    rejected |= wrong
    us = {k: t for k, t in us.items() if k not in rejected}
    choice = Choice(role, rows, min(us, key=us.get) if us else "model", us=us, rejected=rejected)
    table[key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
    write_measured(store, meter, "attention kernels")
    return choice


def _current(entry: dict, usable: dict[str, str | None], kinds: tuple[str, ...]) -> bool:
    """Whether a cached choice still holds: its kind runs here, and every candidate that runs here now was
    judged then (timed, or rejected for its output; one that could not run then was not judged: gemv.c
    once a compiler is installed)."""
    if entry.get("kind") not in kinds or usable.get(entry["kind"]) is not None:
        return False
    rejected = entry.get("rejected", {})
    judged = {*entry.get("us", ()), *(k for k, why in rejected.items() if why.startswith("its output"))}
    return all(k in judged for k, why in usable.items() if why is None)


def _measure(attn: CausalSelfAttention, batch: int, dtype: torch.dtype, float32_cache: bool,
             kinds: list[str]) -> tuple[dict[str, float], dict[str, str]]:  # fmt: skip
    """(median microseconds of one decode step's attention call per kind, summed over KEYS_TIMED; {kind: why
    rejected} for a kind whose output is not float64 SDPA's within its dtype's error)."""
    g = torch.Generator().manual_seed(0)
    nh, hs = attn.n_head, attn.n_embd // attn.n_head
    us, wrong = dict.fromkeys(kinds, 0.0), {}
    before = attn.compute_dtype, attn.one_query, attn.one_query_step
    try:
        for K in KEYS_TIMED:
            q = torch.randn(batch, nh, 1, hs, generator=g).to(dtype)  # (B, nh, 1, hs)
            kv = torch.randn(2, batch, nh, K, hs, generator=g).to(dtype)  # (2, B, nh, K, hs): a cache's keys, values
            caches = {kind: kv.float() if kind == "float32" and float32_cache else kv for kind in kinds}
            plan = one_query_plan(batch, K)
            for kind in kinds:  # checked on (up to) two rows: the reference in float64 is slow for a server's batch
                apply(attn, kind)
                if not _matches(attn, q[:2], *caches[kind][:, :2].unbind(0), dtype):
                    wrong.setdefault(kind, f"its output differs from float64 SDPA's over {K} keys")
            run = lambda kind, q=q, caches=caches, plan=plan: attn.attend(q, *caches[kind].unbind(0), plan)  # noqa: E731
            for kind, t in _alternate(kinds, lambda kind: apply(attn, kind), run, CALLS_TIMED).items():
                us[kind] += t
    finally:
        attn.compute_dtype, attn.one_query, attn.one_query_step = before
    return {kind: round(t, 1) for kind, t in us.items()}, wrong


def _measure_causal(model: GPT, kinds: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """(median microseconds of one layer's causal attention per kind, summed over QUERIES_TIMED; {kind: why
    rejected} for a kind whose output is not float64 SDPA's within bf16's error, checked on two heads)."""
    g = torch.Generator().manual_seed(0)
    attn, c, dtype = model.transformer.h[0].attn, model.config, next(model.parameters()).dtype
    us, wrong = dict.fromkeys(kinds, 0.0), {}
    before = attn.many_query
    try:
        for T in sorted({min(t, c.n_positions) for t in QUERIES_TIMED}):
            qkv = torch.randn(1, T, 3, c.n_head, c.head_dim, generator=g).to(dtype)  # (1, T, 3, nh, hs): c_attn's output
            q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (1, nh, T, hs) each, views as the model's
            ref = F.scaled_dot_product_attention(*(x[:, :2].double() for x in (q, k, v)), is_causal=True)
            for kind in kinds:
                apply_causal(attn, kind)
                y = attn.attend(q[:, :2], k[:, :2], v[:, :2], None)  # (1, 2, T, hs)
                if (y.double() - ref).abs().max() > 0.02 * (1 + ref.abs().max()):  # a bf16 rounding of the output
                    wrong.setdefault(kind, f"its output differs from float64 SDPA's over {T} queries")
            run = lambda kind, q=q, k=k, v=v: attn.attend(q, k, v, None)  # noqa: E731
            for kind, t in _alternate(kinds, lambda kind: apply_causal(attn, kind), run, CAUSAL_CALLS_TIMED).items():
                us[kind] += t
    finally:
        attn.many_query = before
    return {kind: round(t, 1) for kind, t in us.items()}, wrong


def _alternate(kinds: list[str], prepare: Callable[[str], None], run: Callable[[str], object], n: int) -> dict[str, float]:
    """Median microseconds of run(kind) for each kind over n runs, the kinds taking turns (prepare(kind) before
    each, untimed), after two warm-up turns."""
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for i in range(n + 2):
        for kind in kinds:
            prepare(kind)
            t0 = time.perf_counter()
            run(kind)
            if i >= 2:
                times[kind].append(time.perf_counter() - t0)
    return {kind: statistics.median(t) * 1e6 for kind, t in times.items()}


def _matches(attn: CausalSelfAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> bool:
    """attn.attend on one query per row, all keys seen, gives float64 SDPA's numbers within `dtype`'s error."""
    y = attn.attend(q, k, v, one_query_plan(q.shape[0], k.shape[2]))  # (B, nh, 1, hs)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())  # (B, nh, 1, hs)
    tol = 1e-5 if dtype == torch.float32 else 0.02  # float32's error, or a 16-bit rounding of the output
    return y.shape == ref.shape and bool((y.double() - ref).abs().max() <= tol * (1 + ref.abs().max()))


def one_query_plan(B: int, K: int) -> StepPlan:
    """A decode step's plan for B rows that each hold K - 1 keys and add one: one query sees all K."""
    last = torch.full((B, 1), K - 1)  # (B, 1)
    return StepPlan(cols=last, position_ids=last, attn_mask=None, n_keys=K, col=K - 1, causal=True)
