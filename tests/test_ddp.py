"""DDP on the CPU: torchrun --nproc_per_node=2 (gloo) follows the loss curve of one process with the same global batch."""

import os
import subprocess
import sys

import numpy as np
import pytest

from gpt2kit.data.shards import write_shard
from gpt2kit.train.metrics import read_metrics


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpora_dir):
    from gpt2kit.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("ddp-data")
    ids = Tokenizer().encode_ordinary((corpora_dir / "kjv.txt").read_text(encoding="utf-8")[:60_000])
    write_shard(root / "train_000000.bin", np.array(ids[:-2000], dtype=np.uint16))
    write_shard(root / "val_000000.bin", np.array(ids[-2000:], dtype=np.uint16))
    return root


ARGS = ["--model", "tiny", "--block-size", "32", "--max-steps", "8", "--eval-interval", "8", "--eval-batches", "2",
        "--log-interval", "1", "--sample-tokens", "0", "--dropout", "0.0", "--lr", "3e-3", "--warmup-steps", "2", "--threads", "1",
        "--max-minutes", "30"]  # fmt: skip  (a time budget: the ranks agree on stopping through a collective)


def test_two_processes_match_one(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    # global batch 2 x 4 x 32 tokens per optimizer step in both: one process with B=4 and accum 2 ...
    subprocess.run([sys.executable, "-m", "gpt2kit", "train", "--data", str(data), "--out-dir", str(one), "--micro-batch", "4",
                    "--batch-tokens", "256", *ARGS], check=True, env=env, capture_output=True)  # fmt: skip
    # ... and two processes with B=2, accum 2 (rank r takes windows [2r, 2r+2) of each global draw of 4)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2kit", "train",
                          "--data", str(data), "--out-dir", str(two), "--micro-batch", "2", "--batch-tokens", "256", *ARGS],
                         env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "x2" in run.stdout and "2 x 32 x 2 x 2 accum" in run.stdout  # really two ranks, accumulation derived
    a = [r["loss"] for r in read_metrics(one / "metrics.jsonl", "train")]
    b = [r["loss"] for r in read_metrics(two / "metrics.jsonl", "train")]
    assert len(a) == len(b) == 8 and a[-1] < a[0] - 0.5
    np.testing.assert_allclose(b, a, rtol=2e-5)
    va, vb = (read_metrics(d / "metrics.jsonl", "val")[-1]["loss"] for d in (one, two))
    np.testing.assert_allclose(vb, va, rtol=2e-5)
