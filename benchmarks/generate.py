"""Greedy decode speed: gpt2kit's Engine vs transformers' generate(), same random-weight model, same prompts.

    python benchmarks/generate.py                               # 124M fp32, batch 1, 32-token prompt, 128 new
    python benchmarks/generate.py --dtype bf16                  # bf16 weights for both
    python benchmarks/generate.py --weights int8                # ours int8 weight-only decode vs HF fp32
    python benchmarks/generate.py --batch 8
    python benchmarks/generate.py --quality                     # logit/NLL change of bf16/int8 vs fp32

Both sides run greedy with a fixed number of new tokens (HF: min_new_tokens = max_new_tokens; ours:
ignore_eos), timing includes the prefill, runs alternate (HF, ours, HF, ours, ...) and the median is
reported, so a neighbour process slows both alike. Threads: torch.set_num_threads(--threads).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def build(dtype: torch.dtype, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    import gpt2kit
    from gpt2kit.model.convert import from_hf_state_dict

    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    cfg = gpt2kit.GPTConfig()
    ours = gpt2kit.GPT(cfg).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg))
    ours.lm_head.weight = ours.transformer.wte.weight
    return hf.to(dtype), ours.to(dtype)


def bench(args) -> None:
    from gpt2kit.generate import Engine, SamplingParams

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    hf_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.hf_dtype or args.dtype]
    hf, ours = build(dtype)
    if hf_dtype != dtype:
        hf = hf.to(hf_dtype)
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50256, (B, P), generator=g)
    engine = Engine(ours, max_batch=B, max_len=P + N, weights=args.weights)
    params = SamplingParams(max_new_tokens=N, temperature=0, ignore_eos=True)
    prompts = ids.tolist()

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N, do_sample=False,
                              pad_token_id=50256)  # fmt: skip
        return out[:, P:].tolist()

    def run_ours():
        return [c.token_ids for c in engine.generate(prompts, params)]

    run_hf(), run_ours()  # warm-up (allocations, oneDNN kernels)
    t_hf, t_ours, same = [], [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        a = run_hf()
        t_hf.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = run_ours()
        t_ours.append(time.perf_counter() - t)
        same = a == b
    hf_tps = B * N / statistics.median(t_hf)
    our_tps = B * N / statistics.median(t_ours)
    print(f"config: 124M random weights, batch {B}, prompt {P}, new {N}, threads {torch.get_num_threads()}, "
          f"ours {args.dtype}/{args.weights}, transformers {args.hf_dtype or args.dtype}")  # fmt: skip
    print(f"transformers generate: {hf_tps:7.1f} tok/s  (runs: {', '.join(f'{B * N / t:.1f}' for t in t_hf)})")
    print(f"gpt2kit Engine:        {our_tps:7.1f} tok/s  (runs: {', '.join(f'{B * N / t:.1f}' for t in t_ours)})")
    print(f"ratio: {our_tps / hf_tps:.2f}x   same greedy tokens: {same}")


def quality(args) -> None:
    """Teacher-forced decode over a corpus slice: logit and NLL change of bf16 / int8 decode vs fp32."""
    import glob

    import gpt2kit
    from gpt2kit.generate.decode import DecodeRunner
    from gpt2kit.model.kv_cache import KVCache

    files = sorted(glob.glob(os.path.join(args.corpora, "*.txt")))
    text = open(files[0], encoding="utf-8").read()[:20000]
    toks = gpt2kit.Tokenizer().encode_ordinary(text)[: args.quality_tokens + 1]
    def load(dtype: torch.dtype):
        if args.model:  # a trained model: the only kind whose perplexity change means something
            return gpt2kit.from_pretrained(args.model, dtype=dtype)
        return build(dtype)[1]

    ref_model = load(torch.float32)
    toks = toks[: ref_model.config.n_positions]
    x = torch.tensor(toks)
    results = {}
    modes = (
        ("fp32", torch.float32, "auto"),
        ("bf16 model", torch.bfloat16, "auto"),
        ("fp32 + bf16 weights", torch.float32, "bf16"),
        ("fp32 + int8 weights", torch.float32, "int8"),
    )
    for name, dtype, weights in modes:
        model = ref_model if dtype == torch.float32 else load(dtype)
        runner = DecodeRunner(model, weights)
        cache = KVCache(model.config, 1, len(toks), dtype=dtype)
        with torch.inference_mode():
            logits = [runner.prefill(x[None, :1], cache, None)]
            for t in range(1, len(toks) - 1):
                logits.append(runner.decode(x[None, t : t + 1], cache, None))
        results[name] = torch.cat(logits).float()  # (T, V)
    ref = results["fp32"]
    nll_ref = torch.nn.functional.cross_entropy(ref, x[1:]).item()
    what = f"model {args.model}" if args.model else "124M RANDOM weights"
    print(f"quality: {len(toks) - 1} teacher-forced decode steps on {os.path.basename(files[0])}, {what}; "
          f"fp32 logit std {ref.std().item():.4f}")  # fmt: skip
    ref_logp = torch.log_softmax(ref, -1)
    for name, lg in results.items():
        nll = torch.nn.functional.cross_entropy(lg, x[1:]).item()
        diff = (lg - ref).abs()
        agree = (lg.argmax(-1) == ref.argmax(-1)).float().mean().item()
        kl = torch.nn.functional.kl_div(torch.log_softmax(lg, -1), ref_logp, log_target=True, reduction="batchmean").item()
        print(f"  {name:20s} max|dlogit| {diff.max().item():.4f}  mean|dlogit| {diff.mean().item():.5f}  "
              f"ppl {torch.exp(torch.tensor(nll)).item():.2f} (fp32 {torch.exp(torch.tensor(nll_ref)).item():.2f})  "
              f"KL(fp32||this) {kl:.2e}  argmax agreement {agree:.3f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="our model's dtype")
    ap.add_argument("--hf-dtype", default=None, choices=["fp32", "bf16"], help="transformers' dtype (default: --dtype)")
    ap.add_argument("--weights", default="auto", choices=["auto", "model", "bf16", "int8"], help="our decode weights")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality", action="store_true", help="measure bf16/int8 logit and perplexity change instead")
    ap.add_argument("--quality-tokens", type=int, default=256)
    ap.add_argument("--corpora", default=str(Path(__file__).resolve().parents[2] / "shared" / "corpora"))
    ap.add_argument("--model", default=None, help="--quality: a trained model (e.g. builtin) instead of random weights")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quality(args) if args.quality else bench(args)


if __name__ == "__main__":
    main()
