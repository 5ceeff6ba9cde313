"""Batch-1 greedy decode speed of one model in three runtimes: gpt2kit, llama.cpp (GGUF) and onnxruntime (ONNX).

    tools/llamacpp.sh                                   # once
    python benchmarks/peers/export_decode.py [--model builtin] [--shape 124m] [--threads 2]

gpt2kit: `gpt2kit.generate.generate` (what `gpt2kit generate` runs), fp32, 32-token prompt, greedy.
onnxruntime: examples/onnx_generate.py's loop over `gpt2kit export onnx`'s graph, same prompt.
For both, decode tok/s = 128 / (time for 129 new tokens - time for 1), the median of 3 after a warm-up,
so the prompt's prefill is not counted. llama.cpp: `llama-bench -p 0 -n 128 -r 3` (tg128, from an empty
context) on `gpt2kit export gguf` files, f32 / f16 / q8_0 (q8_0 with --repack 0). Same thread count everywhere. Appends one JSON
line to benchmarks/results/export_decode.jsonl (harness.record: CPU model, torch, threads, command) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import gpt2kit
from gpt2kit.export import export_gguf, export_onnx
from gpt2kit.generate import SamplingParams, generate

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402  (llama_bench: the one llama-bench call)

N = 128


def decode_rate(run_n) -> float:
    """run_n(k) generates k new tokens; tok/s of the 128 decode steps, prefill excluded (median of 3)."""
    run_n(2)  # warm-up
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        run_n(1)
        t1 = time.perf_counter()
        run_n(N + 1)
        t2 = time.perf_counter()
        rates.append(N / ((t2 - t1) - (t1 - t0)))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin", help="a model folder, preset or 'builtin'")
    p.add_argument("--shape", choices=("124m",), default=None, help="instead: a random-weight model of this shape")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.shape:
        torch.manual_seed(0)
        model, label = gpt2kit.GPT(gpt2kit.GPTConfig()).eval(), "random 124M (12 x 768)"
    else:
        model, label = gpt2kit.from_pretrained(args.model), args.model
    prompt = list(range(1000, 1032))  # 32 tokens
    result = {"model": label, "cpu": harness.machine(args.threads)["cpu"], "threads": args.threads, "torch": torch.__version__, "tok_per_s": {}}

    def ours(k: int) -> None:
        generate(model, [prompt], SamplingParams(max_new_tokens=k, temperature=0.0, ignore_eos=True))

    result["tok_per_s"]["gpt2kit fp32"] = decode_rate(ours)

    spec = importlib.util.spec_from_file_location("onnx_generate", ROOT / "examples" / "onnx_generate.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    with tempfile.TemporaryDirectory() as tmp:
        session, config = example.load(export_onnx(model, Path(tmp) / "onnx"), threads=args.threads)
        result["tok_per_s"]["onnxruntime fp32"] = decode_rate(
            lambda k: example.greedy(session, config, prompt, k, stop_at_eot=False)
        )
        for t in ("f32", "f16", "q8_0"):
            f = export_gguf(model, Path(tmp) / f"m-{t}.gguf", type=t)
            result["tok_per_s"][f"llama.cpp {t.upper()}"] = harness.llama_bench(f, args.threads, N, repeats=3)["rate"]
    sides = {k: {"figure": round(v, 2), "unit": "tok/s"} for k, v in result["tok_per_s"].items()}
    ours_fig, best_peer = result["tok_per_s"]["gpt2kit fp32"], result["tok_per_s"]["llama.cpp F32"]
    harness.record("export_decode", ["python", "benchmarks/peers/export_decode.py", *sys.argv[1:]], args.threads, sides,
                   round(ours_fig / best_peer, 3), model=label)  # ratio: gpt2kit fp32 / llama.cpp F32  # fmt: skip
    print(json.dumps(result))
    print(f"\n{label}, batch 1, {args.threads} threads, {result['cpu']}\n\n| runtime | decode tok/s |\n| --- | --- |")
    for k, v in result["tok_per_s"].items():
        print(f"| {k} | {v:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
