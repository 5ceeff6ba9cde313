"""The fast training step against the plain one, on the same weights and the same real-text batches.

    python benchmarks/train_check.py --device cuda                     # GPT-2 124M, 16 x 1024, bf16, 50 steps
    python benchmarks/train_check.py --device cpu --model tiny --batch 2 --block 32 --steps 10 --compile off

plain: GPT's own forward loss (F.cross_entropy over the full logits), eager, AdamW as make_optimizer builds it.
fast:  the same initial weights padded to --pad-vocab rows, the loss from model/head_loss.lm_head_loss on
       hidden_states with the padding left out of the softmax, torch.compile of forward + loss (--compile).
Checks, one JSON line each (printed and appended to --out):
  same_batch  the first batch's loss and gradient norm of both steps agree (bf16: |dloss| <= --loss-tol);
  curve       --steps steps on consecutive batches of the real-text shard (--data): both losses fall by at
              least --min-drop, and the fast curve's mean over the last 10 steps is within --curve-tol of the
              plain one's. The losses are read once at the end (no host sync per step).
Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def batches(path: Path, B: int, T: int, n: int, device):
    """n consecutive (x, y) batches of (B, T) from the shard, wrapping around (targets shifted by one)."""
    from gpt2kit.data.shards import open_shard

    tokens = np.asarray(open_shard(path), dtype=np.int64)
    need = B * T + 1
    if tokens.size < need:
        raise SystemExit(f"train_check: {path} has {tokens.size} tokens, fewer than one batch ({need}); write a bigger shard")
    pos, out = 0, []
    for _ in range(n):
        if pos + need > tokens.size:
            pos = 0
        buf = torch.from_numpy(tokens[pos : pos + need])
        out.append((buf[:-1].view(B, T).to(device), buf[1:].view(B, T).to(device)))
        pos += B * T
    return out


def make_step(model, loss_fn, optimizer, ctx, lr_at):
    def step(i, x, y):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i)
        with ctx:
            loss = loss_fn(x, y)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach(), norm

    return step


def build(args, device):
    from gpt2kit.model import GPT
    from gpt2kit.model.head_loss import lm_head_loss
    from gpt2kit.model.vocab_pad import pad_vocab
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.optim import make_optimizer

    tc = TrainConfig(data="-", model=args.model, weight_decay=0.1, lr=args.lr)
    torch.manual_seed(0)
    plain = GPT(tc.model_config().replace(dropout=0.0)).to(device).train()
    fast = pad_vocab(copy.deepcopy(plain), args.pad_vocab) if args.pad_vocab else copy.deepcopy(plain)
    n_valid = fast.config.real_vocab_size

    def fast_loss(x, y):
        return lm_head_loss(fast.hidden_states(x), fast.lm_head.weight, y, n_valid=n_valid)

    compiled = torch.compile(fast_loss) if args.compile == "on" or (args.compile == "auto" and device.type == "cuda") else fast_loss
    return (plain, lambda x, y: plain(x, y)[1], make_optimizer(plain, tc, device)), (fast, compiled, make_optimizer(fast, tc, device))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--warmup", type=int, default=10, help="linear lr warm-up steps")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--pad-vocab", type=int, default=64)
    ap.add_argument("--data", default=str(HERE / "data" / "text.bin"), help="a token shard (benchmarks/make_text_shard.py)")
    ap.add_argument("--loss-tol", type=float, default=None, help="same-batch |dloss| allowed (default 1e-4 fp32, 2e-2 bf16)")
    ap.add_argument("--curve-tol", type=float, default=0.1, help="allowed |mean of the last 10 losses, fast - plain|")
    ap.add_argument("--min-drop", type=float, default=1.0, help="both curves must fall by this much (first -> last-10 mean)")
    ap.add_argument("--threads", type=int, default=0)
    results = Path(os.environ.get("GPT2KIT_BENCH_RESULTS") or HERE / "results")
    ap.add_argument("--out", default=str(results / "train_check.jsonl"), help="append JSON lines here ('' = print only)")
    args = ap.parse_args(argv)
    from gpt2kit.device import enable_tf32, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32"))
    if device.type == "cuda":
        enable_tf32()
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    loss_tol = args.loss_tol if args.loss_tol is not None else (1e-4 if dtype == torch.float32 else 2e-2)
    data = batches(Path(args.data), args.batch, args.block, args.steps, device)
    (plain, plain_loss, plain_opt), (fast, fast_loss, fast_opt) = build(args, device)
    lr_at = lambda i: args.lr * min(1.0, (i + 1) / max(args.warmup, 1))  # noqa: E731
    steps = {"plain": make_step(plain, plain_loss, plain_opt, ctx, lr_at), "fast": make_step(fast, fast_loss, fast_opt, ctx, lr_at)}
    base = {"bench": "train_check", "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "model": args.model, "batch": args.batch, "block": args.block,
            "dtype": str(dtype).removeprefix("torch."), "compile": args.compile, "pad_vocab": args.pad_vocab,
            "data": Path(args.data).name, "command": " ".join(["python", "benchmarks/train_check.py", *(argv or sys.argv[1:])])}  # fmt: skip
    curves, norms, secs = {}, {}, {}
    for name, step in steps.items():
        t0 = time.perf_counter()
        out = [step(i, x, y) for i, (x, y) in enumerate(data)]
        curves[name] = torch.stack([o[0] for o in out]).float().cpu().tolist()  # one host sync, at the end
        norms[name] = float(out[0][1])
        secs[name] = round(time.perf_counter() - t0, 1)
    first = {k: c[0] for k, c in curves.items()}
    tail = {k: sum(c[-10:]) / len(c[-10:]) for k, c in curves.items()}
    rows = [
        {**base, "check": "same_batch", "loss_plain": first["plain"], "loss_fast": first["fast"],
         "grad_norm_plain": norms["plain"], "grad_norm_fast": norms["fast"], "tol": loss_tol,
         "ok": abs(first["plain"] - first["fast"]) <= loss_tol and abs(norms["plain"] - norms["fast"]) <= 0.05 * norms["plain"]},
        {**base, "check": "curve", "steps": args.steps, "last10_plain": round(tail["plain"], 4), "last10_fast": round(tail["fast"], 4),
         "curve_plain": [round(v, 4) for v in curves["plain"]], "curve_fast": [round(v, 4) for v in curves["fast"]],
         "seconds": secs, "tol": args.curve_tol,
         "ok": abs(tail["plain"] - tail["fast"]) <= args.curve_tol and all(first[k] - tail[k] >= args.min_drop for k in curves)},
    ]  # fmt: skip
    for row in rows:
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
