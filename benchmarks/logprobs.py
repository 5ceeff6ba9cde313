"""Decode-step cost of logprobs: ms per engine step with nobody / one row / every row asking for them.

    python benchmarks/logprobs.py [--n-layer 6 --n-embd 384 --n-head 6] [--batch 8] [--steps 40] [--device cpu]

Random weights (the cost does not depend on them). Each case adds `batch` prompts of 16 tokens, runs a few
warm-up steps, then times `steps` engine steps; the cases are interleaved and the best of `repeats` kept (greedy, ignore_eos, so every row stays active).
"""

from __future__ import annotations

import argparse
import time

import torch

from gpt2kit import GPT, GPTConfig
from gpt2kit.generate import Engine, SamplingParams


def time_case(engine: Engine, batch: int, steps: int, asks: list[int | None]) -> float:
    params = [SamplingParams(max_new_tokens=steps + 8, temperature=0, ignore_eos=True, logprobs=k) for k in asks]
    prompts = [[(97 * b + 13 * t) % 50000 for t in range(16)] for b in range(batch)]
    slots = engine.add_many(prompts, params)
    for _ in range(4):
        engine.step()
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / steps * 1e3
    for b in slots:
        engine.remove(b)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=384)
    ap.add_argument("--n-head", type=int, default=6)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head)
    model = GPT(cfg).to(args.device).eval()
    engine = Engine(model, max_batch=args.batch, max_len=128)
    B = args.batch
    cases = {
        "no logprobs": [None] * B,
        "1 row, logprobs=5": [5] + [None] * (B - 1),
        "all rows, logprobs=0": [0] * B,
        "all rows, logprobs=20": [20] * B,
    }
    print(f"model {args.n_layer}x{args.n_embd}, batch {B}, {args.steps} steps, device {args.device}, "
          f"threads {torch.get_num_threads()} (best of {args.repeats})")  # fmt: skip
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeats):  # interleaved, so a busy moment on a shared machine hits every case alike
        for name, asks in cases.items():
            best[name] = min(best[name], time_case(engine, B, args.steps, asks))
    for name, ms in best.items():
        print(f"  {name:24s} {ms:7.2f} ms/step")


if __name__ == "__main__":
    main()
