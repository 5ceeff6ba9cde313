"""Training-step throughput: gpt2kit, transformers and nanoGPT on the same card, each in its own process.

    python benchmarks/train.py --device cuda                          # GPT-2 124M, 16 x 1024, bf16: all three
    python benchmarks/train.py --device cuda --model gpt2-medium --impls gpt2kit
    python benchmarks/train.py --device cpu --model tiny --batch 2 --block 32 --steps 2 --warmup 1

The three steps (one micro-batch each: forward with loss, backward, clip to 1.0, AdamW, zero_grad):
  gpt2kit       GPT + make_optimizer (AdamW, fused on CUDA); --compile (auto: on for CUDA) compiles the
                forward with its loss; --pad-vocab 64 pads the head to 50304 rows; --loss chunked computes
                the loss with model/head_loss.lm_head_loss on hidden_states (forward: the model's own loss)
  transformers  GPT2LMHeadModel(attn_implementation="sdpa"), eager, labels=x (it shifts inside), fused AdamW
  nanogpt       nanoGPT's model and train.py step (benchmarks/nanogpt_step.py names the commit): vocab 50304,
                torch.compile, fused AdamW, flash attention, bias=False as its recipe runs
Every side: autocast to --dtype (bf16 on CUDA by default, fp32 on the CPU; transformers in --hf-dtype when
given, e.g. gpt2kit bf16 against transformers fp32), TF32, the same random tokens.
Each measurement is a fresh process (this script with --worker) that runs --warmup steps (compilation),
then --blocks blocks of --steps steps with one device sync per block (no per-step host sync), and reports
its median block. The sides alternate --repeat times (>= 3; benchmarks/harness.py) and the medians are
compared: ratio is gpt2kit's tokens/s over transformers'.

The same run measures the machine's matrix-multiply roof in each side's dtype (harness.matmul_roof_tflops:
the best torch.mm of two 2048 x 2048 matrices on the CPU, 8192 on a GPU) and reports each side's share of it, with
one FLOP count for all sides (6 N + 12 L C T per token, N the unpadded parameter count). Peak memory:
torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on a CPU. One JSON line per run, printed
and appended to benchmarks/results/train.jsonl (or --out); benchmarks/report.py makes RESULTS.md from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import torch  # noqa: E402

IMPLS = ("gpt2kit", "transformers", "nanogpt")


def _shape(args):
    from gpt2kit.train.config import TrainConfig

    return TrainConfig(data="-", model=args.model).model_config().replace(dropout=0.0)


def build_gpt2kit(args, device, dtype):
    """-> step(x, y): the library's model, optimizer and numerics, with the fast-path switches."""
    from gpt2kit.model import GPT
    from gpt2kit.model.head_loss import lm_head_loss
    from gpt2kit.model.vocab_pad import pad_vocab
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.optim import make_optimizer

    model = GPT(_shape(args))
    if args.pad_vocab:
        model = pad_vocab(model, args.pad_vocab)
    model.to(device).train()
    opt = make_optimizer(model, TrainConfig(data="-", weight_decay=0.1), device)
    n_valid = model.config.real_vocab_size

    def loss_fn(x, y):
        if args.loss == "chunked":
            return lm_head_loss(model.hidden_states(x), model.lm_head.weight, y, n_valid=n_valid)
        return model(x, y)[1]

    compiled = torch.compile(loss_fn) if _compile(args, device) else loss_fn
    ctx = _autocast(device, dtype)

    def step(x, y):
        with ctx:
            loss = compiled(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def build_transformers(args, device, dtype):
    import transformers

    g = _shape(args)
    hcfg = transformers.GPT2Config(n_layer=g.n_layer, n_head=g.n_head, n_embd=g.n_embd, n_positions=g.n_positions,
                                   vocab_size=g.vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                   attn_implementation="sdpa")  # fmt: skip
    model = transformers.GPT2LMHeadModel(hcfg).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=6e-4,
                            betas=(0.9, 0.95), **({"fused": True} if device.type == "cuda" else {}))  # fmt: skip
    ctx = _autocast(device, dtype)

    def step(x, y):
        with ctx:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def build_nanogpt(args, device, dtype):
    sys.path.insert(0, str(HERE))
    import nanogpt_step

    g = _shape(args)
    _, step = nanogpt_step.build(g.n_layer, g.n_head, g.n_embd, g.n_positions, device, dtype, _compile(args, device))
    return step


def _compile(args, device) -> bool:
    return args.compile == "on" or (args.compile == "auto" and device.type == "cuda")


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def worker(args) -> dict:
    """Time one implementation in this process -> its measurement: the median of --blocks blocks."""
    from gpt2kit.device import enable_tf32, resolve_device, resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(_dtype_name(args, device))
    if device.type == "cuda":
        enable_tf32()
    torch.manual_seed(0)
    step = {"gpt2kit": build_gpt2kit, "transformers": build_transformers, "nanogpt": build_nanogpt}[args.worker](args, device, dtype)
    shape = _shape(args)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, shape.vocab_size, (args.batch, args.block), generator=g).to(device)
    y = torch.randint(0, shape.vocab_size, (args.batch, args.block), generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        first = step(x, y)
    sync()
    warmup_s = time.perf_counter() - t0
    first = float(first)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    blocks = []
    for _ in range(args.blocks):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step(x, y)
        sync()
        blocks.append((time.perf_counter() - t0) / args.steps)
    sec = statistics.median(blocks)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {"tok_per_s": args.batch * args.block / sec, "ms_per_step": 1000 * sec, "peak_mem_mb": peak_mb,
            "warmup_s": warmup_s, "loss_first": first, "loss_last": float(loss)}  # fmt: skip


def _dtype_name(args, device, impl: str | None = None) -> str:
    """The dtype `impl` (default this worker's) computes in: --hf-dtype for transformers when given, else --dtype."""
    name = args.hf_dtype if (impl or args.worker) == "transformers" and args.hf_dtype else args.dtype
    return name if name != "auto" else ("bf16" if device.type == "cuda" else "fp32")


def bench(args, argv: list[str]) -> int:
    """Each side in its own processes, alternating --repeat times; one JSON line with the medians."""
    from gpt2kit.device import resolve_device
    from gpt2kit.train.metrics import flops_per_token

    device = resolve_device(args.device)
    sides = {impl: [__file__, *argv, "--worker", impl] for impl in args.impls.split(",")}
    dtypes = {impl: _dtype_name(args, device, impl) for impl in sides}
    failed: dict[str, str] = {}
    threads = args.threads or torch.get_num_threads()
    roofs = {dt: harness.matmul_roof_tflops(threads, dt, device.type, n=8192 if device.type == "cuda" else 2048)
             for dt in dict.fromkeys(dtypes.values())}  # fmt: skip
    runs = harness.alternate(sides, args.repeat, timeout=args.timeout, failed=failed)
    ok = {impl: r for impl, r in runs.items() if r and impl not in failed}
    figures = {impl: harness.median(r, "tok_per_s") for impl, r in ok.items()}
    shape = _shape(args)
    flops = flops_per_token(shape.num_params(), shape.n_layer, shape.n_embd, args.block)  # the same count for every side
    ref = "transformers" if "transformers" in figures else None
    line = harness.record(
        "train", ["python", "benchmarks/train.py", *argv], threads,
        {impl: {"figure": round(f, 1), "unit": "tok/s", "runs": [round(r["tok_per_s"], 1) for r in ok[impl]]} for impl, f in figures.items()},
        round(figures["gpt2kit"] / figures[ref], 3) if ref and "gpt2kit" in figures else None,
        out=args.out or None,
        config=dict(model=args.model, params_M=round(shape.num_params() / 1e6, 1), device=device.type, dtype=dtypes,
                    batch=args.batch, block=args.block, compile=args.compile, pad_vocab=args.pad_vocab, loss=args.loss),
        ms_per_step={impl: round(harness.median(r, "ms_per_step"), 1) for impl, r in ok.items()},
        matmul_roof_tflops={dt: round(r, 3) for dt, r in roofs.items()},
        roof_share={impl: round(f * flops / (roofs[dtypes[impl]] * 1e12), 3) for impl, f in figures.items()},
        peak_mem_mb={impl: round(harness.median(r, "peak_mem_mb")) for impl, r in ok.items()},
        loss_first_last={impl: f"{r[0]['loss_first']:.4f} -> {r[0]['loss_last']:.4f}" for impl, r in ok.items()},
        speedup_vs_nanogpt=round(figures["gpt2kit"] / figures["nanogpt"], 3) if {"gpt2kit", "nanogpt"} <= set(figures) else None,
        **({"error": failed} if failed else {}),
    )  # fmt: skip
    print(json.dumps(line), flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2", help="a TrainConfig model: tiny, cpu-small, gpt2, gpt2-medium, gpt2-xl, ...")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="auto: bf16 on CUDA, fp32 on the CPU")
    ap.add_argument("--hf-dtype", default=None, choices=["fp32", "bf16", "fp16"], help="transformers' dtype (default: --dtype)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {', '.join(IMPLS)}")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=3, help="timed blocks per process; a process's figure is the median block's")
    ap.add_argument("--repeat", type=int, default=3, help="processes per side, alternating (>= 3); the figure is their median")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="gpt2kit and nanoGPT (auto: on for CUDA)")
    ap.add_argument("--pad-vocab", type=int, default=64, help="gpt2kit: head rows padded to a multiple of this (0 = off)")
    ap.add_argument("--loss", default="chunked", choices=["chunked", "forward"], help="gpt2kit: lm_head_loss, or the model's own loss")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per worker process")
    ap.add_argument("--out", default="", help="append the JSON line here (default: benchmarks/results/train.jsonl)")
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    if args.repeat < 3:
        ap.error("--repeat must be >= 3: the reported figure is a median of processes")
    unknown = set(args.impls.split(",")) - set(IMPLS)
    if unknown or "gpt2kit" not in args.impls.split(","):
        ap.error(f"--impls: a comma list of {', '.join(IMPLS)} that includes gpt2kit (unknown: {', '.join(sorted(unknown)) or 'none'})")
    return bench(args, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
