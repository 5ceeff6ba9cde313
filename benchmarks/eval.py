"""Perplexity throughput: gpt2kit's batched sliding windows vs the plain transformers loop, same run.

    python benchmarks/eval.py --tokens 16384 --strides 1024 512 [--dtype float32] [--batch-size 4]

Both sides evaluate the same GPT-2 124M-shaped random weights (no official weights offline; speed does not
depend on the values) on the same tokens of ../shared/corpora/austen.txt with the same stride, and must
give the same perplexity. The transformers side is the loop from its perplexity guide: one window at a
time, labels with -100 for the context, `outputs.loss`, under torch.no_grad().
Prints scored tokens/s for each and the speedup.
"""

from __future__ import annotations

import argparse
import math
import os
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
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
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
          f"{len(ids)} tokens of {CORPUS.name}, batch {args.batch_size}")  # fmt: skip
    for stride in args.strides:
        t0 = time.perf_counter()
        nll_ref, n_ref = transformers_guide_loop(hf, torch.tensor([ids]), 1024, stride)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        # same scoring as the guide: no BOS, the first token is context only
        nll, n, windows = score_sequence(ours, ids, stride=stride, batch_size=args.batch_size)
        t_ours = time.perf_counter() - t0
        print(f"stride {stride}: transformers loop {n_ref / t_ref:8.1f} tok/s (ppl {math.exp(nll_ref / n_ref):.4f}, "
              f"{n_ref} tokens, {t_ref:.1f} s) | gpt2kit {n / t_ours:8.1f} tok/s (ppl {math.exp(nll / n):.4f}, {n} tokens, "
              f"{windows} windows, {t_ours:.1f} s) | speedup {(n / t_ours) / (n_ref / t_ref):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
