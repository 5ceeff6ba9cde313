"""`--compile auto` on the CPU times eager and compiled steps in the run and keeps the faster; a resumed run
keeps the recorded choice."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gpt2kit.data.shards import write_shard
from gpt2kit.train import TrainConfig, train
from gpt2kit.train import compile_trial as ct


class Compiled(torch.nn.Module):
    """What the fake torch.compile returns: the model, called through a distinct module (as OptimizedModule)."""

    def __init__(self, model):
        super().__init__()
        self._orig_mod = model

    def forward(self, *a, **k):
        return self._orig_mod(*a, **k)


def _clock(monkeypatch, eager_s: float, compiled_s: float) -> list:
    """The trial's clock advances by each step's cost, which the side the trial runs decides; -> the list that
    receives every CompileTrial made."""
    now, trials = [0.0], []

    def perf_counter():
        now[0] += compiled_s if trials and trials[-1].compiled else eager_s
        return now[0]

    made = ct.CompileTrial.__init__

    def init(self, *a, **k):
        made(self, *a, **k)
        trials.append(self)

    monkeypatch.setattr(ct, "time", SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(ct.CompileTrial, "__init__", init)
    return trials


@pytest.mark.parametrize("eager_s, compiled_s, keeps", [(2.0, 1.0, "compiled"), (1.0, 2.0, "eager"), (1.0, 1.0, "eager")])
def test_the_faster_side_is_kept_after_the_timed_steps(monkeypatch, eager_s, compiled_s, keeps):
    monkeypatch.setattr(torch, "compile", Compiled)
    _clock(monkeypatch, eager_s, compiled_s)
    said, model = [], torch.nn.Linear(2, 2)
    trial = ct.CompileTrial(model, said.append)
    sides = ["eager" if trial.runner is model else "compiled"]  # the model each step calls
    for _ in range(ct.SPAN + 3):
        sides.append("eager" if trial.step_done() is model else "compiled")
    per = ct.SKIP + ct.TIMED
    assert sides[:per] == ["eager"] * per and sides[per : ct.SPAN] == ["compiled"] * per  # each side its steps
    assert sides[ct.SPAN :] == [keeps] * 4 and trial.decided
    assert trial.seconds == {"eager": pytest.approx(eager_s), "compiled": pytest.approx(compiled_s)}
    assert len(said) == 1 and f"the rest of the run {keeps}" in said[0]


@pytest.mark.parametrize("step, compiled, starts", [(ct.SPAN, True, "compiled"), (500, False, "eager"), (ct.SPAN - 1, True, "trial")])
def test_a_resumed_run_keeps_the_recorded_choice(monkeypatch, step, compiled, starts):
    monkeypatch.setattr(torch, "compile", Compiled)
    model = torch.nn.Linear(2, 2)
    trial = ct.CompileTrial(model, lambda _: None, {"step": step, "compiled": compiled})
    if starts == "trial":  # saved before the trial ended: it runs again
        assert not trial.decided and trial.runner is model
        return
    assert trial.decided and (trial.runner is not model) == (starts == "compiled")
    assert all((trial.step_done() is not model) == (starts == "compiled") for _ in range(ct.SPAN))


@pytest.mark.parametrize("eager_s, compiled_s, keeps", [(2.0, 1.0, "compiled"), (1.0, 2.0, "eager")])
def test_a_long_cpu_run_times_both_and_records_the_choice(tmp_path, monkeypatch, eager_s, compiled_s, keeps):
    root = tmp_path / "data"
    write_shard(root / "train_000000.bin", np.random.default_rng(0).integers(0, 50257, 4000).astype(np.uint16))
    calls = []

    def fake_compile(model, *a, **k):
        calls.append(type(model).__name__)
        return Compiled(model)

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr("gpt2kit.train.config._cpp_compiler_found", lambda: True)
    trials = _clock(monkeypatch, eager_s, compiled_s)
    said = []
    cfg = TrainConfig(data=str(root), out_dir=str(tmp_path / "run"), model="tiny", block_size=16, micro_batch=2, max_steps=200,
                      eval_interval=100, log_interval=100, sample_tokens=0, threads=1, compile="auto")  # fmt: skip
    result = train(cfg, log=said.append)
    assert result.step == 200 and calls == ["GPT"]  # compiled once, for the trial
    (line,) = [s for s in said if s.startswith("compile (auto)")]
    assert f"the rest of the run {keeps}" in line and trials[-1].steps == ct.SPAN
    meta = json.loads((result.last_checkpoint / "meta.json").read_text())
    assert meta["compiled"] is (keeps == "compiled")  # what a resumed run keeps
