"""The schedule is a pure function with the documented shape; decay only on >=2-D tensors; config checks; hooks."""

import math
from pathlib import Path

import pytest
import torch

from gpt2kit.errors import ConfigError
from gpt2kit.model import GPT
from gpt2kit.train.config import SMALL_PRESETS, TrainConfig, build_config
from gpt2kit.train.optim import get_lr, param_groups


def test_warmup_then_cosine_to_min_lr():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    lrs = [get_lr(s, **kw) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup, never 0
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))  # monotone decay
    assert lrs[60] == pytest.approx(0.55)  # half way: the cosine's midpoint
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)  # stays at min_lr after max_steps
    assert get_lr(60, **kw, schedule="linear") == pytest.approx(0.55) and get_lr(35, **kw, schedule="linear") == pytest.approx(
        0.775
    )
    assert get_lr(100, **kw, schedule="constant") == 1.0
    assert get_lr(50, **kw) == get_lr(50, **kw)  # pure: no state


def test_decay_only_matrices_and_embeddings():
    model = GPT(SMALL_PRESETS["tiny"])
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = {id(p) for p in decay["params"]}
    assert id(model.transformer.wte.weight) in ids and id(model.lm_head.weight) in ids and len(ids) == len(decay["params"])
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == model.num_params()  # tied head counted once


def test_config_validation_messages(tmp_path):
    with pytest.raises(ConfigError, match="no training data"):
        TrainConfig()
    with pytest.raises(ConfigError, match="min_lr <= lr"):
        TrainConfig(data="d", lr=1e-4, min_lr=1e-3)
    with pytest.raises(ConfigError, match="schedule must be"):
        TrainConfig(data="d", schedule="step")
    with pytest.raises(ConfigError, match="unknown training option.*'learning_rate'"):
        TrainConfig.from_dict({"data": "d", "learning_rate": 1})
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text('{"_comment": "x", "data": "d1", "lr": 0.001, "max_steps": 7}')
    cfg = build_config({"max_steps": 9}, str(cfg_file))
    assert (cfg.data, cfg.lr, cfg.max_steps) == ("d1", 0.001, 9)  # file over defaults, flags over file


def test_shipped_configs_are_valid():
    import json
    from pathlib import Path

    from gpt2kit.config import GPTConfig

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    assert any(p.name == "corpora_cpu.json" for p in configs)
    for path in configs:
        if "n_embd" in json.loads(path.read_text()):  # a model shape (usable as --model FILE), not a training config
            GPTConfig.from_json_file(path)
            continue
        cfg = TrainConfig.from_json_file(path, data="x")
        if not cfg.init_from:
            cfg.model_config()


def test_fp16_on_cpu_is_refused():
    from gpt2kit.train.loop import _train_dtype

    assert _train_dtype("auto", torch.device("cpu")) == torch.float32
    assert _train_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError, match="fp16 training needs a CUDA GPU"):
        _train_dtype("fp16", torch.device("cpu"))


def test_eval_hooks_run_at_each_eval(tmp_path):
    import numpy as np

    from gpt2kit.data.shards import write_shard
    from gpt2kit.train import train
    from gpt2kit.train.metrics import read_metrics

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}_000000.bin", rng.integers(0, 1000, 4000).astype(np.uint16))
    calls = []

    def hook(model):
        calls.append(model.training)
        return {"my_metric": 1.5}

    cfg = TrainConfig(data=str(tmp_path), out_dir=str(tmp_path / "out"), model="tiny", block_size=16, micro_batch=2, max_steps=4,
                      eval_interval=2, eval_batches=1, sample_tokens=0, threads=1)  # fmt: skip
    res = train(cfg, eval_hooks=[hook], log=lambda s: None)
    assert calls == [False, False] and res.step == 4 and math.isfinite(res.val_loss)
    assert [r["my_metric"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl", "eval")] == [1.5, 1.5]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import numpy as np

    from gpt2kit.data.shards import write_shard
    from gpt2kit.model.gpt import GPT as GPTClass
    from gpt2kit.train import train
    from gpt2kit.train.checkpoint import list_checkpoints
    from gpt2kit.train.loop import NonFiniteLossError

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}_000000.bin", rng.integers(0, 1000, 4000).astype(np.uint16))
    real_forward, calls = GPTClass.forward, []

    def forward(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if self.training:
            calls.append(1)
            if len(calls) >= 7:  # training step 7 diverges
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPTClass, "forward", forward)
    cfg = TrainConfig(data=str(tmp_path), out_dir=str(tmp_path / "out"), model="tiny", block_size=16, micro_batch=2, max_steps=20,
                      eval_interval=4, eval_batches=1, log_interval=1, sample_tokens=0, threads=1)  # fmt: skip
    with pytest.raises(
        NonFiniteLossError, match=r"loss is nan at step 7.*last good checkpoint is kept: .*step_000004.*lower --lr"
    ):
        train(cfg, log=lambda s: None)
    assert [s for s, _ in list_checkpoints(tmp_path / "out" / "checkpoints")] == [4]


def _random_shards(path):
    import numpy as np

    from gpt2kit.data.shards import write_shard

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_shard(path / f"{split}_000000.bin", rng.integers(0, 1000, 4000).astype(np.uint16))


class _StepClock:
    """A stand-in for the `time` module inside the training loop: perf_counter advances a fixed 50 ms per
    call, so the time budget is spent by the count of the loop's clock reads, not by the machine's speed."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 0.05
        return self.now

    def __getattr__(self, name):
        import time

        return getattr(time, name)


def test_time_budget_stops_with_a_checkpoint_and_can_fit_the_schedule(tmp_path, monkeypatch):
    from gpt2kit.train import loop, train
    from gpt2kit.train.checkpoint import latest_checkpoint, read_meta
    from gpt2kit.train.metrics import read_metrics

    _random_shards(tmp_path)
    base = dict(data=str(tmp_path), model="tiny", block_size=16, micro_batch=2, max_steps=100_000, eval_interval=1000, eval_batches=1, warmup_steps=500,
                sample_tokens=0, threads=1, log_interval=1)  # fmt: skip
    monkeypatch.setattr(loop, "time", _StepClock())
    res = train(TrainConfig(**base, out_dir=str(tmp_path / "a"), max_minutes=1e-5), log=lambda s: None)
    assert res.stopped_by == "max_minutes" and res.step == 1 and res.last_checkpoint.name == "step_000001"

    monkeypatch.setattr(loop, "time", _StepClock())
    res = train(TrainConfig(**base, out_dir=str(tmp_path / "b"), max_minutes=0.1, fit_to_time=True), log=lambda s: None)
    saved = read_meta(latest_checkpoint(tmp_path / "b" / "checkpoints"))["train_config"]
    assert saved["fit_to_time"] is False  # fitted once, and saved for --resume
    # a 6 s budget, fitted at step 25 from the (fake, fixed) time per step: 90 % of what is left, then stop
    assert loop._FIT_AT < saved["max_steps"] < 100, saved["max_steps"]
    assert saved["warmup_steps"] <= max(loop._FIT_AT, saved["max_steps"] // 10)  # the warmup shrinks with the schedule
    assert res.step == saved["max_steps"] and res.stopped_by == "max_steps"  # the fitted schedule ends inside the budget
    assert len(read_metrics(tmp_path / "b" / "metrics.jsonl", "train")) == res.step


def test_early_stopping_on_val_loss(tmp_path, monkeypatch):
    from gpt2kit.train import loop, train

    _random_shards(tmp_path)
    val_losses = iter([5.0, 4.0, 4.5, 4.2, 4.1, 3.0])  # best at the 2nd eval, then 3 evals without improvement
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(val_losses))
    cfg = TrainConfig(data=str(tmp_path), out_dir=str(tmp_path / "out"), model="tiny", block_size=16, micro_batch=2, max_steps=100,
                      eval_interval=2, eval_batches=1, sample_tokens=0, early_stop=3, threads=1)  # fmt: skip
    res = train(cfg, log=lambda s: None)
    assert (res.stopped_by, res.step, res.best_val_loss) == ("early_stop", 10, 4.0)
    assert res.best_checkpoint.name == "step_000004"  # kept beside the last ones


def test_config_hellaswag_hook_scores_at_each_eval(tmp_path):
    import numpy as np

    import gpt2kit
    from gpt2kit.data.shards import write_shard
    from gpt2kit.errors import Gpt2kitError
    from gpt2kit.eval.hellaswag import hellaswag_scores, load_hellaswag
    from gpt2kit.tokenizer import Tokenizer
    from gpt2kit.train import train
    from gpt2kit.train.metrics import read_metrics

    fixture = Path(__file__).parent / "fixtures" / "eval" / "hellaswag_val.jsonl"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}_000000.bin", rng.integers(0, 1000, 4000).astype(np.uint16))
    cfg = TrainConfig(data=str(tmp_path), out_dir=str(tmp_path / "out"), model="tiny", block_size=16, micro_batch=2, max_steps=2,
                      eval_interval=2, eval_batches=1, sample_tokens=0, threads=1, eval_hellaswag=str(fixture),
                      eval_hellaswag_limit=3)  # fmt: skip
    res = train(cfg, log=lambda s: None)
    [row] = read_metrics(tmp_path / "out" / "metrics.jsonl", "eval")
    # the same numbers as scoring the saved final weights directly
    model = gpt2kit.from_pretrained(res.last_checkpoint)
    direct = hellaswag_scores(model, Tokenizer(), load_hellaswag(fixture, limit=3))
    assert row["hellaswag_acc"] == direct["acc"] and row["hellaswag_acc_norm"] == direct["acc_norm"]

    bad = TrainConfig(data=str(tmp_path), out_dir=str(tmp_path / "out2"), model="tiny", eval_hellaswag=str(tmp_path / "nope.jsonl"))
    with pytest.raises(Gpt2kitError, match="nope.jsonl"):  # fails before any training
        train(bad, log=lambda s: None)
    assert not (tmp_path / "out2").exists()
