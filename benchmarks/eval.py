"""Perplexity throughput: gpt2kit's batched sliding windows vs the plain transformers loop, same run.

    python benchmarks/eval.py --tokens 8192 --strides 1024 512 [--dtype float32|bfloat16] [--batch-size 8] [--repeat 3]

Both sides evaluate the same GPT-2 124M-shaped random weights (no official weights offline; speed does not
depend on the values), saved once to a temporary folder, on the same tokens of tests/fixtures/corpora/austen.txt
with the same stride. The transformers side is the loop from its perplexity guide: one window at a time,
labels with -100 for the context, `outputs.loss`, under torch.no_grad(). Both perplexities are recorded; they
differ in the fourth digit because the sides score slightly different tokens: gpt2kit every token after the
first (8191 of 8192), the guide loop not the first token of each later window (its labels are shifted inside
the window), e.g. 8184 at stride 1024.

Every measurement runs in a fresh worker process (this script with --side), which loads the model, scores
the first 2048 tokens once untimed, then times the whole sequence. One process for both sides would let
each side's memory pattern change the other's speed: glibc raises its mmap threshold when a large block is
freed, so after gpt2kit's buffers are freed the transformers loop page-faults ~20 % less and runs ~10 %
faster (measured on the 2-core AVX2 machine). The sides alternate --repeat times (a shared host drifts by
10-20 % between minutes); the medians, their ratio and both perplexities go to benchmarks/results/eval.jsonl
(benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpora" / "austen.txt"  # shipped excerpt
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--strides", type=int, nargs="+", default=[1024, 512])
    ap.add_argument("--batch-size", type=int, default=8, help="gpt2kit's windows per forward (the CLI default)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--side", choices=["transformers", "gpt2kit"], help=argparse.SUPPRESS)  # worker mode
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--stride", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        worker(args)
        return

    import torch
    import transformers

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(d)  # 124M shape, random weights
        for stride in args.strides:
            common = [__file__, "--model", d, "--tokens", str(args.tokens), "--stride", str(stride), "--dtype", args.dtype,
                      "--threads", str(args.threads), "--batch-size", str(args.batch_size)]  # fmt: skip
            runs = harness.alternate({side: [*common, "--side", side] for side in ("transformers", "gpt2kit")}, args.repeat)
            figures = {side: harness.median(r, "rate") for side, r in runs.items()}
            ppl = {side: round(math.exp(r[0]["nll"] / r[0]["n"]), 4) for side, r in runs.items()}
            line = harness.record(
                "eval", sys.argv, args.threads,
                {s: {"figure": round(f, 1), "unit": "tok/s", "runs": [round(x["rate"], 1) for x in runs[s]]} for s, f in figures.items()},
                round(figures["gpt2kit"] / figures["transformers"], 3),
                config=dict(tokens=runs["gpt2kit"][0]["n"], stride=stride, dtype=args.dtype, batch_size=args.batch_size, text=CORPUS.name),
                perplexity=ppl,
            )  # fmt: skip
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
