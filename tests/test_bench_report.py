"""benchmarks/RESULTS.md is generated from benchmarks/results/*.jsonl and must be current."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_results_md_is_generated_from_the_result_lines():
    out = subprocess.run([sys.executable, "benchmarks/report.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_line_renders_its_machine_sides_and_ratio():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import report

    line = {"bench": "generate", "cpu": "Some CPU", "cores": 2, "cpu_flags": ["avx2"], "date": "2026-01-01", "torch": "2.13",
            "threads": 2, "command": "generate.py", "ratio": 1.25, "fraction_of_bound": {"gpt2kit": 0.8},
            "sides": {"transformers": {"figure": 40.0, "unit": "tok/s"}, "gpt2kit": {"figure": 50.0, "unit": "tok/s"}}}  # fmt: skip
    assert report.machine_of(line) == "CPU: Some CPU (2 cores; avx2)"
    cell = report.result_of(line)
    assert "transformers **40** tok/s" in cell and "gpt2kit **50** tok/s" in cell and "ratio **1.25x**" in cell
    assert "fraction_of_bound: gpt2kit 0.8" in cell


def test_the_kinds_of_machine_no_line_comes_from_are_named():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import report

    avx512 = {"cpu": "A", "cores": 2, "cpu_flags": ["avx2", "avx512f", "amx_bf16"]}
    text = report.coverage([avx512])
    assert "Measured on: CPU: A (2 cores; avx2, avx512f, amx_bf16)." in text
    assert "a GPU" in text and "without AVX-512" in text and "native bf16" not in text
    text = report.coverage([avx512, {"cpu": "B", "cpu_flags": ["avx2", "fma"]}, {"gpu": "NVIDIA H200"}])
    assert "Not measured on" not in text and "GPU: NVIDIA H200" in text
    assert "without native bf16 the bf16 evaluation and training rows are not measured" in text  # B has none


def test_a_paired_ratio_is_the_median_of_each_rounds_ratio():
    """Two sides run back to back each round; a round where the machine was fast for both counts as one ratio."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import harness

    ours = [{"rate": 60.0}, {"rate": 90.0}, {"rate": 55.0}]
    peer = [{"rate": 50.0}, {"rate": 100.0}, {"rate": 50.0}]  # the second round in a fast phase for both
    assert harness.paired_ratio(ours, peer, "rate") == 1.1  # rounds: 1.2, 0.9, 1.1
    assert harness.median(ours, "rate") / harness.median(peer, "rate") == 1.2  # the medians mix the phases


def test_alternate_runs_the_sides_in_turn_with_a_probe_before_each_round():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import harness

    order = []
    side = lambda name: ["-c", f"import json; print(json.dumps({{'side': '{name}'}}))"]  # noqa: E731
    runs = harness.alternate({"a": side("a"), "b": side("b")}, 2, between=lambda: order.append("probe"))
    assert runs == {"a": [{"side": "a"}] * 2, "b": [{"side": "b"}] * 2} and order == ["probe", "probe"]


def test_a_partly_busy_process_spins_its_duty_of_the_time():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import resource
    import time

    import harness

    def cpu_seconds(duty: float) -> float:  # the busy process's CPU time over 1.5 s (its start-up included)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with harness.busy(1, duty):
            time.sleep(1.5)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime

    whole, quarter = cpu_seconds(1.0), cpu_seconds(0.25)
    assert whole > 1.0 and 0.15 < quarter < 0.7, (whole, quarter)
    for duty in (0, 1.5):
        with pytest.raises(ValueError, match="duty"), harness.busy(1, duty):
            pass


def test_the_share_of_a_file_mapped_in_huge_pages_is_read_from_smaps(tmp_path):
    """llama.cpp's side reports how much of its GGUF file the kernel maps in 2 MiB pages: read here on this process's
    own mapping of a file; a file it does not map reads as (0, None)."""
    import mmap
    import os

    sys.path.insert(0, str(REPO / "benchmarks"))
    import harness

    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(4 << 20))
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert sum(m[i] for i in range(0, len(m), 4096)) >= 0  # every page touched: resident
        rss, share = harness.mapped_huge_share(os.getpid(), "weights.bin")
        assert rss >= 4 << 10 and 0.0 <= share <= 1.0
    assert harness.mapped_huge_share(os.getpid(), "weights.bin") == (0, None)
    assert harness.mapped_huge_share(os.getpid(), "no-such-file.bin") == (0, None)
