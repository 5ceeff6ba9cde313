"""What every benchmark shares: the machine's description, its memory-read bandwidth, fresh worker processes
run in alternation with medians, and one JSON line per measurement in benchmarks/results/<bench>.jsonl.

Each side of a comparison runs in its own fresh process (the benchmark script itself, with --side), which
loads its model, warms up untimed, then times one measurement and prints it as a JSON line on stdout. One
process for both sides would let each side's allocations change the other's speed (glibc raises its mmap
threshold when a large block is freed: ~10 % on the transformers eval loop, measured). The sides alternate
`repeat` times, so a shared host's drift slows both alike, and the medians are compared.

Every process a benchmark starts runs in this one's environment, with the pages the system gives by default,
as a user's does. `huge_pages_env()` is the environment of GPT2KIT_HUGEPAGES=1 (src/gpt2kit/hugepages.py),
in which the memory-read bandwidth is measured again with 2 MiB pages (benchmarks/generate.py --huge-pages).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from gpt2kit import hugepages  # the environment GPT2KIT_HUGEPAGES=1 gives (no torch import)

RESULTS = Path(os.environ.get("GPT2KIT_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx_vnni", "fma")


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def machine(threads: int) -> dict:
    """CPU model (lscpu) and the flags that decide kernels, torch version, threads, the workers' pages, date."""
    import torch

    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    except (OSError, subprocess.CalledProcessError):
        pass
    flags = set(info.get("Flags", "").split())
    return {
        "cpu": info.get("Model name", "unknown"),
        "cpu_flags": [f for f in FLAGS_SHOWN if f in flags],
        "cores": os.cpu_count(),
        "gpu": gpu_name(),
        "torch": torch.__version__,
        "threads": threads,
        "huge_pages": _pages(),
        "date": datetime.date.today().isoformat(),
    }


def _pages() -> str:
    """The workers' pages: "THP <mode>", and the tunable if this environment already asks glibc for them."""
    mode = hugepages.thp_mode()
    return "none" if mode is None else f"THP {mode}" + (f", GLIBC_TUNABLES={hugepages.TUNABLE}" if hugepages.in_use() else "")


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of every process a benchmark starts: this one's, plus `extra`."""
    return {**os.environ, **extra}


def huge_pages_env() -> dict[str, str] | None:
    """The environment GPT2KIT_HUGEPAGES=1 starts gpt2kit in; None where it changes nothing (THP "always" or
    "never", no glibc 2.35+, or this environment already has the tunable)."""
    return hugepages.environment({**os.environ, hugepages.SWITCH: "1"})


def read_bandwidth_gbs(threads: int, gib: float = 1.0, repeats: int = 20, device: str = "cpu", huge: bool = False) -> float:
    """Memory-read bandwidth: the best of `repeats` torch.sum over a `gib` GiB float32 buffer (GB/s), measured
    in a fresh process with the workers' environment (huge: with huge_pages_env())."""
    argv = [__file__, "--bandwidth", str(threads), str(gib), str(repeats), device]
    return run_worker(argv, env=huge_pages_env() if huge else None)["gbs"]


def _bandwidth(threads: int, gib: float, repeats: int, device: str) -> float:
    import time

    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(int(gib * 2**30) // 4, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        buf.sum()
        sync()
        best = min(best, time.perf_counter() - t)
    return buf.numel() * 4 / best / 1e9


def run_worker(argv: list[str], timeout: float = 1800, env: dict[str, str] | None = None) -> dict:
    """One fresh process (in `env`, default worker_env()); its last stdout line is the measurement (JSON)."""
    out = subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True, timeout=timeout,
                         env=env or worker_env()).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def alternate(sides: dict[str, list[str]], repeat: int, envs: dict[str, dict[str, str]] | None = None) -> dict[str, list[dict]]:
    """Run each side's worker argv `repeat` times, alternating sides; {side: [measurement, ...]}. envs: a
    side's own environment (default worker_env())."""
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, argv in sides.items():
            runs[name].append(run_worker(argv, env=(envs or {}).get(name)))
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def record(bench: str, command: list[str] | str, threads: int, sides: dict[str, dict], ratio: float | None, **extra) -> dict:
    """Append one measurement to benchmarks/results/<bench>.jsonl and return it.

    sides: {side name: {"figure": median, "unit": ..., "runs": [...]}}; ratio: gpt2kit / the reference."""
    cmd = command if isinstance(command, str) else " ".join(shlex.quote(c) for c in command)
    line = {"bench": bench, **machine(threads), "command": cmd, "sides": sides, "ratio": ratio, **extra}
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / f"{bench}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    return line


def llama_bench(gguf: Path, threads: int, new_tokens: int = 128, prompt_tokens: int = 0, repeats: int = 1) -> float:
    """tokens/s of llama.cpp's llama-bench on a GGUF file: decode (tg new_tokens from an empty context) when
    new_tokens > 0, else prompt processing (pp prompt_tokens). tools/llamacpp.sh builds it (its --bin prints
    the folder). Q8_0 runs with --repack 0: llama.cpp 11434's AMX repack of Q8_0 crashes (docs/export.md)."""
    root = Path(__file__).resolve().parents[1]
    bindir = Path(subprocess.run(["bash", str(root / "tools" / "llamacpp.sh"), "--bin"], capture_output=True, text=True,
                                 check=True).stdout.strip())  # fmt: skip
    work = ["-p", str(prompt_tokens), "-n", str(new_tokens)]
    repack = ["--repack", "0"] if "q8_0" in Path(gguf).name.lower() else []
    cmd = [str(bindir / "llama-bench"), "-m", str(gguf), *work, "-r", str(repeats), "-t", str(threads), "-o", "json", *repack]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800, env=worker_env()).stdout
    return json.loads(out)[0]["avg_ts"]


if __name__ == "__main__" and sys.argv[1:2] == ["--bandwidth"]:
    threads, gib, repeats, device = sys.argv[2:6]
    print(json.dumps({"gbs": _bandwidth(int(threads), float(gib), int(repeats), device)}))
