"""benchmarks/train.py on the CPU with a tiny shape: the three steps (gpt2kit, transformers, nanoGPT) each run
in their own processes, alternating, train, and give one complete JSON line with the medians."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["--device", "cpu", "--model", "tiny", "--batch", "2", "--block", "16", "--steps", "2", "--warmup", "1", "--threads", "1"]


@pytest.mark.timeout(300)
def test_three_steps_alternate_in_their_own_processes_into_one_json_line(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    assert _bench().main([*TINY, "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert list(row["sides"]) == ["gpt2kit", "transformers", "nanogpt"]
    for impl, side in row["sides"].items():
        assert len(side["runs"]) == 3 and side["figure"] == statistics.median(side["runs"]), impl  # three processes
        assert side["unit"] == "tok/s" and side["figure"] > 0
        # ms/step and tokens/s are the same measurement
        assert row["ms_per_step"][impl] == pytest.approx(2 * 16 * 1000 / side["figure"], rel=0.05), impl
        first, last = (float(v) for v in row["loss_first_last"][impl].split(" -> "))
        assert abs(first - math.log(50257)) < 0.3, (impl, first)  # a real LM loss at init: ~ln(V)
        assert last < first - 0.05, (impl, first, last)  # and the step trains
        assert row["peak_mem_mb"][impl] > 50
    assert row["ratio"] == pytest.approx(row["sides"]["gpt2kit"]["figure"] / row["sides"]["transformers"]["figure"], rel=1e-2)
    # the share of the matmul roof measured in the same run, one FLOP count for all sides
    shape = _bench()._shape(argparse.Namespace(model="tiny"))
    flops = 6 * shape.num_params() + 12 * shape.n_layer * shape.n_embd * 16  # per token, blocks of 16
    assert list(row["matmul_roof_tflops"]) == ["fp32"] and 0.01 < row["matmul_roof_tflops"]["fp32"] < 100
    for impl, share in row["roof_share"].items():
        assert share == pytest.approx(row["sides"][impl]["figure"] * flops / (row["matmul_roof_tflops"]["fp32"] * 1e12), rel=0.02)
    assert row["cpu"] and row["threads"] == 1 and row["torch"] and "cpu_flags" in row
    assert "benchmarks/train.py --device cpu" in row["command"]
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_a_failing_side_is_reported_not_hidden(tmp_path):
    out = tmp_path / "train.jsonl"
    # a block longer than the model's context: the worker fails, the row says why, the exit code is 1
    assert _bench().main([*TINY, "--block", "4096", "--impls", "gpt2kit", "--out", str(out)]) == 1
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "gpt2kit" in row["error"] and row["sides"] == {} and row["ratio"] is None


@pytest.mark.parametrize("bad", [["--repeat", "2"], ["--impls", "transformers"], ["--impls", "gpt2kit,fast"]])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(SystemExit):
        _bench().main([*TINY, *bad])
