"""Greedy generation speed: gpt2kit's Engine vs transformers' generate(), same weights, each in its own process.

    python benchmarks/generate.py                         # 124M fp32, batch 1, 32-token prompt, 128 new tokens
    python benchmarks/generate.py --dtype bf16            # both sides in bf16 (native kernels where the CPU has them)
    python benchmarks/generate.py --weights int8          # gpt2kit weight-only int8 vs transformers fp32
    python benchmarks/generate.py --batch 8
    python benchmarks/generate.py --prompt-len 512 --new-tokens 1     # prompt processing (time to first token)
    python benchmarks/generate.py --llamacpp              # + llama.cpp (F32 / F16 for bf16 / Q8_0 for int8)
    python benchmarks/generate.py --quality --model builtin           # perplexity change of bf16/int8 vs fp32
    python benchmarks/generate.py --temperature 1                     # sampled, as `gpt2kit generate` is by default
    python benchmarks/generate.py --engine-rows 32                    # + one prompt in an engine of 32 rows (a server's slots)
    python benchmarks/generate.py --busy 1                            # a busy machine: another process spinning on a core
    python benchmarks/generate.py --busy 1 --busy-duty 0.5            # ... spinning half of every 10 ms

A GPT-2 of the chosen shape with random weights is saved once to a temporary folder; each measurement is a
fresh worker process that loads it (transformers' `from_pretrained` or `gpt2kit.from_pretrained`), runs
one short untimed generation (gpt2kit measures and caches its kernel choice there, as a user's first run
does), then times B x N greedy tokens (or sampled ones with --temperature, seeded, on both sides: the tokens then
differ, each side drawing with its own method), prefill included. Sides alternate --repeat times; medians are
compared. The same run measures the memory-read bandwidth before every round (the best of 20 `sum`s over
1 GiB, in a fresh process; a VM's memory speed can change between rounds) and reports decode as a fraction of
the bound: the best of those reads / bytes of weights read per step. The gpt2kit side builds its Engine as `gpt2kit generate
--max-new-tokens N` does (huge pages "auto": on from 512 tokens); with --huge-pages a third side builds it
with huge pages on (`--huge-pages on`, what a server, a chat and long runs get), and the bound is the better of
the memory reads with 4 KiB and with 2 MiB pages. With --llamacpp too, llama.cpp runs twice: as a user runs it, its
weights mapped from the GGUF file (the kernel maps a file in 2 MiB pages where its page cache holds it so: ext4 and
xfs on recent kernels), and with `--load-mode none`, its weights read into 4 KiB pages of its own ('llama.cpp, 4 KiB
pages'). gpt2kit maps its packed weights from its store's files the same way (src/gpt2kit/model/packed_store.py:
where no earlier run did, the first gpt2kit process marks them, the second writes them, and later ones map them). `huge_share` is the median share of
each side's mapped weights that the kernel mapped in 2 MiB pages (smaps' FilePmdMapped over Rss). Beside the ratio of medians to llama.cpp, `paired_to_llamacpp`
is the median of each round's ratio (gpt2kit and llama.cpp run back to back), which a drift of the machine's
memory speed between rounds moves less. Likewise `fraction_of_round_bound` is the median over rounds of each round's
speed over the bound from that round's own reads (taken just before it): how near each side came to the memory's
speed of the moment, where `fraction_of_bound` holds every round to the run's fastest read. The bound counts every
weight byte as read from memory: where the CPU's last-level cache holds much of the weights (int8 124M reads
124 MB a step; some server CPUs have several hundred MB of L3), a side can pass it, a fraction above 1. With --busy N, N other
processes spin on a core each while every side runs (--busy-duty D: D of every 10 ms, sleeping the rest) (a user's machine is seldom idle): gpt2kit runs its steps with
the cores they leave (generate/threads.py), and a side 'gpt2kit, all threads' runs with GPT2KIT_ADAPT_THREADS=0 for
comparison; the memory is not probed then (a probe would share the cores too), so no bound is given. One JSON line per configuration goes to
benchmarks/results/generate.jsonl; RESULTS.md is made from those lines by benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness  # noqa: E402

HUGE = "gpt2kit, huge pages"  # the side whose Engine moves the decode step's memory into huge pages (--huge-pages)
LLAMA_4K = "llama.cpp, 4 KiB pages"  # with --llamacpp --huge-pages: llama.cpp's weights read into its own memory
ALL_THREADS = "gpt2kit, all threads"  # with --busy: gpt2kit's steps on all the threads, busy cores or not
SHAPES = {"124M": dict(), "355M": dict(n_layer=24, n_embd=1024, n_head=16), "1.5B": dict(n_layer=48, n_embd=1600, n_head=25)}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    ids = torch.randint(0, 50256, (B, P), generator=torch.Generator().manual_seed(1)).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.side == "llama.cpp":
        print(json.dumps(llamacpp_worker(args)))
        return
    if args.side == "transformers":
        import transformers

        model = transformers.GPT2LMHeadModel.from_pretrained(args.folder, torch_dtype=dtype).eval().to(args.device)

        sampling = dict(do_sample=True, temperature=args.temperature, top_p=args.top_p, top_k=0) if args.temperature else dict(do_sample=False)  # top_k 0: off (transformers defaults to 50)

        def run(n: int) -> list[list[int]]:
            torch.manual_seed(0)
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                     pad_token_id=50256, **sampling)  # fmt: skip
            return out[:, P:].tolist()
    else:
        import gpt2kit
        from gpt2kit.generate import Engine, SamplingParams
        from gpt2kit.hugepages import wants_huge_pages

        model = gpt2kit.from_pretrained(args.folder, device=args.device, dtype=dtype)
        huge = wants_huge_pages(args.engine_huge_pages, N)  # "auto" decides as `gpt2kit generate` does for N tokens
        rows = max(B, args.engine_rows or B)  # `gpt2kit generate` builds B rows; a server --max-batch-size slots
        engine = Engine(model, max_batch=rows, max_len=P + N, weights=args.weights, huge_pages=huge)

        def run(n: int) -> list[list[int]]:
            params = SamplingParams(max_new_tokens=n, temperature=args.temperature, top_p=args.top_p, ignore_eos=True, seed=0)
            return [c.token_ids for c in engine.generate(ids.tolist(), params)]

    run(min(N, 8))  # warm-up: allocations, oneDNN primitives, gpt2kit's kernel measurement (cached after)
    sync()
    t0 = time.perf_counter()
    tokens = run(N)
    sync()
    dt = time.perf_counter() - t0
    rate = B * (P if N == 1 else N) / dt
    share = None
    if args.side == "gpt2kit":  # how much of its packed weights, mapped from the store's files, sits in 2 MiB pages
        from gpt2kit.model import packed_store

        share = harness.mapped_huge_share(os.getpid(), packed_store.SUFFIX)[1]
    print(json.dumps({"rate": rate, "seconds": dt, "tokens_sha": hashlib.sha256(str(tokens).encode()).hexdigest()[:16],
                      "huge_share": share}))  # fmt: skip


def llamacpp_worker(args) -> dict:
    """llama.cpp's llama-bench on a GGUF export of the same folder: F32 for fp32, F16 for --dtype bf16, Q8_0 for
    --weights int8. Decode: tg N from an empty context; prompt processing (--new-tokens 1): pp P. Batch 1 only."""
    import gpt2kit
    from gpt2kit.export import export_gguf

    gtype = "q8_0" if args.weights == "int8" else "f16" if args.dtype == "bf16" else "f32"
    with tempfile.TemporaryDirectory() as tmp:
        f = export_gguf(gpt2kit.from_pretrained(args.folder), Path(tmp) / f"m-{gtype}.gguf", type=gtype)
        decode = args.new_tokens > 1
        run = harness.llama_bench(f, args.threads, args.new_tokens if decode else 0, 0 if decode else args.prompt_len,
                                  mmap=args.llamacpp_load == "mmap")
    return {**run, "gguf": gtype}


def weight_bytes(folder: str, weights: str, dtype: str) -> int:
    """Bytes a decode step reads: every linear weight (the tied head included) in its decode format, plus the
    biases and LayerNorms in the model's dtype (of the embedding tables a step reads one row)."""
    import torch

    import gpt2kit

    model = gpt2kit.from_pretrained(folder, device="cpu")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    size = 2 if dtype == "bf16" else 4
    return linear * {"int8": 1, "bf16": 2}.get(weights, size) + vectors * size


def bench(args) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        transformers.GPT2LMHeadModel(transformers.GPT2Config(**SHAPES[args.shape])).save_pretrained(folder)
        common = [__file__, "--folder", folder, "--dtype", args.dtype, "--batch", str(args.batch), "--prompt-len",
                  str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
                  "--device", args.device, "--temperature", str(args.temperature), "--top-p", str(args.top_p)]  # fmt: skip
        sides = {
            "transformers": [*common, "--side", "transformers", "--dtype", args.hf_dtype or args.dtype],
            "gpt2kit": [*common, "--side", "gpt2kit", "--weights", args.weights],
        }
        if args.llamacpp and args.batch == 1 and not args.temperature:  # llama-bench: one sequence, no sampling
            sides["llama.cpp"] = [*common, "--side", "llama.cpp", "--weights", args.weights]
        if args.huge_pages and args.device == "cpu":  # gpt2kit again, its engine's hot memory in huge pages
            sides[HUGE] = [*sides["gpt2kit"], "--engine-huge-pages", "on"]
            if "llama.cpp" in sides:  # and llama.cpp without its file's 2 MiB pages: each engine on both page sizes
                sides[LLAMA_4K] = [*sides["llama.cpp"], "--llamacpp-load", "none"]
        if args.engine_rows:  # gpt2kit again, the B prompts decoded by an engine of more rows (a server's slots)
            sides[f"gpt2kit, engine of {args.engine_rows} rows"] = [*sides["gpt2kit"], "--engine-rows", str(args.engine_rows)]
        envs = {}
        if args.busy:  # gpt2kit again, every step on all the threads
            sides[ALL_THREADS], envs[ALL_THREADS] = sides["gpt2kit"], harness.worker_env(GPT2KIT_ADAPT_THREADS="0")
        probes: dict[str, list[float]] = {"4 KiB pages": [], "huge pages": []}

        def probe() -> None:  # before every round: a VM's memory speed can change from one round to the next
            probes["4 KiB pages"].append(round(harness.read_bandwidth_gbs(args.threads, device=args.device), 2))
            if HUGE in sides:
                probes["huge pages"].append(round(harness.read_bandwidth_gbs(args.threads, device=args.device, huge=True), 2))

        with harness.busy(args.busy, args.busy_duty):
            runs = harness.alternate(sides, args.repeat, envs, between=None if args.busy else probe)
        bw_default, bw_huge = max(probes["4 KiB pages"], default=None), max(probes["huge pages"], default=None)
        bw = max(bw_default or 0, bw_huge or 0)  # the bound: the machine's best read in the run, whichever pages gave it
        round_bw = [max(p, h or 0) for p, h in itertools.zip_longest(probes["4 KiB pages"], probes["huge pages"])]
        nbytes = weight_bytes(folder, args.weights, args.dtype)
    figures = {name: harness.median(r, "rate") for name, r in runs.items()}
    decode = args.new_tokens > 1
    bound = bw * 1e9 / nbytes * args.batch if decode and bw else None
    round_bounds = [{"rate": b * 1e9 / nbytes * args.batch} for b in round_bw]  # each round's own reads, in tok/s
    line = harness.record(
        "generate", sys.argv, args.threads,
        {n: {"figure": round(f, 2), "unit": "tok/s", "runs": [round(r["rate"], 2) for r in runs[n]]} for n, f in figures.items()},
        round(figures["gpt2kit"] / figures["transformers"], 3),
        config=dict(shape=args.shape, device=args.device, dtype=args.dtype, hf_dtype=args.hf_dtype or args.dtype, weights=args.weights,
                    batch=args.batch, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                    temperature=args.temperature, top_p=args.top_p, busy=args.busy,
                    **({"busy_duty": args.busy_duty} if args.busy_duty != 1 else {})),
        same_tokens=runs["gpt2kit"][0]["tokens_sha"] == runs["transformers"][0]["tokens_sha"],
        ratio_to_llamacpp=round(figures["gpt2kit"] / figures["llama.cpp"], 3) if "llama.cpp" in figures else None,
        paired_to_llamacpp={n: round(harness.paired_ratio(runs[n], runs["llama.cpp"], "rate"), 3) for n in ("gpt2kit", HUGE) if n in runs}
        if "llama.cpp" in runs else None,
        huge_share={n: harness.median([r for r in rs if r.get("huge_share") is not None], "huge_share") for n, rs in runs.items()
                    if any(r.get("huge_share") is not None for r in rs)},  # rounds that mapped (a first marks the weights)
        over_all_threads=round(figures["gpt2kit"] / figures[ALL_THREADS], 3) if ALL_THREADS in figures else None,
        bandwidth_gbs=None if bw_default is None else round(bw_default, 2), bytes_per_step=nbytes,
        bandwidth_huge_pages_gbs=None if bw_huge is None else round(bw_huge, 2),
        bandwidth_probes_gbs={k: v for k, v in probes.items() if v},
        bound=None if bound is None else round(bound, 2),
        fraction_of_bound={n: round(f / bound, 3) for n, f in figures.items()} if bound else None,
        fraction_of_round_bound={n: round(harness.paired_ratio(rs, round_bounds, "rate"), 3) for n, rs in runs.items()} if bound else None,
    )  # fmt: skip
    print(json.dumps(line, indent=1))


def quality(args) -> None:
    """Teacher-forced decode over a text: perplexity, largest logit change and argmax agreement of bf16 / int8
    decode against fp32, as one line of benchmarks/results/quality.jsonl."""
    import torch

    import gpt2kit
    from gpt2kit.generate.decode import DecodeRunner
    from gpt2kit.model.kv_cache import KVCache

    text = Path(args.text).read_text(encoding="utf-8")[:20000]
    ref_model = gpt2kit.from_pretrained(args.model)
    toks = gpt2kit.Tokenizer().encode_ordinary(text)[: min(args.quality_tokens + 1, ref_model.config.n_positions)]
    x = torch.tensor(toks)
    results = {}
    for name, dtype, weights in (("fp32", torch.float32, "auto"), ("bf16 model", torch.bfloat16, "auto"),
                                 ("fp32 + bf16 weights", torch.float32, "bf16"), ("fp32 + int8 weights", torch.float32, "int8")):  # fmt: skip
        model = ref_model if dtype == torch.float32 else gpt2kit.from_pretrained(args.model, dtype=dtype)
        runner = DecodeRunner(model, weights)
        cache = KVCache(model.config, 1, len(toks), dtype=runner.cache_dtype)  # as the engine makes it
        with torch.inference_mode():
            logits = [runner.prefill(x[None, :1], cache, None)]
            logits += [runner.decode(x[None, t : t + 1], cache, None) for t in range(1, len(toks) - 1)]
        results[name] = torch.cat(logits).float()  # (T, V)
    ref = results["fp32"]
    ppl = {name: float(torch.exp(torch.nn.functional.cross_entropy(lg, x[1:]))) for name, lg in results.items()}
    line = harness.record(
        "quality", sys.argv, torch.get_num_threads(),
        {name: {"figure": round(p, 4), "unit": "perplexity"} for name, p in ppl.items()}, None,
        config=dict(model=args.model, tokens=len(toks) - 1, text=Path(args.text).name),
        ppl_change_pct={name: round(100 * (p / ppl["fp32"] - 1), 3) for name, p in ppl.items() if name != "fp32"},
        max_dlogit={name: round((lg - ref).abs().max().item(), 4) for name, lg in results.items() if name != "fp32"},
        argmax_agreement={name: round((lg.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4)
                          for name, lg in results.items() if name != "fp32"},
    )  # fmt: skip
    print(json.dumps(line, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="124M", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="both sides' dtype")
    ap.add_argument("--hf-dtype", default=None, choices=["fp32", "bf16"], help="transformers' dtype (default: --dtype)")
    ap.add_argument("--weights", default="auto", choices=["auto", "model", "bf16", "int8"], help="gpt2kit's decode weights")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the bound then uses the GPU's measured read bandwidth)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128, help="1 measures prompt processing (prompt tokens / s)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the same tokens on both sides); > 0: sampled")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling with --temperature (1: off)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quality", action="store_true", help="measure bf16/int8 logit and perplexity change instead")
    ap.add_argument("--quality-tokens", type=int, default=512)
    ap.add_argument("--model", default="builtin", help="--quality: a trained model")
    ap.add_argument("--text", default=str(Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpora" / "austen.txt"))
    ap.add_argument("--llamacpp", action="store_true", help="also llama.cpp's llama-bench on a GGUF export (tools/llamacpp.sh builds it)")
    ap.add_argument("--huge-pages", action="store_true",
                    help=f"also gpt2kit with its engine's hot memory in huge pages ('{HUGE}' side), and the read bandwidth with them")
    ap.add_argument("--engine-rows", type=int, default=0,
                    help="also gpt2kit with an engine of this many rows decoding the --batch prompts (as a server with that many slots)")
    ap.add_argument("--busy", type=int, default=0, help="other processes spinning on a core each while the sides run (a busy machine)")
    ap.add_argument("--busy-duty", type=float, default=1.0,
                    help="the share of each 10 ms the --busy processes spin, sleeping the rest (1: all the time)")
    ap.add_argument("--llamacpp-load", default="mmap", choices=["mmap", "none"], help=argparse.SUPPRESS)
    ap.add_argument("--engine-huge-pages", default="auto", choices=harness.hugepages.HUGE_PAGE_MODES, help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=["transformers", "gpt2kit", "llama.cpp"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        worker(args)
    elif args.quality:
        quality(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
