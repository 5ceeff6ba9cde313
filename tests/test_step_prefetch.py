"""How a replayed decode step's products prefetch their weights, chosen over whole steps (generate/step_prefetch.py).

The products' own measured kinds are made a mix on purpose (every way of gemv.c's prefetch in one step), the attention
attend.c's, so the step replays; every step's logits are held to the model's own uncached float32 forward, on a
model whose biases and LayerNorms are perturbed."""

import json
import types

import pytest
import torch

from conftest import gemv_buildable, tiny_gpt
from gpt2kit.errors import ConfigError
from gpt2kit.generate import step_choice, step_prefetch
from gpt2kit.generate.decode import DecodeRunner
from gpt2kit.model import gemv, kernels
from gpt2kit.model.kernel_timing import Choice
from gpt2kit.model.kv_cache import KVCache
from gpt2kit.model.linear import KERNELS, STEP_KINDS, packing
from gpt2kit.model.step_graph import StepGraph
from gpt2kit.model_info import prefetch_status

pytestmark = gemv_buildable()

MIX = {"attn.c_attn": "gemv", "attn.c_proj": "gemv-l2", "mlp.c_fc": "gemv-hw", "mlp.c_proj": "gemv-l2", "lm_head": "gemv"}
PF = {"gemv": gemv.PREFETCH["l1"], "gemv-l2": gemv.PREFETCH["l2"], "gemv-hw": gemv.PREFETCH["none"]}


@pytest.fixture(scope="module")
def tiny():
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=64)


@pytest.fixture
def mixed(monkeypatch, tmp_path):
    """Decode products measured as MIX (each role a gemv.c kind of its own prefetch), attend.c's attention; a cache
    directory of its own."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("GPT2KIT_ATTENTION", "gemv")
    monkeypatch.delenv(step_prefetch.ENV, raising=False)
    real = kernels.plan_kernels

    def plan(model, batch=1, weights="auto", **kw):
        return [Choice(c.role, c.rows, MIX[c.role], {MIX[c.role]: 1.0}) if c.rows == batch else c
                for c in real(model, batch, weights, **kw)]  # fmt: skip

    monkeypatch.setattr(kernels, "plan_kernels", plan)
    return tmp_path


def _steps(runner, model, batch, T=9, cache=None):
    """Prefill 3 tokens, then decode the rest of T a token a step -> (the steps' logits, the uncached forward's), both
    (steps, B, V); the recordings the runner holds."""
    seq = torch.randint(0, model.config.vocab_size, (batch, T), generator=torch.Generator().manual_seed(0))
    cache = cache or KVCache(model.config, batch, T, dtype=runner.cache_dtype)
    with torch.inference_mode():
        runner.prefill(seq[:, :3], cache, None)
        steps = [runner.decode(seq[:, t : t + 1], cache, None) for t in range(3, T)]
        full = model(seq)[0][:, 3:].transpose(0, 1)  # (steps, B, V)
    graphs = [g for g in runner.graphs.values() if isinstance(g, StepGraph)]
    return torch.stack(steps), full, graphs


TRIAL_STEPS = 1 + len(step_prefetch.CANDIDATES) * step_choice.TURNS[1]  # a recording, then every turn there can be


def _mix(model) -> list[int]:
    """MIX's prefetches, product by product in step order (each block's four, the head last)."""
    order = [MIX[r] for r in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")] * model.config.n_layer + [MIX["lm_head"]]
    return [PF[k] for k in order]


def _close(got, want):
    return (got - want).abs().max().item() <= 1e-4 * want.abs().max().item()


class _Clock:
    """A perf_counter for step_prefetch whose every reading advances by the way the tape was last set to (`way_ms`,
    milliseconds a step): a step timed between two readings took that long. `ways` lists the ways set, in order."""

    def __init__(self, monkeypatch, way_ms: dict[str, float]):
        self.now, self.way, self.ways, self.way_ms = 0.0, None, [], way_ms
        real = StepGraph.set_prefetches

        def set_prefetches(graph, pf):
            self.way = next((how for how, v in gemv.PREFETCH.items() if set(pf) == {v}), "measured")
            self.ways.append(self.way)
            real(graph, pf)

        monkeypatch.setattr(StepGraph, "set_prefetches", set_prefetches)
        monkeypatch.setattr(step_prefetch, "time", types.SimpleNamespace(perf_counter=self))

    def __call__(self) -> float:
        if self.way is not None:
            self.now += self.way_ms[self.way] / 1e3  # two readings a step: the second's advance is the step's
        return self.now


def test_each_gemv_kind_has_a_kind_for_each_prefetch_on_its_packed_weight():
    for kind in STEP_KINDS:
        for how, pf in gemv.PREFETCH.items():
            other = step_prefetch._prefetching(kind, how)
            assert KERNELS[other].prefetch == pf and packing(KERNELS[other]) is packing(KERNELS[kind])
        assert step_prefetch._prefetching(kind, next(h for h, v in gemv.PREFETCH.items() if v == KERNELS[kind].prefetch)) == kind


def test_a_recorded_steps_prefetches_are_its_products_and_can_be_rewritten(tiny, mixed, monkeypatch):
    monkeypatch.setenv(step_prefetch.ENV, "measured")
    runner = DecodeRunner(tiny, batch=1)
    seq = torch.randint(0, tiny.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(1))
    cache = KVCache(tiny.config, 1, 16, dtype=runner.cache_dtype)
    with torch.inference_mode():
        runner.prefill(seq[:, :3], cache, None)
        runner.decode(seq[:, 3:4], cache, None)  # recorded
        [graph] = runner.graphs.values()
        assert graph.prefetches() == _mix(tiny)  # every product in step order, as its kind prefetches
        rewritten = [(i * 7) % 3 for i in range(len(_mix(tiny)))]
        graph.set_prefetches(rewritten)
        assert graph.prefetches() == rewritten
        steps = [runner.decode(seq[:, t : t + 1], cache, None) for t in range(4, 8)]
        full = tiny(seq)[0][0, 4:]  # (4, V)
    assert _close(torch.cat(steps), full)  # a prefetch changes no number
    for bad in ([0] * (len(rewritten) - 1), [3] * len(rewritten)):
        with pytest.raises(ValueError, match="prefetches"):
            graph.set_prefetches(bad)


@pytest.mark.parametrize("batch", [1, 2])
def test_the_ways_are_timed_on_the_first_steps_and_the_fastest_is_kept_and_cached(tiny, mixed, monkeypatch, batch):
    clock = _Clock(monkeypatch, {"measured": 3.0, "l1": 4.0, "l2": 3.5, "none": 2.0})
    runner = DecodeRunner(tiny, batch=batch)
    assert isinstance(runner.prefetch, step_prefetch.Trial) and clock.ways == []  # nothing timed to build the runner
    seq = torch.randint(0, tiny.config.vocab_size, (batch, 4 + TRIAL_STEPS), generator=torch.Generator().manual_seed(0))
    a = KVCache(tiny.config, batch, seq.shape[1], dtype=runner.cache_dtype)
    b = KVCache(tiny.config, batch, 8, dtype=runner.cache_dtype)
    with torch.inference_mode():
        want = tiny(seq)[0][:, 3:].transpose(0, 1)  # (steps, B, V)
        runner.prefill(seq[:, :3], a, None)
        runner.prefill(seq[:, :3], b, None)
        got = [runner.decode(seq[:, t : t + 1], a, None) for t in (3, 4)]  # recorded, then the trial's first step
        [trial] = [g for g in runner.graphs.values() if isinstance(g, StepGraph)]
        for t in (3, 4):  # another recording, replayed meanwhile as recorded
            runner.decode(seq[:, t : t + 1], b, None)
        [other] = [g for g in runner.graphs.values() if isinstance(g, StepGraph) and g is not trial]
        assert other.prefetches() == _mix(tiny) and isinstance(runner.prefetch, step_prefetch.Trial)
        got += [runner.decode(seq[:, t : t + 1], a, None) for t in range(5, seq.shape[1])]
    assert _close(torch.stack(got), want)  # the trial's steps, each exact
    c = runner.prefetch
    assert isinstance(c, Choice) and c.kind == "none" and c.us == {"measured": 3e3, "l1": 4e3, "l2": 3.5e3, "none": 2e3}
    # all four take the first TURNS[0] turns, then only the leader is left apart from none: the turns end
    timed = clock.ways[: 4 * step_choice.TURNS[0]]
    assert sorted(timed) == sorted(["measured", "l1", "l2", "none"] * step_choice.TURNS[0])
    for role in MIX:
        for _, _, mod in kernels.role_slots(runner.model, role):
            assert mod.kinds[0] == "gemv-hw" and mod.one_kind == "gemv-hw" and type(mod.one) is KERNELS["gemv-hw"]
            assert mod.small.packed is mod.one.packed  # the measured kernel's packed weight, shared
    assert set(trial.prefetches()) == set(other.prefetches()) == {gemv.PREFETCH["none"]}  # both recordings, as chosen
    runner.graphs.clear()
    got, want, [graph] = _steps(runner, tiny, batch)  # a later recording: the chosen way
    assert _close(got, want) and set(graph.prefetches()) == {gemv.PREFETCH["none"]}
    stored = json.loads((mixed / "kernels.json").read_text())
    [key] = [k for table in stored.values() for k in table if "decode prefetch" in k]
    assert f"| {batch} rows |" in key and "attn.c_proj gemv-l2" in key
    status = prefetch_status(tiny, batch, "auto")
    assert status.startswith("none (whole replayed steps timed, ") and "measured 3.00 ms" in status and "none 2.00 ms" in status

    again = DecodeRunner(tiny, batch=batch)
    assert again.prefetch.cached and again.prefetch.kind == "none" and again.model.lm_head.kinds[0] == "gemv-hw"


def _trial(runner, model, batch=1):
    """The runner's decode steps until its trial ends -> the last recording."""
    *_, graphs = _steps(runner, model, batch, T=3 + 1 + TRIAL_STEPS)
    assert isinstance(runner.prefetch, Choice)
    return graphs[-1]


def test_the_measured_mix_is_kept_where_it_is_fastest(tiny, mixed, monkeypatch):
    _Clock(monkeypatch, {"measured": 1.0, "l1": 1.5, "l2": 1.5, "none": 1.5})
    runner = DecodeRunner(tiny, batch=1)
    graph = _trial(runner, tiny)
    assert runner.prefetch.kind == "measured" and len(set(graph.prefetches())) == 3  # the tape as recorded again
    assert {role: kernels.role_slots(runner.model, role)[0][2].kinds[0] for role in MIX} == MIX


def test_where_every_product_prefetches_alike_there_is_no_measured_candidate(tiny, mixed, monkeypatch):
    alike = dict.fromkeys(MIX, "gemv-l2")
    monkeypatch.setattr(kernels, "plan_kernels", lambda model, batch=1, weights="auto", **kw: [
        Choice(role, rows, alike[role], {"gemv-l2": 1.0}) for role in kernels.ROLES for rows in kernels.measured_rows(batch)])  # fmt: skip
    clock = _Clock(monkeypatch, {"measured": 0.5, "l1": 2.0, "l2": 1.0, "none": 3.0})
    runner = DecodeRunner(tiny, batch=1)
    _trial(runner, tiny)
    assert "measured" not in clock.ways and set(runner.prefetch.us) == {"l1", "l2", "none"} and runner.prefetch.kind == "l2"


def test_ways_whose_steps_overlap_are_timed_for_the_most_turns(tiny, mixed, monkeypatch):
    times = {"measured": [1.0, 1.3], "l1": [5.0], "l2": [5.0], "none": [1.2, 0.9, 1.4]}
    clock = _Clock(monkeypatch, {})
    taken = {k: 0 for k in times}

    def advance():  # the next of the way's cycled times
        if clock.way is not None:
            ts = times[clock.way]
            clock.now += ts[taken[clock.way] // 2 % len(ts)] / 1e3
            taken[clock.way] += 1
        return clock.now

    monkeypatch.setattr(step_prefetch, "time", types.SimpleNamespace(perf_counter=advance))
    runner = DecodeRunner(tiny, batch=1)
    _trial(runner, tiny)
    T0, T1 = step_choice.TURNS
    ways = clock.ways[:-1]  # the last: the chosen way written back
    assert ways.count("l1") == ways.count("l2") == T0  # apart from the leader after TURNS[0]: out
    assert ways.count("measured") == ways.count("none") == T1
    assert runner.prefetch.kind == "measured"  # medians 1.0 against 1.2


def test_forced_ways_and_a_bad_one(tiny, mixed, monkeypatch):
    monkeypatch.setenv(step_prefetch.ENV, "l2")
    runner = DecodeRunner(tiny, batch=1)
    assert runner.prefetch.kind == "l2" and runner.model.lm_head.kinds[0] == "gemv-l2"
    assert DecodeRunner(tiny, batch=1, prefetch="l1").model.lm_head.kinds[0] == "gemv"
    monkeypatch.setenv(step_prefetch.ENV, "fast")
    with pytest.raises(ConfigError, match="GPT2KIT_DECODE_PREFETCH='fast' is not a way to prefetch a decode step's weights; use one of"):
        DecodeRunner(tiny, batch=1)


def test_nothing_is_chosen_where_the_step_does_not_replay(tiny, mixed, monkeypatch):
    monkeypatch.setenv("GPT2KIT_ATTENTION", "model")  # SDPA: the step runs in Python
    assert DecodeRunner(tiny, batch=1).prefetch is None
    monkeypatch.setenv("GPT2KIT_ATTENTION", "gemv")
    monkeypatch.setenv("GPT2KIT_STEP_GRAPH", "0")
    assert DecodeRunner(tiny, batch=1).prefetch is None
    assert prefetch_status(tiny, 1, "auto").startswith("not chosen yet")


def test_steps_timed_on_a_busy_machine_are_not_cached(tiny, mixed, monkeypatch):
    from gpt2kit import machine

    monkeypatch.setattr(machine, "busy_meter", lambda path=None: lambda: 0.5)  # others took half the CPU time
    runner = DecodeRunner(tiny, batch=1)
    _trial(runner, tiny)
    assert runner.prefetch.us
    stored = json.loads((mixed / "kernels.json").read_text()) if (mixed / "kernels.json").exists() else {}
    assert not [k for table in stored.values() for k in table if "decode prefetch" in k]
    assert isinstance(DecodeRunner(tiny, batch=1).prefetch, step_prefetch.Trial)  # nothing cached: timed again
