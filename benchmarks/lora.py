"""LoRA vs full fine-tuning on the CPU: peak memory and time per optimizer step, each run in a fresh process.

Both sides run the training loop's own step on the same random tokens: forward with loss, backward, clip
to 1.0, AdamW from `train.optim.make_optimizer`, zero_grad. Full fine-tuning trains every parameter; LoRA
(`model.lora.inject_lora`, r=8, alpha=16, dropout 0.05 on c_attn, c_proj, c_fc, as `finetune --lora-r 8`)
trains the adapters only. The model is GPT-2-shaped with random weights (default gpt2-medium: 355M).

Each measurement is a new Python process (`--worker`): its peak RSS (getrusage ru_maxrss) covers building
the model, the optimizer state and the steps, and nothing one side allocated can speed up or inflate the
other. Sides alternate, `--repeat` times each (benchmarks/harness.py); the medians of ms/step and peak RSS are
reported, the ratio is LoRA's ms/step over full fine-tuning's. One JSON line goes to benchmarks/results/lora.jsonl
(or --out) with the machine (CPU model and flags), torch version, threads and the command.

  python benchmarks/lora.py                                   # gpt2-medium, batch 2 x 256 tokens, 3 repeats
  python benchmarks/lora.py --shape tiny --steps 2 --out /tmp/lora.jsonl     # a quick check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness  # noqa: E402


def worker(args) -> dict:
    """One side, measured in this (fresh) process."""
    import torch

    from gpt2kit.model import GPT
    from gpt2kit.model.lora import inject_lora
    from gpt2kit.train.config import FINETUNE_DEFAULTS, TrainConfig
    from gpt2kit.train.optim import make_optimizer

    if args.threads:
        torch.set_num_threads(args.threads)
    lora = args.worker == "lora"
    cfg = TrainConfig(**{**FINETUNE_DEFAULTS, "data": "-", "model": args.shape})  # finetune's lr, decay, dropout, clip
    torch.manual_seed(0)
    model = GPT(cfg.model_config()).train()  # random weights: speed and memory do not depend on their values
    if lora:  # finetune --lora-r 8 (alpha, dropout and targets are TrainConfig's defaults)
        inject_lora(model, 8, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_list)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.config.vocab_size, (args.batch, args.block), generator=g)  # (B, T)
    y = torch.randint(0, model.config.vocab_size, (args.batch, args.block), generator=g)
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {
        "side": args.worker,
        "ms_per_step": round(1000 * statistics.median(times), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params": model.num_params(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="gpt2-medium", help="a TrainConfig model preset: gpt2-medium (355M), gpt2, tiny, ...")
    ap.add_argument("--batch", type=int, default=2, help="B: sequences per step")
    ap.add_argument("--block", type=int, default=256, help="T: tokens per sequence")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocations, first-touch page faults)")
    ap.add_argument("--repeat", type=int, default=3, help="processes per side (medians over them)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default="", help="append the JSON line here (default: benchmarks/results/lora.jsonl)")
    ap.add_argument("--worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    base = [str(Path(__file__).resolve()), "--shape", args.shape, "--batch", str(args.batch), "--block", str(args.block),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]  # fmt: skip
    runs = harness.alternate({side: [*base, "--worker", side] for side in ("full", "lora")}, args.repeat)  # a slow spell hits both
    ms = {side: harness.median(r, "ms_per_step") for side, r in runs.items()}
    rss = {side: harness.median(r, "peak_rss_mb") for side, r in runs.items()}
    line = harness.record(
        "lora", ["python", "benchmarks/lora.py", *sys.argv[1:]], runs["full"][0]["threads"],
        {side: {"figure": ms[side], "unit": "ms/step", "runs": [r["ms_per_step"] for r in rs]} for side, rs in runs.items()},
        round(ms["lora"] / ms["full"], 3), out=args.out or None,
        config=dict(shape=args.shape, batch=args.batch, block=args.block, steps=args.steps, warmup=args.warmup),
        peak_rss_mb=rss, memory_ratio=round(rss["lora"] / rss["full"], 3),
        trainable_params={side: rs[0]["trainable_params"] for side, rs in runs.items()}, params=runs["full"][0]["params"],
    )  # fmt: skip
    print(json.dumps(line))


if __name__ == "__main__":
    main()
