"""Exact resume after kill -9 (same per-step losses as an uninterrupted run) and atomic checkpoint writes."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from gpt2kit.data.shards import write_shard
from gpt2kit.model import GPT
from gpt2kit.train import checkpoint as ckpt
from gpt2kit.train.config import SMALL_PRESETS
from gpt2kit.train.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory, excerpts_dir):
    from gpt2kit.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("resume-data")
    ids = Tokenizer().encode_ordinary((excerpts_dir / "milton.txt").read_text(encoding="utf-8"))
    write_shard(root / "train_000000.bin", np.array(ids[:-3000], dtype=np.uint16))
    write_shard(root / "val_000000.bin", np.array(ids[-3000:], dtype=np.uint16))
    return root


def _cmd(data, out, *extra):
    return [sys.executable, "-m", "gpt2kit", "train", "--data", str(data), "--out-dir", str(out), "--model", "tiny",
            "--block-size", "32", "--micro-batch", "4", "--batch-tokens", "256", "--max-steps", "40", "--eval-interval", "10",
            "--eval-batches", "2", "--log-interval", "1", "--sample-tokens", "4", "--dropout", "0.1", "--lr", "3e-3",
            "--threads", "1", "--keep-last", "3", *extra]  # fmt: skip


def test_kill_9_then_resume_gives_the_same_losses(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = tmp_path / "full"
    subprocess.run(_cmd(data, full), check=True, env=env, capture_output=True, timeout=600)
    want = {r["step"]: r["loss"] for r in read_metrics(full / "metrics.jsonl", "train")}
    assert sorted(want) == list(range(1, 41))

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(data, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300  # (a hang guard: the kill point is set by the checkpoint, not the clock)
        while not (out / "checkpoints" / "step_000020").is_dir():  # at least one checkpoint written, mid-run
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    killed_at = max(r["step"] for r in read_metrics(out / "metrics.jsonl", "train"))
    assert proc.returncode == -signal.SIGKILL and 20 <= killed_at < 40, killed_at
    resumed_from = ckpt.list_checkpoints(out / "checkpoints")[-1][0]

    subprocess.run([sys.executable, "-m", "gpt2kit", "train", "--resume", "--out-dir", str(out)], check=True, env=env,
                   capture_output=True, timeout=600)  # fmt: skip
    got = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")}
    assert sorted(got) == list(range(1, 41))
    assert got == want, f"killed at step {killed_at}, resumed from {resumed_from}"  # exactly equal, step for step
    val_full = read_metrics(full / "metrics.jsonl", "val")
    val_got = read_metrics(out / "metrics.jsonl", "val")
    assert [r["loss"] for r in val_got] == [r["loss"] for r in val_full]
    assert read_metrics(out / "metrics.jsonl", "sample")[-1]["text"] == read_metrics(full / "metrics.jsonl", "sample")[-1]["text"]


def _model_and_optimizer():
    model = GPT(SMALL_PRESETS["tiny"])
    opt = torch.optim.AdamW(model.parameters())
    return model, {"optimizer": opt.state_dict(), "scaler": None}


def test_a_failed_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    model, state = _model_and_optimizer()
    ckpt.save_checkpoint(tmp_path, 10, model, state, {"val_loss": 5.0})
    real_save = torch.save

    def crash(obj, f, *a, **kw):
        if str(getattr(f, "name", f)).endswith("rng.pt"):  # a path or an open file
            raise OSError("disk full")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 20, model, state, {"val_loss": 4.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000010"]  # no step_000020, no temp folder
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000010"


def test_a_killed_write_is_invisible_and_cleaned_up(tmp_path):
    model, state = _model_and_optimizer()
    ckpt.save_checkpoint(tmp_path, 10, model, state, {"val_loss": 5.0})
    half = tmp_path / ".tmp-step_000020-12345"  # what kill -9 in the middle of a save leaves behind
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10]
    ckpt.save_checkpoint(tmp_path, 20, model, state, {"val_loss": 4.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000010", "step_000020"]
    assert ckpt.read_meta(tmp_path / "step_000020")["val_loss"] == 4.0


def test_prune_keeps_last_n_and_best(tmp_path):
    model, state = _model_and_optimizer()
    for step, val in [(1, 3.0), (2, 2.0), (3, 2.5), (4, 2.7), (5, 2.9)]:
        ckpt.save_checkpoint(tmp_path, step, model, state, {"val_loss": val})
        ckpt.prune(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 4, 5]
    assert ckpt.best_checkpoint(tmp_path).name == "step_000002"
