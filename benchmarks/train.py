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
Every side: bf16 autocast (--dtype), TF32, the same random tokens, --warmup steps (compilation), then
--repeat blocks of --steps steps with one device sync per block (no per-step host sync); ms/step is the
median block's. MFU uses one FLOP count for all sides (6 N + 12 L C T per token, N = the unpadded
parameter count) against the card's bf16 dense peak (989 TFLOP/s for H100/H200, metrics.estimate_mfu).
Peak memory: torch.cuda.max_memory_allocated on a GPU, the process's peak RSS on a CPU. Each result is
one JSON line, printed and appended to --out (benchmarks/results/train.jsonl).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
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
    """Time one implementation in this process -> its result row."""
    from gpt2kit.device import enable_tf32, resolve_device, resolve_dtype
    from gpt2kit.train.metrics import estimate_mfu

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32"))
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
    for _ in range(args.repeat):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step(x, y)
        sync()
        blocks.append((time.perf_counter() - t0) / args.steps)
    sec = statistics.median(blocks)
    tokens = args.batch * args.block
    flops = 6 * shape.num_params() + 12 * shape.n_layer * shape.n_embd * args.block
    mfu = estimate_mfu(flops, tokens / sec, device)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "impl": args.worker, "ms_per_step": round(1000 * sec, 2), "tok_per_s": round(tokens / sec, 1),
        "mfu": None if mfu is None else round(mfu, 4), "peak_mem_mb": round(peak_mb, 1),
        "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
        "ms_blocks": [round(1000 * b, 2) for b in blocks], "warmup_s": round(warmup_s, 1),
        "loss_first": round(first, 4), "loss_last": round(float(loss), 4), "dtype": str(dtype).removeprefix("torch."),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }  # fmt: skip


def _env(args, argv: list[str]) -> dict:
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    return {"bench": "train", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_name": cpu,
            "torch": torch.__version__, "transformers": version("transformers"), "model": args.model,
            "params_M": round(_shape(args).num_params() / 1e6, 1), "batch": args.batch, "block": args.block,
            "compile": args.compile, "pad_vocab": args.pad_vocab, "loss": args.loss,
            "command": " ".join(["python", "benchmarks/train.py", *argv])}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gpt2", help="a TrainConfig model: tiny, cpu-small, gpt2, gpt2-medium, gpt2-xl, ...")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--impls", default=",".join(IMPLS), help=f"comma list of {', '.join(IMPLS)}")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--repeat", type=int, default=3, help="timed blocks (>= 3); ms/step is the median block's")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="gpt2kit and nanoGPT (auto: on for CUDA)")
    ap.add_argument("--pad-vocab", type=int, default=64, help="gpt2kit: head rows padded to a multiple of this (0 = off)")
    ap.add_argument("--loss", default="chunked", choices=["chunked", "forward"], help="gpt2kit: lm_head_loss, or the model's own loss")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per implementation's process")
    results = Path(os.environ.get("GPT2KIT_BENCH_RESULTS") or HERE / "results")
    ap.add_argument("--out", default=str(results / "train.jsonl"), help="append JSON lines here ('' = print only)")
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeat < 3 and args.worker is None:
        ap.error("--repeat must be >= 3: the reported figure is a median")
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    env = _env(args, argv)
    rows = {}
    for impl in args.impls.split(","):
        if impl not in IMPLS:
            ap.error(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
        rows[impl] = _run_worker(impl, argv, args.timeout)
    for impl, row in rows.items():
        row = {**env, **row}
        for ref in ("nanogpt", "transformers"):
            if impl != ref and "tok_per_s" in row and "tok_per_s" in rows.get(ref, {}):
                row[f"speedup_vs_{ref}"] = round(row["tok_per_s"] / rows[ref]["tok_per_s"], 3)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return 0 if all("error" not in r for r in rows.values()) else 1


def _run_worker(impl: str, argv: list[str], timeout: float) -> dict:
    """One implementation in a fresh process (its own allocator, compile caches and peak memory)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker", impl]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"impl": impl, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


if __name__ == "__main__":
    sys.exit(main())
