"""The training loop on a CUDA GPU (skipped without one): bf16 autocast, torch.compile, fused AdamW, resume."""

import numpy as np
import pytest

from gpt2kit.data.shards import write_shard
from gpt2kit.train import TrainConfig, train
from gpt2kit.train.metrics import read_metrics


@pytest.mark.gpu
def test_cuda_bf16_compiled_run_learns_and_resumes(tmp_path, excerpts_dir):
    from gpt2kit.tokenizer import Tokenizer

    ids = Tokenizer().encode_ordinary((excerpts_dir / "austen.txt").read_text(encoding="utf-8"))
    write_shard(tmp_path / "train_000000.bin", np.array(ids[:-5000], dtype=np.uint16))
    write_shard(tmp_path / "val_000000.bin", np.array(ids[-5000:], dtype=np.uint16))
    cfg = dict(data=str(tmp_path), out_dir=str(tmp_path / "out"), model="tiny", block_size=128, micro_batch=16, max_steps=60,
               eval_interval=30, eval_batches=4, log_interval=10, lr=3e-3, warmup_steps=5, device="cuda", sample_tokens=8)  # fmt: skip
    res = train(TrainConfig(**cfg), log=print)
    val = read_metrics(tmp_path / "out" / "metrics.jsonl", "val")
    assert res.step == 60 and val[-1]["loss"] < val[0]["loss"] < 10.0
    res = train(TrainConfig(**{**cfg, "resume": True, "max_steps": 70}), log=print)
    assert res.step == 70 and res.last_checkpoint.name == "step_000070"
