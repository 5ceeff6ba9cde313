"""Training-step throughput: gpt2kit's step vs the same step written plainly with transformers.GPT2LMHeadModel.

Both do: forward with loss, backward, clip to 1.0, AdamW (decay on >=2-D params), zero_grad, on the same
random tokens, in the same process, alternating, with the same threads and dtype. Reports ms/step, tokens/s
(and MFU on a GPU).

  python benchmarks/train.py --model cpu-small --batch 16 --block 256 --dtypes fp32,bf16
  python benchmarks/train.py --model gpt2 --batch 4 --block 1024 --dtypes fp32,bf16 --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch


def our_step(model, opt, x, y, ctx):
    with ctx:
        _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def hf_step(model, opt, x, y, ctx):
    with ctx:
        loss = model(input_ids=x, labels=x).loss  # transformers shifts labels inside
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def build(args, device):
    import transformers

    from gpt2kit.model import GPT
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.optim import make_optimizer

    cfg = TrainConfig(data="-", model=args.model, dropout=args.dropout, weight_decay=0.1)
    gcfg = cfg.model_config()
    torch.manual_seed(0)
    ours = GPT(gcfg).to(device).train()
    hcfg = transformers.GPT2Config(n_layer=gcfg.n_layer, n_head=gcfg.n_head, n_embd=gcfg.n_embd, n_positions=gcfg.n_positions,
                                   vocab_size=gcfg.vocab_size, resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
                                   attn_implementation="sdpa")  # fmt: skip
    hf = transformers.GPT2LMHeadModel(hcfg).to(device).train()
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    rest = [p for p in hf.parameters() if p.dim() < 2]
    hf_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-4,
                               betas=(0.9, 0.95), **({"fused": True} if device.type == "cuda" else {}))  # fmt: skip
    return ours, make_optimizer(ours, cfg, device), hf, hf_opt, gcfg


def timed(step, model, opt, x, y, ctx, n, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        step(model, opt, x, y, ctx)
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]  # median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cpu-small", help="a TrainConfig model: tiny, cpu-small, cpu-medium, gpt2, ...")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--dtypes", default="fp32,bf16", help="comma list of fp32, bf16 (autocast), fp16 (CUDA)")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per configuration (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(our model)")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    from gpt2kit.device import resolve_device, resolve_dtype
    from gpt2kit.train.metrics import estimate_mfu

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ours, opt, hf, hf_opt, gcfg = build(args, device)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, gcfg.vocab_size, (args.batch, args.block), generator=g).to(device)
    y = torch.randint(0, gcfg.vocab_size, (args.batch, args.block), generator=g).to(device)
    tokens = args.batch * args.block
    flops = 6 * ours.num_params() + 12 * gcfg.n_layer * gcfg.n_embd * args.block
    env = {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "model": args.model, "params_M": round(ours.num_params() / 1e6, 1), "batch": args.batch,
           "block": args.block, "dropout": args.dropout}  # fmt: skip
    print(json.dumps(env))
    runs = [("gpt2kit", our_step, ours, opt)] + ([] if args.skip_hf else [("transformers", hf_step, hf, hf_opt)])
    if args.compile:
        runs.insert(1, ("gpt2kit+compile", our_step, torch.compile(ours), opt))
    for name in args.dtypes.split(","):
        dtype = resolve_dtype(name)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        results = {}
        for label, step, model, o in runs:
            timed(step, model, o, x, y, ctx, 1, device)  # warm-up (allocations, compile)
            results[label] = timed(step, model, o, x, y, ctx, args.steps, device)
        for label, sec in results.items():
            row = {"impl": label, "dtype": name, "ms_per_step": round(1000 * sec, 1), "tok_per_s": round(tokens / sec, 1)}
            mfu = estimate_mfu(flops, tokens / sec, device)
            if mfu is not None:
                row["mfu"] = round(mfu, 4)
            if "transformers" in results and label != "transformers":
                row["speedup_vs_transformers"] = round(results["transformers"] / sec, 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
