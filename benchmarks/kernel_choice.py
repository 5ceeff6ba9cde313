"""The one-time cost of choosing kernels by measurement (model/kernels.py, attention_plan.py, step_choice.py), in a
fresh cache.

    python benchmarks/kernel_choice.py [--threads 2] [--repeat 3]

For the built-in model and a random 124M GPT-2, what a user's run pays to get its one-row decode runner (the
`DecodeRunner` that `gpt2kit generate` builds: the linear kernels' choice and the inference copy with the weights
packed in the chosen layouts, then the attention's choice and, where they differ, whole decode steps timed both
ways; how the steps prefetch their weights is timed on a run's own first steps, step_prefetch.py), with what its first PROMPT_TOKENS-token prompt takes beyond a second one (where the prompts' kernels are
packed): in a fresh process with an empty cache folder (every candidate timed on the real weights, at the decode batch
and at prefill rows), then in another fresh process with the choices cached and the packed-weight store off. Their
difference is the measurement's one-time cost; the cached time is what a run pays to pack the weights (in a fresh
process, as a user's run: on a VM whose host backs memory only when it is first touched, packing 124M's two copies into
fresh memory took ~1.2 s, and ~0.7 s again in the same process). Then two more processes with the store on
(src/gpt2kit/model/packed_store.py: a weight packed twice is stored): `writing the store` packs gemv.c's weights and
writes them (the first run marked them), and `stored` maps them, as every later run does. For fp32 the cached runner is also made with its weights packed in 2 MiB pages
(`fp32 auto cached, 2 MiB pages`, the store off), as an engine that moves its hot memory into huge pages packs them (a server, a
chat, a run of 512 tokens or more; src/gpt2kit/hugepages.py, `packing`). Building gemv.c, once per machine (and compiler), is timed apart (`gemv.c
build`, before the first runner). For fp32 (`auto`), fp32 with `--weights int8`, and bf16; the configurations and
the first and cached processes alternate, --repeat rounds, and the medians go to
benchmarks/results/kernel_choice.jsonl (harness.record), one line per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

CONFIGS = (("fp32", "auto"), ("fp32", "int8"), ("bf16", "auto"))
PROMPT_TOKENS = 32  # the first prompt's: its products pack the prompts' kernels (SHORT_ROWS of them, measured)


def worker(model_name: str, dtype: str, weights: str, threads: int, huge: bool = False) -> dict:
    """One decode runner in this process: milliseconds to build (or load) gemv.c, and to make the runner (with `huge`,
    its weights packed in 2 MiB pages, as an engine that collapses its hot memory packs them) and run its first prompt
    beyond the time of a second (the prompts' kernels are packed on their first call: a decode runner's head, which
    runs one row, never packs its own)."""
    import torch

    torch.set_num_threads(threads)
    from gpt2kit import GPT, GPTConfig, from_pretrained
    from gpt2kit.generate.decode import DecodeRunner
    from gpt2kit.model import gemv
    from gpt2kit.model.kv_cache import KVCache

    torch.manual_seed(0)  # the same random 124M in every process, as a user's model is the same from run to run
    model = from_pretrained("builtin") if model_name == "builtin" else GPT(GPTConfig()).eval()
    model = model.to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    t0 = time.perf_counter()
    gemv.unavailable(torch.float32)  # builds the library where the cache has none
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner = DecodeRunner(model, weights, 1, huge_pages=huge)
    runner_s = time.perf_counter() - t0
    cache = KVCache(model.config, 1, PROMPT_TOKENS, dtype=runner.cache_dtype)
    prompt = torch.randint(0, model.config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    prefill = []
    for _ in range(2):  # the first packs the prompts' kernels (KernelLinear packs them on their first call)
        cache.reset()
        t0 = time.perf_counter()
        runner.prefill(prompt, cache, None)
        prefill.append(time.perf_counter() - t0)
    return {"build_ms": round(build * 1e3, 1), "runner_ms": round((runner_s + prefill[0] - prefill[1]) * 1e3, 1)}


def _run(model_name: str, dtype: str, weights: str, threads: int, cache: str, huge: bool = False, store: bool = True) -> dict:
    """`worker` in a fresh process with its cache in `cache` (`store`: False, with the packed-weight store off)."""
    argv = [__file__, "--threads", str(threads), "--worker", model_name, dtype, weights, *(["--huge"] if huge else [])]
    env = harness.worker_env(GPT2KIT_CACHE_DIR=cache, **({} if store else {"GPT2KIT_PACKED_STORE": "0"}))
    return harness.run_worker(argv, timeout=600, env=env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of every configuration's first and cached runs (medians)")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "DTYPE", "WEIGHTS"), help=argparse.SUPPRESS)
    ap.add_argument("--huge", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads, args.huge)))
        return 0
    for model_name in ("builtin", "124M"):
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for dtype, weights in CONFIGS:
                with tempfile.TemporaryDirectory() as cache:
                    first = _run(model_name, dtype, weights, args.threads, cache)  # measures; marks the weights
                    cached = _run(model_name, dtype, weights, args.threads, cache, store=False)  # packs in memory
                    writes = _run(model_name, dtype, weights, args.threads, cache)  # packs and writes the store
                    stored = _run(model_name, dtype, weights, args.threads, cache)  # maps it, as every later run
                    if (dtype, weights) == CONFIGS[0]:  # the same runner, its weights packed in 2 MiB pages, as a collapsing engine's
                        runs.setdefault(f"{dtype} {weights} cached, 2 MiB pages", []).append(
                            _run(model_name, dtype, weights, args.threads, cache, huge=True, store=False)["runner_ms"])
                name = f"{dtype} {weights}"
                for side, ms in ((f"{name} one-time", first["runner_ms"] - cached["runner_ms"]), (f"{name} first run", first["runner_ms"]),
                                 (f"{name} cached", cached["runner_ms"]), (f"{name} writing the store", writes["runner_ms"]),
                                 (f"{name} stored", stored["runner_ms"]), ("gemv.c build", first["build_ms"])):  # fmt: skip
                    runs.setdefault(side, []).append(ms)
        sides = {side: {"figure": round(statistics.median(ms), 1), "unit": "ms", "runs": ms} for side, ms in runs.items()}
        line = harness.record("kernel_choice", ["python", "benchmarks/kernel_choice.py", *sys.argv[1:]], args.threads, sides,
                              None, model=model_name)  # fmt: skip
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
