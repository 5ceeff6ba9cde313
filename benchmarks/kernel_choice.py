"""The one-time cost of choosing linear kernels by measurement (model/kernels.py), in a fresh cache.

    python benchmarks/kernel_choice.py [--threads 2]

For the built-in model and a random 124M GPT-2, what a user's run pays to get its inference copy
(`inference_copy`: the kernel choice, then the model's linear layers packed in the chosen layouts): the first
time (every candidate timed on the real weights, at the decode batch and at prefill rows) and a second time
with the choice cached. Their difference is the measurement's one-time cost; the cached time is what every
run pays to pack the weights. For fp32 (`auto`), fp32 with `--weights int8`, and bf16. Each configuration runs
in its own fresh process with its own empty cache folder; one JSON line per model goes to
benchmarks/results/kernel_choice.jsonl (harness.record).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CONFIGS = (("fp32", "auto"), ("fp32", "int8"), ("bf16", "auto"))


def worker(model_name: str, dtype: str, weights: str, threads: int) -> dict:
    """One configuration in this process: milliseconds for the first and the cached inference copy."""
    import torch

    torch.set_num_threads(threads)
    from gpt2kit import GPT, GPTConfig, from_pretrained
    from gpt2kit.model.kernels import inference_copy

    model = from_pretrained("builtin") if model_name == "builtin" else GPT(GPTConfig()).eval()
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    t0 = time.perf_counter()
    inference_copy(model, 1, weights)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    inference_copy(model, 1, weights)
    cached = time.perf_counter() - t0
    return {"first_ms": round(first * 1e3, 1), "cached_ms": round(cached * 1e3, 1), "one_time_ms": round((first - cached) * 1e3, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "DTYPE", "WEIGHTS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads)))
        return 0
    for model_name in ("builtin", "124M"):
        sides = {}
        for dtype, weights in CONFIGS:
            with tempfile.TemporaryDirectory() as cache:
                env = harness.worker_env(GPT2KIT_CACHE_DIR=cache)
                out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--worker", model_name, dtype, weights],
                                     env=env, capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
            got = json.loads(out.stdout.strip().splitlines()[-1])
            sides[f"{dtype} {weights} one-time"] = {"figure": got["one_time_ms"], "unit": "ms"}
            sides[f"{dtype} {weights} first run"] = {"figure": got["first_ms"], "unit": "ms"}
            sides[f"{dtype} {weights} cached"] = {"figure": got["cached_ms"], "unit": "ms"}
        line = harness.record("kernel_choice", ["python", "benchmarks/kernel_choice.py", *sys.argv[1:]], args.threads, sides,
                              None, model=model_name)  # fmt: skip
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
