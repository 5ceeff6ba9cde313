"""Perplexity throughput: gpt2kit's batched sliding windows vs the plain transformers loop, same run.

    python benchmarks/eval.py --tokens 8192 --strides 1024 512 [--dtype float32] [--batch-size 2 4] [--repeat 3]

Both sides evaluate the same GPT-2 124M-shaped random weights (no official weights offline; speed does not
depend on the values) on the same tokens of ../shared/corpora/austen.txt with the same stride, and must
give the same perplexity. The transformers side is the loop from its perplexity guide: one window at a
time, labels with -100 for the context, `outputs.loss`, under torch.no_grad().
The two sides run alternately --repeat times (a shared host's speed drifts by 10-20 % between minutes);
prints the median scored tokens/s of each and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "austen.txt"


def transformers_guide_loop(model, ids: torch.Tensor, max_len: int, stride: int) -> tuple[float, int]:
    """The loop of transformers' 'Perplexity of fixed-length models' guide (nll summed over scored tokens)."""
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


def main() -> None:
    import transformers

    import gpt2kit
    from gpt2kit.eval.perplexity import score_sequence

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--strides", type=int, nargs="+", default=[1024, 512])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[2], help="gpt2kit's windows per forward (several: each is timed)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = gpt2kit.device.resolve_dtype(args.dtype)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().to(dtype)  # 124M shape
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = gpt2kit.from_pretrained(d, device="cpu", dtype=dtype)
    tok = gpt2kit.Tokenizer()
    ids = tok.encode_ordinary(CORPUS.read_text(encoding="utf-8")[: args.tokens * 8])[: args.tokens]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, {args.dtype}, "
          f"{len(ids)} tokens of {CORPUS.name}, {torch.backends.cpu.get_cpu_capability()}, median of {args.repeat}")  # fmt: skip
    for stride in args.strides:
        ref_rates, rates = [], {b: [] for b in args.batch_size}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            nll_ref, n_ref = transformers_guide_loop(hf, torch.tensor([ids]), 1024, stride)
            ref_rates.append(n_ref / (time.perf_counter() - t0))
            for b in args.batch_size:
                t0 = time.perf_counter()
                # same scoring as the guide: no BOS, the first token is context only
                nll, n, windows = score_sequence(ours, ids, stride=stride, batch_size=b)
                rates[b].append(n / (time.perf_counter() - t0))
        ref = statistics.median(ref_rates)
        print(f"stride {stride}: transformers loop {ref:7.1f} tok/s (ppl {math.exp(nll_ref / n_ref):.4f}, {n_ref} tokens; "
              f"runs {', '.join(f'{r:.0f}' for r in ref_rates)})")  # fmt: skip
        for b in args.batch_size:
            med = statistics.median(rates[b])
            print(f"  gpt2kit batch {b}: {med:7.1f} tok/s (ppl {math.exp(nll / n):.4f}, {n} tokens, {windows} windows; "
                  f"runs {', '.join(f'{r:.0f}' for r in rates[b])}) | speedup {med / ref:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
