"""Attention kernels against torch's SDPA: the candidates that model/attention_plan.py chooses between.

    python benchmarks/attention.py [--threads 2] [--repeat 3]

Decode: one query per row over K cached keys (GPT-2 124M's 12 heads of 64), through the model's own
`CausalSelfAttention.attend` as a decode step calls it, for each kind that runs on this machine: `model`
(SDPA in the model's dtype), `float32` (SDPA in float32 over a float32 cache; 16-bit models only) and `gemv`
(attend.c), for float32 and bf16, 1 and 8 rows, K = 64, 512 and 1024. Prefill and scoring: one layer's causal
attention of 1024 queries in bf16, `model` (SDPA) against `gemv` (causal.c, where AVX-512 BF16 is present).

Each kind runs in its own fresh process (warm-up calls, then the median of CALLS timed calls per
configuration); the kinds alternate --repeat times and the medians of those medians are reported, in
microseconds: one JSON line per dtype and row count, and one for the causal attention, to
benchmarks/results/attention.jsonl. The ratio is SDPA's time over gpt2kit's kernel's (attend.c at 512 keys,
causal.c): above 1, the kernel is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

KINDS = ("model", "float32", "gemv")
KEYS, ROWS, DTYPES = (64, 512, 1024), (1, 8), ("float32", "bfloat16")
QUERIES = 1024
CALLS = 30
HEADLINE_KEYS = 512
LABELS = {"model": "SDPA", "float32": "SDPA in float32", "gemv": "attend.c"}  # each kind as RESULTS.md names it
CAUSAL_LABELS = {"model": "SDPA", "gemv": "causal.c"}


def _median_us(run, calls: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e6, 1)


def worker(kind: str, threads: int) -> dict:
    """Every configuration `kind` runs here: {"dtype rows K": microseconds, "causal T": microseconds}."""
    import torch

    from gpt2kit import GPTConfig
    from gpt2kit.model.attention_plan import apply, apply_causal, candidates, causal_candidates, one_query_plan
    from gpt2kit.model.gpt import GPT, CausalSelfAttention

    torch.set_num_threads(threads)
    g, config = torch.Generator().manual_seed(0), GPTConfig()
    nh, hs = config.n_head, config.n_embd // config.n_head
    out = {}
    for name in DTYPES:
        dtype = getattr(torch, name)
        if candidates(dtype)[kind] is not None:
            continue
        attn = CausalSelfAttention(config).to(dtype).eval()
        apply(attn, kind)
        for B in ROWS:
            for K in KEYS:
                q = torch.randn(B, nh, 1, hs, generator=g).to(dtype)  # (B, nh, 1, hs)
                kv = torch.randn(2, B, nh, K, hs, generator=g).to(torch.float32 if kind == "float32" else dtype)  # the cache
                plan = one_query_plan(B, K)
                with torch.inference_mode():
                    out[f"{name} {B} {K}"] = _median_us(
                        lambda q=q, kv=kv, plan=plan, attn=attn: attn.attend(q, *kv.unbind(0), plan), CALLS
                    )
    model = GPT(GPTConfig(n_layer=1)).to(torch.bfloat16).eval()
    if kind in ("model", "gemv") and causal_candidates(model)[kind] is None:
        attn = model.transformer.h[0].attn
        apply_causal(attn, kind)
        q, k, v = torch.randn(1, QUERIES, 3, nh, hs, generator=g).to(torch.bfloat16).permute(2, 0, 3, 1, 4)  # (1, nh, T, hs)
        with torch.inference_mode():
            out[f"causal {QUERIES}"] = _median_us(lambda: attn.attend(q, k, v, None), 5)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--side", choices=KINDS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(worker(args.side, args.threads)))
        return 0
    runs = harness.alternate({k: [__file__, "--side", k, "--threads", str(args.threads)] for k in KINDS}, args.repeat)
    med = {k: {c: statistics.median(r[c] for r in rs) for c in rs[0]} for k, rs in runs.items()}
    command = ["python", "benchmarks/attention.py", *sys.argv[1:]]
    for name in DTYPES:
        for B in ROWS:
            sides = {f"{LABELS[k]}, {K} keys": {"figure": med[k][f"{name} {B} {K}"], "unit": "us"}
                     for k in KINDS for K in KEYS if f"{name} {B} {K}" in med[k]}  # fmt: skip
            key = f"{name} {B} {HEADLINE_KEYS}"
            ratio = round(med["model"][key] / med["gemv"][key], 3) if key in med["gemv"] else None
            line = harness.record(
                "attention",
                command,
                args.threads,
                sides,
                ratio,
                config=dict(dtype=name, rows=B, heads="12x64"),
                case=f"decode, {name}, {B} row{'s' if B > 1 else ''}",
            )
            print(json.dumps(line))
    causal = f"causal {QUERIES}"
    sides = {
        f"{CAUSAL_LABELS[k]}, {QUERIES} queries": {"figure": med[k][causal], "unit": "us"}
        for k in CAUSAL_LABELS
        if causal in med[k]
    }
    ratio = round(med["model"][causal] / med["gemv"][causal], 3) if causal in med["gemv"] else None
    print(json.dumps(harness.record("attention", command, args.threads, sides, ratio,
                                    config=dict(dtype="bfloat16", queries=QUERIES, heads="12x64"), case="causal, bfloat16, 1 row")))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
