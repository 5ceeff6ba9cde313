"""How kernels.py times candidates: `_time` (one role's layers, prompt processing) and `_measure_step` /
`_time_step` (a whole decode step in model order), on fake clocks so each test knows the calls and figures."""

from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_gpt
from gpt2kit.model import kernel_timing as KT
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L


@pytest.fixture(autouse=True)
def no_runoff(monkeypatch):
    """The fake figures decide: a runoff (timed on the real clock) only where a test asks for one."""
    monkeypatch.setattr(KT, "RUNOFF_MARGIN", 0.0)


@pytest.fixture
def model():
    return tiny_gpt(n_layer=5, n_head=2, n_embd=16, n_positions=8, vocab_size=96)


def test_time_takes_the_lower_quartile_of_a_budget(monkeypatch):
    now = {"t": 0.0}
    durations = iter([0.001 * (i % 7 + 1) for i in range(1000)])

    def perf_counter():
        return now["t"]

    calls = []

    def kernel(name):
        def run(x):
            calls.append(name)
            now["t"] += next(durations)

        return run

    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=perf_counter))
    us = KT._time([kernel("a"), kernel("b"), kernel("c")], torch.zeros(1))
    # warm-up: a, b, c (1, 2, 3 ms); then calls until the 8 ms budget is spent: 4 + 5 ms, then 6 ms: 3 calls
    assert calls == ["a", "b", "c", "a", "b", "c"]
    import statistics

    assert us == pytest.approx(statistics.quantiles([0.004, 0.005, 0.006], n=4)[0] * 1e6, rel=1e-9)  # microseconds


def test_time_runs_real_kernels_on_the_input():
    w, b, x = torch.randn(8, 16), torch.randn(8), torch.randn(2, 16)
    assert KT._time([L.make_kernel("linear", w, b), L.make_kernel("mkl", w, b)], x) > 0


def test_time_makes_at_least_three_and_at_most_200_calls(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    slow = []

    def step(x, dt):
        slow.append(1)
        now["t"] += dt

    KT._time([lambda x: step(x, 1.0)], torch.zeros(1))  # each call longer than the whole budget
    assert len(slow) == 1 + 3
    slow.clear()
    KT._time([lambda x: step(x, 0.0)], torch.zeros(1))  # a clock that never moves
    assert len(slow) == 1 + 200
    assert KT.TIME_BUDGET_S == 0.008


def _step_todo(model, kinds=("linear", "mkl")):
    return {role: (K._role_linears(model, role), (list(kinds), {})) for role in K.ROLES}


def test_measure_step_runs_each_kind_through_the_step_in_model_order(model, monkeypatch):
    """Block by block (c_attn, attn.c_proj, c_fc, mlp.c_proj), the head last, each call on its own layer's input
    width; the per-role figures choose per role."""
    seen = []

    def fake(calls, best):
        seen.append([(role, type(k), tuple(x.shape)) for role, k, x in calls])
        cost = {L._Linear: {"lm_head": 1.0}, L._Mkl: {"lm_head": 2.0}}[type(calls[0][1])]
        return {role: cost.get(role, 3.0 if type(calls[0][1]) is L._Linear else 1.5) for role, _, _ in calls}, 0.01

    monkeypatch.setattr(KT, "_time_step", fake)
    choices = KT.measure_step(_step_todo(model), 2, torch.float32)
    n = model.config.n_layer
    assert [r for r, _, _ in seen[0]] == [*K.ROLES[:4]] * n + ["lm_head"]
    assert {k for _, k, _ in seen[0]} == {L._Linear} and {k for _, k, _ in seen[1]} == {L._Mkl}
    assert seen[0][2] == ("mlp.c_fc", L._Linear, (2, 16)) and seen[0][3] == ("mlp.c_proj", L._Linear, (2, 64))
    assert {r: c.kind for r, c in choices.items()} == {**{r: "mkl" for r in K.ROLES[:4]}, "lm_head": "linear"}
    assert choices["lm_head"].us == {"linear": 1.0, "mkl": 2.0} and choices["lm_head"].rows == 2


def test_measure_step_rejects_wrong_numbers_per_role(model, monkeypatch):
    monkeypatch.setattr(KT, "_time_step", lambda calls, best: ({r: 1.0 for r, _, _ in calls}, 0.01))
    real = L._Mkl.__call__
    monkeypatch.setattr(L._Mkl, "__call__", lambda self, x: real(self, x) + (self.wt.shape[1] == 96))  # wrong on the head
    choices = KT.measure_step(_step_todo(model, ("mkl", "linear")), 1, torch.float32)
    assert "output differs from the float32 reference" in choices["lm_head"].rejected["mkl"]
    assert choices["lm_head"].kind == "linear" and choices["mlp.c_fc"].kind == "mkl" and not choices["mlp.c_fc"].rejected


def test_time_step_skips_the_warm_up_and_stops_a_slow_kind(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: now["t"]))

    durations = {"a": iter([9.0, 1.0, 1.0, 1.0]), "b": iter([9.0, 2.0, 2.0, 2.0])}  # a slow warm-up pass, left out

    def kernel(name):
        def run(x):
            now["t"] += next(durations[name])

        return run

    calls = [("a", kernel("a"), None), ("b", kernel("b"), None)]  # each pass outlasts the budget: 1 + 2 passes
    per_role, pass_s = KT._time_step(calls, float("inf"))
    assert per_role == {"a": pytest.approx(1e6), "b": pytest.approx(2e6)} and pass_s == pytest.approx(3.0)
    ran = []
    slow = [("a", lambda x: ran.append(1) or now.update(t=now["t"] + 0.2), None)]  # 0.2 s > 10 x 0.01 and > 50 ms
    per_role, pass_s = KT._time_step(slow, 0.01)
    assert len(ran) == 1 and per_role == {"a": pytest.approx(2e5)} and pass_s == pytest.approx(0.2)


def test_measure_step_keeps_block_order_with_two_layers(monkeypatch):
    two = tiny_gpt(n_layer=2, n_head=2, n_embd=16, n_positions=8, vocab_size=96)
    seen = []
    monkeypatch.setattr(KT, "_time_step", lambda calls, best: seen.append([r for r, _, _ in calls]) or ({}, 0.01))
    KT.measure_step(_step_todo(two, ("linear",)), 1, torch.float32)
    assert seen == [[*K.ROLES[:4]] * 2 + ["lm_head"]]


def test_measure_step_times_a_kind_only_where_it_is_a_candidate_and_passes_on_the_best_pass(model, monkeypatch):
    """A kind offered for some roles only is timed on those; each kind's _time_step is told the fastest pass of
    the kinds before it."""
    bests, passes = [], iter([0.03, 0.01, 0.02])

    def fake(calls, best):
        bests.append(best)
        return {r: 1.0 for r, _, _ in calls}, next(passes)

    monkeypatch.setattr(KT, "_time_step", fake)
    todo = _step_todo(model, ("linear", "mkl", "onednn"))
    todo["lm_head"] = (todo["lm_head"][0], (["linear"], {"mkl": "why"}))
    choices = KT.measure_step(todo, 1, torch.float32)
    assert bests == [float("inf"), 0.03, 0.01]
    assert set(choices["lm_head"].us) == {"linear"} and choices["lm_head"].rejected == {"mkl": "why"}
    assert set(choices["mlp.c_fc"].us) == {"linear", "mkl", "onednn"}


def test_measure_step_rejects_small_float32_errors_and_goes_on_with_the_next_roles(model, monkeypatch):
    """An exact kernel 1e-2 off in float32 is wrong (the 0.05 tolerance is for approximations and bf16); a
    kind wrong on one role is still timed on the roles after it."""
    monkeypatch.setattr(KT, "_time_step", lambda calls, best: ({r: 1.0 for r, _, _ in calls}, 0.01))
    real = L._Mkl.__call__

    def off(self, x):
        y = real(self, x)
        return y + 0.01 * (1 + y.abs().max()) if self.wt.shape[1] == 64 else y  # wrong on mlp.c_fc only

    monkeypatch.setattr(L._Mkl, "__call__", off)
    choices = KT.measure_step(_step_todo(model, ("mkl", "linear")), 1, torch.float32)
    assert "tolerance 0.0001" in choices["mlp.c_fc"].rejected["mkl"] and set(choices["mlp.c_fc"].us) == {"linear"}
    for role in ("attn.c_attn", "attn.c_proj", "mlp.c_proj", "lm_head"):
        assert set(choices[role].us) == {"mkl", "linear"} and not choices[role].rejected


def _step_clock(monkeypatch, durations):
    """A fake clock that moves only when a fake kernel runs: kernel(name) takes the next of durations[name]."""
    now = {"t": 0.0}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    inputs = []

    def kernel(name):
        def run(x):
            inputs.append((name, x))
            now["t"] += next(durations[name])

        return run

    return kernel, inputs


def test_time_step_passes_until_the_budget_per_role_is_spent(monkeypatch):
    """After the warm-up pass: at least MIN_TIMED_PASSES passes, then more while TIME_BUDGET_S x roles lasts (a pass that would
    start at the deadline is not made), 20 at most."""
    monkeypatch.setattr(KT, "TIME_BUDGET_S", 1.0)
    kernel, inputs = _step_clock(monkeypatch, {"a": iter([0.25] * 100), "b": iter([0.25] * 100)})
    xa, xb = torch.zeros(1), torch.ones(1)
    per_role, pass_s = KT._time_step([("a", kernel("a"), xa), ("b", kernel("b"), xb)], float("inf"))
    # warm-up ends at 0.5 s, deadline 0.5 + 2 x 1.0 s; passes end at 1.0, 1.5, 2.0 and 2.5 (= the deadline)
    assert len(inputs) == 2 * 5 and all(x is {"a": xa, "b": xb}[name] for name, x in inputs)
    assert per_role == {"a": 0.25e6, "b": 0.25e6} and pass_s == 0.5
    kernel, inputs = _step_clock(monkeypatch, {"a": iter([0.0] * 100)})  # a clock that never moves
    KT._time_step([("a", kernel("a"), xa)], float("inf"))
    assert len(inputs) == 1 + 20


def test_time_step_takes_the_lower_quartile_of_the_timed_passes(monkeypatch):
    import statistics

    monkeypatch.setattr(KT, "MIN_TIMED_PASSES", 3)
    kernel, _ = _step_clock(monkeypatch, {"a": iter([9.0, 1.0, 2.0, 4.0])})  # each pass outlasts the budget
    per_role, pass_s = KT._time_step([("a", kernel("a"), None)], float("inf"))
    assert per_role == {"a": statistics.quantiles([1.0, 2.0, 4.0], n=4)[0] * 1e6} == {"a": 1e6} and pass_s == 1.0
    monkeypatch.setattr(KT, "MIN_TIMED_PASSES", 2)
    kernel, inputs = _step_clock(monkeypatch, {"a": iter([9.0, 3.0, 2.0, 4.0])})
    per_role, pass_s = KT._time_step([("a", kernel("a"), None)], float("inf"))
    assert len(inputs) == 3 and per_role == {"a": statistics.quantiles([3.0, 2.0], n=4)[0] * 1e6} and pass_s == 2.0


def test_time_step_stops_after_a_warm_up_over_both_bounds_only(monkeypatch):
    """The warm-up pass is the figure itself only when it is over 10x the best pass and over
    SLOW_FIRST_CALL_US; at either bound exactly it is timed."""

    def passes(warm_up, best):
        kernel, inputs = _step_clock(monkeypatch, {"a": iter([warm_up] + [1.0] * 10)})
        per_role, pass_s = KT._time_step([("a", kernel("a"), None)], best)
        return len(inputs), per_role["a"], pass_s

    assert passes(1.3125, 0.125) == (1, 1.3125e6, 1.3125)  # 10.5x the best: not timed further
    assert KT.MIN_TIMED_PASSES == 2
    assert passes(1.25, 0.125)[0] == 3  # exactly 10x: timed
    assert KT.SLOW_FIRST_CALL_US == 50_000
    assert passes(0.05, 0.001)[0] == 3  # exactly 50 ms: timed
    assert passes(0.0625, 0.001) == (1, 0.0625e6, 0.0625)


def test_time_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(KT, "TIME_BUDGET_S", 4.0)
    now = {"t": 0.0}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    calls = []
    KT._time([lambda x: calls.append(1) or now.update(t=now["t"] + 1.0)], torch.zeros(1))
    assert len(calls) == 1 + 4  # warm-up ends at 1 s, deadline 5 s: calls end at 2, 3, 4 and 5 s


def test_c_fc_is_timed_with_its_gelu_the_other_roles_without():
    """c_fc's work is its product and GPT-2's GELU, which a kernel may fuse (oneDNN's post-op): both timers call
    `gelu` for that role and the plain product for the others."""
    ran = []

    class Spy:
        def __call__(self, x):
            ran.append(("product", x))

        def gelu(self, x):
            ran.append(("gelu", x))

    KT._time_step([("mlp.c_fc", Spy(), "x_fc"), ("mlp.c_proj", Spy(), "x_proj")], float("inf"))
    assert set(ran[::2]) == {("gelu", "x_fc")} and set(ran[1::2]) == {("product", "x_proj")}
    ran.clear()
    KT._time([Spy()], None, gelu=True)
    assert {name for name, _ in ran} == {"gelu"}
    ran.clear()
    KT._time([Spy()], None)
    assert {name for name, _ in ran} == {"product"}


def test_the_rivals_are_the_kinds_within_the_margin_fastest_first(monkeypatch):
    monkeypatch.setattr(KT, "RUNOFF_MARGIN", 1.25)
    rivals = lambda us, kind: KT._rivals(KT.Choice("r", 1, kind, us))  # noqa: E731
    assert rivals({"gemv": 100.0, "mkl": 124.0, "gemv-l2": 110.0, "linear": 125.5}, "gemv") == ["gemv-l2", "mkl"]
    assert rivals({"gemv": 100.0, "gemv-l2": 125.0}, "gemv") == ["gemv-l2"]  # exactly the margin: in
    assert rivals({"gemv": 100.0, "mkl": float("nan"), "onednn": 110.0}, "gemv") == ["onednn"]  # NaN: not timed
    assert rivals({"gemv": 100.0}, "gemv") == [] and rivals({"linear": float("nan")}, "linear") == []
    assert rivals({"a": 0.0, "b": 0.0}, "a") == []  # a clock that did not move: no runoff


class _Fake:
    """A kernel on a fake clock: each call logs (kind, layer), with "gelu" for a GELU call, and takes cost[kind]
    seconds, or warm[kind] on its first call; its input's shape goes to clock["inputs"]."""

    def __init__(self, kind, layer, clock):
        self.kind, self.layer, self.clock, self.calls = kind, layer, clock, 0

    def __call__(self, x, gelu=False):
        c = self.clock
        c["log"].append((self.kind, self.layer, "gelu") if gelu else (self.kind, self.layer))
        c["inputs"].add(tuple(x.shape))
        c["t"] += c["warm"].get(self.kind, c["cost"][self.kind]) if self.calls == 0 else c["cost"][self.kind]
        self.calls += 1

    def gelu(self, x):
        self(x, gelu=True)


def _runoff_clock(monkeypatch, cost, warm=None):
    """A fake clock, and a make_kernel of _Fake kernels that knows each one's layer by its weight's storage and
    records (kind, layer, its bias is the layer's, rows) in clock["made"]."""
    clock = {"t": 0.0, "log": [], "cost": cost, "warm": warm or {}, "made": [], "inputs": set()}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: clock["t"]))
    monkeypatch.setattr(KT, "_cache_sweeper", lambda: lambda: clock["log"].append("empty"))
    layers = {}

    def make_kernel(kind, w, b, rows):
        i, bias = layers[w.data_ptr()]
        clock["made"].append((kind, i, b is not None and b.data_ptr() == bias, rows))
        return _Fake(kind, i, clock)

    monkeypatch.setattr(KT, "make_kernel", make_kernel)

    def role(model, name):
        linears = K._role_linears(model, name)
        layers.update({lin.weight.data_ptr(): (i, lin.bias is not None and lin.bias.data_ptr()) for i, lin in enumerate(linears)})
        return linears

    return clock, role


def test_runoff_times_the_two_kinds_back_to_back_from_empty_caches(model, monkeypatch):
    """Each pass starts by emptying the caches and calls both kinds on each layer in turn, the first of a pair
    alternating pass by pass; the first pass warms up and is left out; the median of second / best decides."""
    clock, role = _runoff_clock(monkeypatch, {"a": 0.75, "b": 0.5}, warm={"b": 50.0})
    linears = role(model, "attn.c_proj")
    held = ("a", {i: _Fake("a", i, clock) for i in range(5)})
    ratio, kernels = KT._runoff("attn.c_proj", linears, torch.zeros(3, 16), ("a", "b"), held, 3)
    assert ratio == 0.667 and [(k.kind, k.layer) for k in kernels.values()] == [("b", i) for i in range(5)]
    assert clock["made"] == [("b", i, True, 3) for i in range(5)]  # a's kernels: the held ones
    assert clock["inputs"] == {(3, 16)}
    log = clock["log"]
    assert log.count("empty") == 1 + KT.RUNOFF_PASSES[0]  # the budget (0.05 s) is spent by then
    assert all(log[i] == "empty" for i in range(0, len(log), 11)) and len(log) == 11 * (1 + KT.RUNOFF_PASSES[0])
    ba, ab = [(k, i) for i in range(5) for k in ("b", "a")], [(k, i) for i in range(5) for k in ("a", "b")]
    assert [log[p * 11 + 1 : p * 11 + 11] for p in range(4)] == [ba, ab, ba, ab]
    clock, role = _runoff_clock(monkeypatch, {"a": 1.0, "b": 1.1})
    ratio, kernels = KT._runoff("mlp.c_fc", role(model, "mlp.c_fc"), torch.zeros(1, 16), ("a", "b"), None, 1)
    assert ratio == 1.1 and clock["log"][1:3] == [("b", 0, "gelu"), ("a", 0, "gelu")]  # c_fc: timed with its GELU
    assert [m[0] for m in clock["made"]] == ["a"] * 5 + ["b"] * 5  # neither held: both packed
    monkeypatch.setattr(KT, "RUNOFF_PASSES", (1, 1))  # one warm-up pass (b 50 s a call, left out) and one timed pass
    clock, role = _runoff_clock(monkeypatch, {"a": 1.0, "b": 0.8}, warm={"b": 50.0})
    assert KT._runoff("attn.c_proj", role(model, "attn.c_proj"), torch.zeros(1, 16), ("a", "b"), None, 1)[0] == 0.8


def test_runoff_passes_until_its_budget_is_spent_and_twenty_at_most(model, monkeypatch):
    """After the warm-up pass and RUNOFF_PASSES[0] timed ones, passes go on while the budget (from the end of the
    warm-up) lasts: a pass that would start at the deadline is not made."""
    monkeypatch.setattr(KT, "RUNOFF_PASSES", (1, 20))
    monkeypatch.setattr(KT, "RUNOFF_BUDGET_S", 0.5)
    clock, role = _runoff_clock(monkeypatch, {"a": 0.125, "b": 0.125})  # a pass: 0.25 s
    KT._runoff("lm_head", role(model, "lm_head"), torch.zeros(1, 16), ("a", "b"), None, 1)
    assert clock["log"].count("empty") == 3  # passes end at 0.25, 0.5, 0.75 = the deadline
    assert clock["made"] == [("a", 0, False, 1), ("b", 0, False, 1)]  # the head has no bias
    monkeypatch.setattr(KT, "RUNOFF_PASSES", (5, 20))
    clock, role = _runoff_clock(monkeypatch, {"a": 0.0, "b": 0.0})  # a clock that never moves
    KT._runoff("lm_head", role(model, "lm_head"), torch.zeros(1, 16), ("a", "b"), None, 1)
    assert clock["log"].count("empty") == 1 + 20


def test_cache_sweeper_reads_twice_the_largest_cache(monkeypatch):
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 4096)
    sweep = KT._cache_sweeper()
    assert sweep.__self__.numel() * 4 == 8192 and float(sweep()) == 2048.0


def test_measure_step_keeps_the_kernels_of_the_kind_it_chooses_in_a_near_tie(model, monkeypatch):
    """Two kinds 0.003 us apart round to the same figure, and the first timed is chosen: the kernels kept are its
    own (compared at the figures' rounding, not finer)."""
    sweep = {L._Linear: 1.004, L._Mkl: 1.001}
    monkeypatch.setattr(KT, "_time_step", lambda calls, best: ({r: sweep[type(k)] for r, k, _ in calls}, 0.01))
    kept = {}
    choices = KT.measure_step(_step_todo(model, ("linear", "mkl")), 1, torch.float32, kept)
    assert choices["lm_head"].us == {"linear": 1.0, "mkl": 1.0} and choices["lm_head"].kind == "linear"
    assert {kind for kind, _ in kept.values()} == {"linear"} and isinstance(kept["lm_head"][1][0], L._Linear)


def test_measure_step_lets_runoffs_overturn_the_sweep(model, monkeypatch):
    """Timed one after the other, a kind can meet a faster memory phase than its rivals: the sweep puts mkl first,
    onednn and linear within the margin; each meets the kind chosen so far, fastest first, the faster call for
    call is chosen and its kernels kept, and each loser's figure is recorded. Outside the margin no runoff runs."""
    monkeypatch.setattr(KT, "RUNOFF_MARGIN", 1.25)
    sweep = {L._Mkl: 1.0, L._OneDnn: 1.1, L._Linear: 1.2}
    monkeypatch.setattr(KT, "_time_step", lambda calls, best: ({r: sweep[type(k)] for r, k, _ in calls}, 0.01))
    truth = {"mkl": 1.0, "onednn": 0.9, "linear": 0.95}  # what a runoff finds: onednn beats mkl, then linear
    runoffs = []
    todo = _step_todo(model, ("mkl", "onednn", "linear"))

    def runoff(role, linears, x, kinds, held, rows):
        assert linears == todo[role][0] and x.shape == (1, linears[0].in_features) and rows == 1
        runoffs.append((role, kinds, held and held[0]))
        return round(truth[kinds[1]] / truth[kinds[0]], 3), f"{kinds[1]}'s kernels"

    monkeypatch.setattr(KT, "_runoff", runoff)
    kept = {}
    choices = KT.measure_step(todo, 1, torch.float32, kept)
    assert runoffs[:2] == [("attn.c_attn", ("mkl", "onednn"), "mkl"), ("attn.c_attn", ("onednn", "linear"), "onednn")]
    assert [r for r, _, _ in runoffs] == [r for r in K.ROLES for _ in range(2)]
    assert {c.kind for c in choices.values()} == {"onednn"} and kept["lm_head"] == ("onednn", "onednn's kernels")
    assert choices["lm_head"].paired == {"mkl": 1.111, "linear": 1.056}
    assert choices["lm_head"].us == {"mkl": 1.0, "onednn": 1.1, "linear": 1.2}
    runoffs.clear()
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32)  # nothing kept
    assert runoffs[:2] == [("attn.c_attn", ("mkl", "onednn"), None), ("attn.c_attn", ("onednn", "linear"), "onednn")]
    truth.update(onednn=1.0, linear=1.3)  # the sweep's best holds; a tie too
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32)
    assert {c.kind for c in choices.values()} == {"mkl"} and choices["mlp.c_fc"].paired == {"onednn": 1.0, "linear": 1.3}
    sweep.update({L._OneDnn: 1.3, L._Linear: 1.3})  # outside the margin
    runoffs.clear()
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32)
    assert not runoffs and {c.kind for c in choices.values()} == {"mkl"} and not choices["mlp.c_fc"].paired


def test_largest_cache_is_read_from_sysfs_with_a_default(tmp_path):
    from gpt2kit import machine

    for index, size in ((0, "48K"), (1, "32K"), (2, "2048K"), (3, "32768K"), (4, "1M")):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert machine.largest_cache_bytes(str(tmp_path)) == 32 << 20
    (tmp_path / "index3" / "size").write_text("64M\n")
    (tmp_path / "index4" / "size").write_text("garbled\n")  # left out, not an error
    assert machine.largest_cache_bytes(str(tmp_path)) == 64 << 20
    assert machine.largest_cache_bytes(str(tmp_path / "absent")) == machine.DEFAULT_CACHE_BYTES == 32 << 20
