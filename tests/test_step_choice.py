"""Whether a decode step runs with the kernels measured one by one or replayed with gemv.c's (generate/step_choice.py).

The measured choices are made unreplayable on purpose (MKL for the head, SDPA for the attention, as a machine may
measure them); every step's logits are held to the model's own uncached float32 forward, on a model whose biases
and LayerNorms are perturbed."""

import dataclasses
import json
import types

import pytest
import torch

from conftest import gemv_buildable, tiny_gpt
from gpt2kit.errors import ConfigError
from gpt2kit.generate import decode, step_choice
from gpt2kit.generate.decode import DecodeRunner
from gpt2kit.model import gemv, kernels
from gpt2kit.model.kernel_timing import Choice
from gpt2kit.model.kv_cache import KVCache
from gpt2kit.model.linear import KERNELS, STEP_KINDS
from gpt2kit.model.step_graph import StepGraph
from gpt2kit.model_info import decode_step_status

pytestmark = gemv_buildable()


@pytest.fixture(scope="module")
def tiny():
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=64)


@pytest.fixture(autouse=True)
def prefetch_as_measured(monkeypatch):
    """Each product's prefetch left as its own measurement chose: its choice over whole steps is test_step_prefetch.py's."""
    monkeypatch.setenv("GPT2KIT_DECODE_PREFETCH", "measured")


@pytest.fixture
def unreplayable(monkeypatch, tmp_path):
    """Per-product and attention choices a step cannot be recorded with: the head MKL's (gemv timed 2x slower, its
    other prefetches slower still, so that `gemv` is the gemv.c kind a replayed step takes whatever the machine
    measured), the attention SDPA's (attend.c 2x slower): far over SURE_LEAD of a step, so whole steps are timed; in
    a cache directory of its own."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    real = kernels.plan_kernels

    def plan(model, batch=1, weights="auto", **kw):
        out = real(model, batch, weights, **kw)
        return [dataclasses.replace(c, kind="mkl", us={**c.us, "mkl": 100.0, "gemv": 200.0, "gemv-l2": 300.0, "gemv-hw": 400.0})
                if c.role == "lm_head" and c.rows == batch else c for c in out]  # fmt: skip

    monkeypatch.setattr(kernels, "plan_kernels", plan)
    monkeypatch.setattr(decode, "plan_attention", lambda model, batch, f32: Choice("attention", batch, "model", us={"model": 100.0, "gemv": 200.0}))
    return tmp_path


def _steps(runner, model, batch=2, start=3, T=9):
    """Prefill, then decode a token a step -> (the steps' logits, the uncached forward's), both (steps, B, V)."""
    seq = torch.randint(0, model.config.vocab_size, (batch, T), generator=torch.Generator().manual_seed(0))
    cache = KVCache(model.config, batch, 16, dtype=runner.cache_dtype)
    with torch.inference_mode():
        runner.prefill(seq[:, :start], cache, None)
        steps = [runner.decode(seq[:, t : t + 1], cache, None) for t in range(start, T)]
        full = model(seq)[0][:, start:].transpose(0, 1)  # (steps, B, V)
    return torch.stack(steps), full


def _close(got, want):
    return (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


@pytest.mark.parametrize("batch", [1, 2])
def test_replayed_swaps_in_gemv_kernels_and_attention_and_matches_the_forward(tiny, unreplayable, monkeypatch, batch):
    """At one row too, whose steps call each product's one-row kernel (the batch's own there)."""
    monkeypatch.setenv(step_choice.ENV, "replayed")
    runner = DecodeRunner(tiny, batch=batch)
    assert runner.step.kind == "replayed"
    head = runner.model.lm_head
    assert head.kinds[0] == "gemv" and type(head.small) is type(head.one) is KERNELS["gemv"]  # the faster gemv.c kind of its measurement
    assert runner.attention.kind == "gemv" and all(b.attn.one_query is gemv.attend for b in runner.model.transformer.h)
    got, want = _steps(runner, tiny, batch=batch)
    assert _close(got, want)
    assert any(isinstance(g, StepGraph) for g in runner.graphs.values())  # replayed, not run in Python


def test_measured_keeps_the_measured_kernels_and_runs_in_python(tiny, unreplayable, monkeypatch):
    monkeypatch.setenv(step_choice.ENV, "measured")
    runner = DecodeRunner(tiny, batch=2)
    assert runner.step.kind == "measured" and runner.model.lm_head.kinds[0] == "mkl" and runner.attention.kind == "model"
    got, want = _steps(runner, tiny)
    assert _close(got, want)
    assert all(isinstance(g, str) for g in runner.graphs.values()) and runner.graphs


def test_whole_steps_are_timed_once_then_cached(tiny, unreplayable, monkeypatch):
    runner = DecodeRunner(tiny, batch=2)
    c = runner.step
    assert set(c.us) == {"measured", "replayed"} and c.kind == min(c.us, key=c.us.get) and not c.cached
    assert (runner.model.lm_head.kinds[0] in STEP_KINDS) == (c.kind == "replayed")
    assert runner.graphs == {}  # the timing's recordings point into its own caches: dropped
    got, want = _steps(runner, tiny)
    assert _close(got, want)
    stored = json.loads((unreplayable / "kernels.json").read_text())
    [key] = [k for table in stored.values() for k in table if "decode step" in k]
    assert "replaces attention model, " in key and key.endswith("lm_head mkl") and "| 2 rows |" in key

    monkeypatch.setattr(step_choice, "_time", lambda *a: pytest.fail("timed again"))
    again = DecodeRunner(tiny, batch=2)
    assert again.step.cached and again.step.kind == c.kind
    assert "whole steps timed" in decode_step_status(tiny, 2, "auto")
    assert "a first generation times whole steps" in decode_step_status(tiny, 1, "auto")  # another batch: none yet


class _Clock:
    """A perf_counter for step_choice whose every reading advances by the current candidate's next step time
    (`steps[kind]`, cycled): a step timed between two readings took that long."""

    def __init__(self, monkeypatch, steps: dict[str, list[float]]):
        self.now, self.kind, self.taken = 0.0, None, {k: 0 for k in steps}
        real = step_choice._apply
        monkeypatch.setattr(step_choice, "_apply", lambda r, m, v, kind: setattr(self, "kind", kind) or real(r, m, v, kind))
        monkeypatch.setattr(step_choice, "time", types.SimpleNamespace(perf_counter=self))
        self.steps = steps

    def __call__(self) -> float:
        if self.kind is not None:
            ts = self.steps[self.kind]
            self.now += ts[self.taken[self.kind] // 2 % len(ts)]  # two readings a step
            self.taken[self.kind] += 1
        return self.now


def test_the_timing_records_the_replayed_step_once_as_an_engine_does(tiny, unreplayable, monkeypatch):
    """Each candidate's turns run on one cache of its own, which each turn extends: its step is recorded (the measured
    one's found unrecordable) in its first turn only, and replayed in the others (a recording costs ~20 ms where a
    step costs a few); one prefill each, a timed step a turn and one untimed. Steps that come apart stop the turns at
    TURNS[0]."""
    recorded, real = [], StepGraph.record
    monkeypatch.setattr(StepGraph, "record", lambda *a, **k: recorded.append(1) or real(*a, **k))
    made, real_cache = [], step_choice.KVCache
    monkeypatch.setattr(step_choice, "KVCache", lambda *a, **k: made.append(1) or real_cache(*a, **k))
    calls = []
    for name in ("prefill", "decode"):
        real_call = getattr(DecodeRunner, name)
        monkeypatch.setattr(DecodeRunner, name, lambda self, *a, _r=real_call, _n=name, **k: calls.append(_n) or _r(self, *a, **k))
    _Clock(monkeypatch, {"measured": [2.0, 2.2], "replayed": [1.0, 1.1]})
    runner = DecodeRunner(tiny, batch=2)
    assert runner.step.kind == "replayed" and runner.step.us == {"measured": 2e6, "replayed": 1e6}  # medians of 2.0, 2.2, 2.0 and 1.0, 1.1, 1.0
    assert len(recorded) == 2 and len(made) == 2
    assert calls.count("prefill") == 2 and calls.count("decode") == 2 * (1 + step_choice.TURNS[0])


def test_steps_that_overlap_are_timed_for_the_most_turns(tiny, unreplayable, monkeypatch):
    """Candidates whose steps overlap take TURNS[1] turns each, and the lower median wins."""
    calls = []
    real_decode = DecodeRunner.decode
    monkeypatch.setattr(DecodeRunner, "decode", lambda self, *a, **k: calls.append(1) or real_decode(self, *a, **k))
    _Clock(monkeypatch, {"measured": [1.0, 1.3, 1.0], "replayed": [1.2, 0.9, 1.4]})
    runner = DecodeRunner(tiny, batch=2)
    assert len(calls) == 2 * (1 + step_choice.TURNS[1]) and runner.step.kind == "measured"


@pytest.mark.parametrize(("a", "b", "apart"), [([1, 2], [3, 4], True), ([3, 4], [1, 2.5], True), ([1, 3], [2, 4], False),
                                               ([1, 2], [2, 3], False)])  # fmt: skip
def test_apart(a, b, apart):
    assert step_choice._apart(a, b) is apart


def _plan_with(monkeypatch, head_us: dict[str, float], att_us: dict[str, float]):
    """Every block product's decode figures 100 us a call for each kind, gemv.c's chosen; the head's `head_us` (its
    fastest chosen) and the attention's `att_us` (the same): what `_lead` weighs."""
    real = kernels.plan_kernels

    def plan(model, batch=1, weights="auto", **kw):
        out = []
        for c in real(model, batch, weights, **kw):
            if c.rows == batch:
                us = dict(head_us) if c.role == "lm_head" else {k: 100.0 for k in c.us}
                c = dataclasses.replace(c, kind=min(us, key=us.get) if c.role == "lm_head" else "gemv", us=us, rejected={})
            out.append(c)
        return out

    monkeypatch.setattr(kernels, "plan_kernels", plan)
    monkeypatch.setattr(decode, "plan_attention", lambda model, batch, f32: Choice("attention", batch, min(att_us, key=att_us.get), us=att_us))


def test_a_step_its_measurements_put_barely_ahead_is_replayed_untimed(tiny, monkeypatch, tmp_path):
    """The head's MKL 1 % ahead of gemv.c a call and SDPA 2 % ahead of attend.c: the measured step can be at most a
    fraction of a per cent ahead (`_lead`), under SURE_LEAD: replayed, not timed, cached with why, and shown."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    _plan_with(monkeypatch, {"mkl": 100.0, "gemv": 101.0}, {"model": 100.0, "gemv": 102.0})
    monkeypatch.setattr(step_choice, "_time", lambda *a: pytest.fail("timed"))
    runner = DecodeRunner(tiny, batch=2)
    assert runner.step.kind == "replayed" and not runner.step.us and "not timed" in runner.step.rejected["measured"]
    assert runner.model.lm_head.kinds[0] == "gemv" and runner.attention.kind == "gemv"
    got, want = _steps(runner, tiny)
    assert _close(got, want) and any(isinstance(g, StepGraph) for g in runner.graphs.values())
    again = DecodeRunner(tiny, batch=2)
    assert again.step.cached and again.step.kind == "replayed"
    assert "not timed" in decode_step_status(tiny, 2, "auto")


def test_the_lead_weighs_each_replaced_kind_by_the_calls_a_step_makes(tiny, monkeypatch, tmp_path):
    """`_lead`: (each replaced kind's time over its replacement's, times its calls a step: every block's, the head's
    scaled from its timed slice to all of its rows; the attention's per call over KEYS_TIMED) over the measured step.
    Over SURE_LEAD the steps are timed."""
    from gpt2kit import machine

    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(machine, "largest_cache_bytes", lambda: 1 << 20)  # the head timed on a slice of its rows
    _plan_with(monkeypatch, {"mkl": 100.0, "gemv": 130.0}, {"model": 100.0, "gemv": 160.0})
    timed = []
    monkeypatch.setattr(step_choice, "_time", lambda *a: timed.append(1) or {"measured": 2.0, "replayed": 1.0})
    runner = DecodeRunner(tiny, batch=2)
    sweep, n, keys = kernels.decode_sweep(tiny), tiny.config.n_layer, len(step_choice.KEYS_TIMED)
    head = sweep["vocab"] / sweep["head_rows"]
    assert head > 10
    step = 4 * n * 100.0 + head * 100.0 + n * 100.0 / keys
    want = (head * 30.0 + n * 60.0 / keys) / step
    measured = DecodeRunner(tiny, batch=2, step="measured")  # its measured kinds and attention, as `_lead` sees them
    variant, replaced = step_choice._variant(measured)
    assert replaced == ["attention model", "lm_head mkl"]
    assert step_choice._lead(measured, tiny, variant) == pytest.approx(want)
    assert want > step_choice.SURE_LEAD and timed == [1] and runner.step.kind == "replayed" and runner.step.us


def test_steps_timed_on_a_busy_machine_are_not_cached(tiny, unreplayable, monkeypatch):
    from gpt2kit import machine

    monkeypatch.setattr(machine, "busy_meter", lambda path=None: lambda: 0.5)  # others took half the CPU time
    # whole steps timed, whatever this machine's load made of the real products' figures beside the fixture's
    monkeypatch.setattr(step_choice, "_lead", lambda *a: None)
    runner = DecodeRunner(tiny, batch=2)
    assert set(runner.step.us) == {"measured", "replayed"} and not runner.step.cached
    stored = json.loads((unreplayable / "kernels.json").read_text()) if (unreplayable / "kernels.json").exists() else {}
    assert not [k for table in stored.values() for k in table if "decode step" in k]


def test_nothing_to_choose_when_the_measured_step_replays(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(step_choice, "_time", lambda *a: pytest.fail("nothing to time"))
    monkeypatch.setenv("GPT2KIT_ATTENTION", "gemv")
    monkeypatch.setattr(kernels, "plan_kernels", lambda model, batch=1, weights="auto", **kw: [
        Choice(role, rows, "gemv", {"gemv": 1.0}) for role in kernels.ROLES for rows in kernels.measured_rows(batch)])  # fmt: skip
    runner = DecodeRunner(tiny, batch=1)
    assert runner.step is None
    _steps(runner, tiny, batch=1)
    assert any(isinstance(g, StepGraph) for g in runner.graphs.values())


def test_a_forced_attention_or_kernel_is_left_as_it_is(tiny, unreplayable, monkeypatch):
    monkeypatch.setattr(step_choice, "_time", lambda *a: pytest.fail("nothing to time"))
    monkeypatch.setenv("GPT2KIT_KERNEL", "mkl")
    assert DecodeRunner(tiny, batch=1).step is None


def test_a_bad_forced_value_is_one_line(tiny, unreplayable, monkeypatch):
    monkeypatch.setenv(step_choice.ENV, "fast")
    with pytest.raises(ConfigError, match="GPT2KIT_DECODE_STEP='fast' is not a way to run a decode step; use one of"):
        DecodeRunner(tiny, batch=1)
