"""Perplexity throughput: gpt2kit's batched sliding windows vs the plain transformers loop, same run.

    python benchmarks/eval.py --tokens 8192 --strides 1024 512 [--dtype float32] [--batch-size 2 8] [--repeat 3]

Both sides evaluate the same GPT-2 124M-shaped random weights (no official weights offline; speed does not
depend on the values), saved once to a temporary folder, on the same tokens of ../shared/corpora/austen.txt
with the same stride, and must give the same perplexity. The transformers side is the loop from its
perplexity guide: one window at a time, labels with -100 for the context, `outputs.loss`, under
torch.no_grad().

Every measurement runs in a fresh worker process (this script with --side), which loads the model, scores
the first 2048 tokens once untimed, then times the whole sequence. One process for both sides would let
each side's memory pattern change the other's speed: glibc raises its mmap threshold when a large block is
freed, so after gpt2kit's buffers are freed the transformers loop page-faults ~20 % less and runs ~10 %
faster (measured on the 2-core AVX2 machine). The sides alternate --repeat times (a shared host drifts by
10-20 % between minutes); the script prints the median tokens/s of each and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "austen.txt"
WARMUP_TOKENS = 2048


def transformers_guide_loop(model, ids, max_len: int, stride: int) -> tuple[float, int]:
    """The loop of transformers' 'Perplexity of fixed-length models' guide (nll summed over scored tokens)."""
    import torch

    nll, n, prev_end = 0.0, 0, 0
    seq_len = ids.size(1)
    for begin in range(0, seq_len, stride):
        end = min(begin + max_len, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        k = (target_ids[:, 1:] != -100).sum().item()
        nll += loss.item() * k
        n += k
        prev_end = end
        if end == seq_len:
            break
    return nll, n


def corpus_ids(n: int) -> list[int]:
    import gpt2kit

    return gpt2kit.Tokenizer().encode_ordinary(CORPUS.read_text(encoding="utf-8")[: n * 8])[:n]


def worker(args) -> None:
    """One timed measurement of one side; prints a JSON line."""
    import time

    import torch

    import gpt2kit

    torch.set_num_threads(args.threads)
    dtype = gpt2kit.device.resolve_dtype(args.dtype)
    ids = corpus_ids(args.tokens)
    if args.side == "transformers":
        import transformers

        model = transformers.GPT2LMHeadModel.from_pretrained(args.model).eval().to(dtype)

        def run(seq):
            nll, n = transformers_guide_loop(model, torch.tensor([seq]), 1024, args.stride)
            return nll, n, None
    else:
        from gpt2kit.eval.perplexity import score_sequence

        model = gpt2kit.from_pretrained(args.model, device="cpu", dtype=dtype)

        def run(seq):  # same scoring as the guide: no BOS, the first token is context only
            return score_sequence(model, seq, stride=args.stride, batch_size=args.batch_size)

    run(ids[:WARMUP_TOKENS])
    t0 = time.perf_counter()
    nll, n, windows = run(ids)
    print(json.dumps(dict(rate=n / (time.perf_counter() - t0), nll=nll, n=n, windows=windows)))


def measure(args, model: str, side: str, stride: int, batch_size: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--side", side, "--model", model, "--tokens", str(args.tokens), "--stride", str(stride),
           "--batch-size", str(batch_size), "--dtype", args.dtype, "--threads", str(args.threads)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--strides", type=int, nargs="+", default=[1024, 512])
    ap.add_argument(
        "--batch-size", type=int, nargs="+", default=[8], help="gpt2kit's windows per forward (several: each is timed)"
    )
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--side", choices=["transformers", "gpt2kit"], help=argparse.SUPPRESS)  # worker mode
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        args.batch_size = args.batch_size[0]
        worker(args)
        return

    import torch
    import transformers

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(d)  # 124M shape, random weights
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, {args.dtype}, "
              f"{args.tokens} tokens of {CORPUS.name}, {torch.backends.cpu.get_cpu_capability()}, a fresh process per run, "
              f"median of {args.repeat}", flush=True)  # fmt: skip
        for stride in args.strides:
            ref, ours = [], {b: [] for b in args.batch_size}
            for _ in range(args.repeat):
                ref.append(measure(args, d, "transformers", stride))
                for b in args.batch_size:
                    ours[b].append(measure(args, d, "gpt2kit", stride, b))
            ref_rate = statistics.median(r["rate"] for r in ref)
            print(f"stride {stride}: transformers loop {ref_rate:7.1f} tok/s ({_summary(ref)})", flush=True)
            for b, runs in ours.items():
                med = statistics.median(r["rate"] for r in runs)
                print(f"  gpt2kit batch {b}: {med:7.1f} tok/s ({_summary(runs)}, {runs[0]['windows']} windows) "
                      f"| speedup {med / ref_rate:.2f}x", flush=True)  # fmt: skip


def _summary(runs: list[dict]) -> str:
    rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
    return f"ppl {math.exp(runs[0]['nll'] / runs[0]['n']):.4f}, {runs[0]['n']} tokens; runs {rates}"


if __name__ == "__main__":
    main()
