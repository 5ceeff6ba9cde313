"""Serving throughput and latency: N concurrent streaming clients against `gpt2kit serve` (continuous
batching), versus the same requests run one at a time through transformers' `generate`, in the same run.

    python benchmarks/serve.py                                  # CPU: 124M random weights, 1/8/32 clients
    python benchmarks/serve.py --device cuda --clients 1 8 32 64

Every request: a 32-token prompt, greedy, exactly --max-tokens new tokens (<|endoftext|> is suppressed
on both sides, so the token counts are equal). Reported per client count: total generated tokens/s,
p50/p99 time to first token (request sent -> first text chunk) and p50/p99 per-token latency
((last chunk - first chunk) / (tokens - 1), per request). The transformers baseline runs
--baseline-requests requests sequentially (batch 1, KV cache, SDPA) and reports tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def make_prompts(n: int, length: int = 32) -> list[list[int]]:
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, 50000, (length,), generator=g).tolist() for _ in range(n)]


async def one_request(client, prompt: list[int], max_tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {"50256": -100}}  # fmt: skip
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
    return {"ttft": first - t0, "per_token": (last - first) / max(1, tokens - 1), "tokens": tokens, "end": last}


async def run_clients(url: str, prompts: list[list[int]], max_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=httpx.Limits(max_connections=len(prompts) + 4)) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, p, max_tokens) for p in prompts))
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": len(prompts), "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall,
        "ttft_p50_ms": 1e3 * percentile([r["ttft"] for r in results], 50),
        "ttft_p99_ms": 1e3 * percentile([r["ttft"] for r in results], 99),
        "tpot_p50_ms": 1e3 * percentile([r["per_token"] for r in results], 50),
        "tpot_p99_ms": 1e3 * percentile([r["per_token"] for r in results], 99),
    }  # fmt: skip


def transformers_sequential(folder: str, prompts: list[list[int]], max_tokens: int, device: str, dtype: torch.dtype) -> dict:
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=dtype, attn_implementation="sdpa").to(device).eval()
    kw = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=50256)
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]], device=device), **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        t0 = time.perf_counter()
        tokens = 0
        for p in prompts:
            out = model.generate(torch.tensor([p], device=device), **kw)
            tokens += out.shape[1] - len(p)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"requests": len(prompts), "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--baseline-requests", type=int, default=4, help="requests timed through transformers, one at a time")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from gpt2kit import GPT, GPTConfig, save_pretrained
    from gpt2kit.device import resolve_dtype
    from gpt2kit.serve.background import BackgroundServer
    from gpt2kit.serve.config import ServeConfig

    dtype = resolve_dtype(args.dtype)
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()  # random-weight GPT-2 124M
    prompts = make_prompts(max(max(args.clients), args.baseline_requests))
    report = {"device": args.device, "dtype": args.dtype, "max_tokens": args.max_tokens, "prompt_tokens": 32,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "server": [], "baseline": None}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, tokenizer_files=False)
        report["baseline"] = transformers_sequential(tmp, prompts[: args.baseline_requests], args.max_tokens, args.device, dtype)
        print(f"transformers generate, sequential: {report['baseline']['tok_per_s']:.1f} tok/s "
              f"({report['baseline']['requests']} requests x {args.max_tokens} tokens)", flush=True)  # fmt: skip

    model = model.to(device=args.device, dtype=dtype)
    base = report["baseline"]["tok_per_s"]
    cfg = ServeConfig(port=0, max_batch_size=max(args.clients), max_model_len=32 + args.max_tokens + 1, max_tokens_limit=args.max_tokens)
    with BackgroundServer(model, cfg) as server:
        asyncio.run(run_clients(server.url, prompts[:2], 4))  # warm-up
        for n in args.clients:
            row = asyncio.run(run_clients(server.url, prompts[:n], args.max_tokens))
            row["x_transformers"] = row["tok_per_s"] / base
            report["server"].append(row)
            print(f"{n:>3} clients: {row['tok_per_s']:7.1f} tok/s ({row['x_transformers']:.2f}x transformers)  "
                  f"TTFT p50 {row['ttft_p50_ms']:.0f} / p99 {row['ttft_p99_ms']:.0f} ms  "
                  f"per-token p50 {row['tpot_p50_ms']:.1f} / p99 {row['tpot_p99_ms']:.1f} ms", flush=True)  # fmt: skip
    # The machine may be shared: time the baseline again after the server runs and report both.
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model.float().cpu(), tmp, tokenizer_files=False)
        report["baseline_after"] = transformers_sequential(tmp, prompts[: args.baseline_requests], args.max_tokens, args.device, dtype)
    print(f"transformers generate, sequential, again after the server runs: {report['baseline_after']['tok_per_s']:.1f} tok/s "
          f"(ratios above use the first figure; vs this one the 32-client ratio is "
          f"{report['server'][-1]['tok_per_s'] / report['baseline_after']['tok_per_s']:.2f}x)", flush=True)  # fmt: skip
    if args.json:
        from gpt2kit.atomic import write_text

        write_text(args.json, json.dumps(report, indent=2) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
