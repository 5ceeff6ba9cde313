"""benchmarks/train.py on the CPU with a tiny shape: the three steps (gpt2kit, transformers, nanoGPT) each
run in their own process, train, and write complete JSON lines."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "benchmarks" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["--device", "cpu", "--model", "tiny", "--batch", "2", "--block", "16", "--steps", "2", "--warmup", "1", "--threads", "1"]


@pytest.mark.timeout(240)
def test_three_steps_in_their_own_processes_write_json_lines(tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    assert _bench().main([*TINY, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["impl"] for r in rows] == ["gpt2kit", "transformers", "nanogpt"]
    for r in rows:
        for key in ("ms_per_step", "tok_per_s", "peak_mem_mb", "device_name", "cpu_name", "torch", "command", "date"):
            assert r[key], (r["impl"], key)
        assert len(r["ms_blocks"]) == 3 and r["ms_per_step"] in r["ms_blocks"]  # the median of three blocks
        assert r["tok_per_s"] == pytest.approx(2 * 16 * 1000 / r["ms_per_step"], rel=1e-3)
        assert abs(r["loss_first"] - math.log(50257)) < 0.3, r  # a real LM loss at init: ~ln(V)
        assert r["loss_last"] < r["loss_first"] - 0.05, r  # and the step trains (6 steps on one batch)
        assert r["mfu"] is None and r["peak_mem_kind"] == "process_max_rss"  # no GPU peak to divide by
    assert rows[0]["speedup_vs_nanogpt"] == pytest.approx(rows[0]["tok_per_s"] / rows[2]["tok_per_s"], rel=1e-3)
    assert "benchmarks/train.py --device cpu" in rows[0]["command"]
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_a_failing_side_is_reported_not_hidden(tmp_path):
    out = tmp_path / "train.jsonl"
    # a block longer than the model's context: the worker fails, the row says why, the exit code is 1
    assert _bench().main([*TINY, "--block", "4096", "--impls", "gpt2kit", "--out", str(out)]) == 1
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["impl"] == "gpt2kit" and "error" in row and "tok_per_s" not in row


def test_repeat_below_three_is_refused():
    with pytest.raises(SystemExit):
        _bench().main([*TINY, "--repeat", "2"])
