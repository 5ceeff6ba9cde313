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

import contextlib
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from gpt2kit import hugepages  # the environment GPT2KIT_HUGEPAGES=1 gives (no torch import)

RESULTS = Path(os.environ.get("GPT2KIT_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
BUSY_PERIOD_S = 0.01  # a partly busy process (`busy`) spins its duty of each such period
# a busy process: spins argv[1] seconds, then sleeps argv[2] (none: spins all the time)
SPIN = """import sys, time
spin, rest = map(float, sys.argv[1:])
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < spin or not rest:
        pass
    time.sleep(rest)
"""
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
    import torch

    torch.set_num_threads(threads)
    buf = torch.ones(int(gib * 2**30) // 4, device=device)
    return buf.numel() * 4 / _best_seconds(buf.sum, repeats, device) / 1e9


def _best_seconds(run, repeats: int, device: str) -> float:
    """The fastest of `repeats` calls of run(), each timed alone (the GPU synchronised around it)."""
    import time

    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_roof_tflops(threads: int, dtype: str = "fp32", device: str = "cpu", n: int = 2048, repeats: int = 10) -> float:
    """The machine's matrix-multiply roof: the best of `repeats` torch.mm of two n x n `dtype` matrices
    (TFLOP/s, 2 n^3 FLOP each), measured in a fresh process with the workers' environment."""
    return run_worker([__file__, "--matmul", str(threads), dtype, device, str(n), str(repeats)])["tflops"]


def _matmul(threads: int, dtype: str, device: str, n: int, repeats: int) -> float:
    import torch

    torch.set_num_threads(threads)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a, b = (torch.randn(n, n, device=device).to(dt) for _ in range(2))
    torch.mm(a, b)  # warm-up: the library's set-up for this shape
    return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b), repeats, device) / 1e12


class WorkerFailed(Exception):
    """A worker process exited with an error; the message is the tail of what it printed."""


def run_worker(argv: list[str], timeout: float = 1800, env: dict[str, str] | None = None) -> dict:
    """One fresh process (in `env`, default worker_env()); its last stdout line is the measurement (JSON)."""
    try:
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, env=env or worker_env())
    except subprocess.TimeoutExpired:
        raise WorkerFailed(f"timed out after {timeout:.0f} s") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise WorkerFailed(f"exit {done.returncode}: " + " | ".join(tail))
    return json.loads(lines[-1])


def alternate(sides: dict[str, list[str]], repeat: int, envs: dict[str, dict[str, str]] | None = None,
              timeout: float = 1800, failed: dict[str, str] | None = None,
              between: Callable[[], object] | None = None) -> dict[str, list[dict]]:  # fmt: skip
    """Run each side's worker argv `repeat` times, alternating sides; {side: [measurement, ...]}. envs: a
    side's own environment (default worker_env()). A failing worker raises WorkerFailed, unless `failed` (a
    dict) is given: it then receives {side: why}, that side is not run again, and the others go on.
    between(): called before each round (a measurement of the machine itself, taken as the sides run)."""
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(repeat):
        if between is not None:
            between()
        for name, argv in sides.items():
            if failed is not None and name in failed:
                continue
            try:
                runs[name].append(run_worker(argv, timeout, env=(envs or {}).get(name)))
            except WorkerFailed as e:
                if failed is None:
                    raise
                failed[name] = str(e)
    return runs


@contextlib.contextmanager
def busy(processes: int, duty: float = 1.0) -> Iterator[None]:
    """`processes` other processes for the block's duration, each spinning on one core `duty` of every 10 ms and
    sleeping the rest (1: all the time): a busy machine, as a user's often is (a build, a browser tab, another
    model; a video call or a game's loop is busy part of each frame)."""
    if not 0 < duty <= 1:
        raise ValueError(f"a busy process's duty is a share of each 10 ms, over 0 and at most 1, got {duty}")
    spin = [sys.executable, "-c", SPIN, str(BUSY_PERIOD_S * duty), str(BUSY_PERIOD_S * (1 - duty))]
    spinning = [subprocess.Popen(spin) for _ in range(processes)]
    try:
        yield
    finally:
        for p in spinning:
            p.kill()
            p.wait()


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def paired_ratio(runs: list[dict], peer: list[dict], key: str) -> float:
    """The median over rounds of each round's runs[i][key] / peer[i][key]: two sides that `alternate` ran
    back to back, so a drift of the machine's speed between rounds (a VM's memory phases) cancels."""
    return statistics.median(r[key] / p[key] for r, p in zip(runs, peer))


def record(bench: str, command: list[str] | str, threads: int, sides: dict[str, dict], ratio: float | None,
           out: Path | None = None, **extra) -> dict:  # fmt: skip
    """Append one measurement to `out` (default benchmarks/results/<bench>.jsonl) and return it.

    sides: {side name: {"figure": median, "unit": ..., "runs": [...]}}; ratio: gpt2kit / the reference."""
    cmd = command if isinstance(command, str) else " ".join(shlex.quote(c) for c in command)
    line = {"bench": bench, **machine(threads), "command": cmd, "sides": sides, "ratio": ratio, **extra}
    out = Path(out) if out else RESULTS / f"{bench}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    return line


def llamacpp_bin() -> Path:
    """The folder of llama.cpp's tools that tools/llamacpp.sh built (its --bin prints it; it fails where none is built)."""
    root = Path(__file__).resolve().parents[1]
    return Path(subprocess.run(["bash", str(root / "tools" / "llamacpp.sh"), "--bin"], capture_output=True, text=True,
                               check=True).stdout.strip())  # fmt: skip


def llama_bench(gguf: Path, threads: int, new_tokens: int = 128, prompt_tokens: int = 0, repeats: int = 1,
                mmap: bool = True) -> dict:
    """llama.cpp's llama-bench on a GGUF file -> {"rate": tokens/s, "huge_share": ...}: decode (tg new_tokens from an
    empty context) when new_tokens > 0, else prompt processing (pp prompt_tokens). tools/llamacpp.sh builds it (its
    --bin prints the folder). Q8_0 runs with --repack 0: llama.cpp 11434's AMX repack of Q8_0 crashes (docs/export.md).

    mmap: llama.cpp's default, the weights mapped from the file; the kernel then maps what it holds of the file in
    2 MiB pages where its page cache has them (large folios: ext4 and xfs on recent kernels), as a user's llama.cpp
    gets. False: `--load-mode none`, the weights read into memory of its own (4 KiB pages with THP "madvise").
    huge_share: the share of the file's mapping in 2 MiB pages (smaps FilePmdMapped over Rss), read every SMAPS_EVERY_S
    until the whole file is mapped (its first tokens), then left alone; None without mmap or where it could not be read."""
    bindir = llamacpp_bin()
    work = ["-p", str(prompt_tokens), "-n", str(new_tokens), "-lm", "mmap" if mmap else "none"]
    repack = ["--repack", "0"] if "q8_0" in Path(gguf).name.lower() else []
    cmd = [str(bindir / "llama-bench"), "-m", str(gguf), *work, "-r", str(repeats), "-t", str(threads), "-o", "json", *repack]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=worker_env())
    seen = (0, None)  # (Rss, share) of the reading with the most of the file mapped: the weights all streamed
    whole_kb = 0.99 * Path(gguf).stat().st_size / 1024
    while mmap and proc.poll() is None and seen[0] < whole_kb:
        seen = max(seen, mapped_huge_share(proc.pid, Path(gguf).name), key=lambda r: r[0])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=SMAPS_EVERY_S)
    out, _ = proc.communicate(timeout=1800)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return {"rate": json.loads(out)[0]["avg_ts"], "huge_share": seen[1]}


SMAPS_EVERY_S = 0.1


def mapped_huge_share(pid: int, name: str) -> tuple[int, float | None]:
    """(kB resident, share in 2 MiB pages) of process pid's mappings of a file called `name`: smaps' Rss and
    FilePmdMapped over it; (0, None) where none is mapped or smaps cannot be read."""
    rss = pmd = 0
    inside = False
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8") as f:
            for line in f:
                head = line.split(maxsplit=1)
                if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line: address range ...
                    inside = line.rstrip().endswith(name)
                elif inside and head and head[0] in ("Rss:", "FilePmdMapped:"):
                    kb = int(line.split()[1])
                    rss, pmd = (rss + kb, pmd) if head[0] == "Rss:" else (rss, pmd + kb)
    except OSError:
        return 0, None
    return (rss, round(pmd / rss, 3)) if rss else (0, None)


if __name__ == "__main__" and sys.argv[1:2] == ["--bandwidth"]:
    threads, gib, repeats, device = sys.argv[2:6]
    print(json.dumps({"gbs": _bandwidth(int(threads), float(gib), int(repeats), device)}))
elif __name__ == "__main__" and sys.argv[1:2] == ["--matmul"]:
    threads, dtype, device, n, repeats = sys.argv[2:7]
    print(json.dumps({"tflops": _matmul(int(threads), dtype, device, int(n), int(repeats))}))
