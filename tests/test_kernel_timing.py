"""How kernel_timing.py times candidates: `measure` and `_time` (one role's layers, prompt processing) and
`measure_step` / `_pass` (a whole decode step in model order), on fake clocks so each test knows the calls
and figures. The decode rounds are in test_kernel_rounds.py."""

import re
from types import SimpleNamespace

import pytest
import torch

from conftest import fake_pass, tiny_gpt
from gpt2kit.model import kernel_timing as KT
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L


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
    # warm-up: b, c (1, 2 ms; the caller's check called a); then calls until the 3 ms budget is spent, 3 at least: 3, 4, 5 ms
    assert calls == ["b", "c", "a", "b", "c"]
    import statistics

    assert us == pytest.approx(statistics.quantiles([0.003, 0.004, 0.005], n=4)[0] * 1e6, rel=1e-9)  # microseconds
    calls.clear()
    durations = iter([0.001] * 1000)
    KT._time([kernel("a")], torch.zeros(1))  # one kernel: no warm-up; 1 ms calls until 3 ms are spent
    assert calls == ["a"] * 3 and KT.TIME_BUDGET_S == 0.003


def test_time_stops_at_a_first_timed_call_far_behind_the_best(monkeypatch):
    """Where the check call (`first`) and the first timed call are each over FAR_BEHIND (2) times the best kind's so
    far, the faster is the figure; at 2x exactly, or with one of them under it (the other a hiccup, or a kernel's set-up),
    timing goes on."""
    now = {"t": 0.0}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    calls, durations = [], []
    kernel = lambda x: calls.append(1) or now.update(t=now["t"] + durations[len(calls) - 1])  # noqa: E731
    durations[:] = [0.0012] + [0.001] * 10
    assert KT._time([kernel], torch.zeros(1), best=499.0, first=1100.0) == pytest.approx(1100.0) and len(calls) == 1
    calls.clear()
    assert KT._time([kernel], torch.zeros(1), best=499.0, first=1300.0) == pytest.approx(1200.0) and len(calls) == 1
    calls.clear()
    assert KT._time([kernel], torch.zeros(1), best=600.0, first=1300.0) == pytest.approx(1000.0) and len(calls) == 3
    calls.clear()
    assert KT._time([kernel], torch.zeros(1), best=499.0) == pytest.approx(1200.0) and len(calls) == 1  # no check call
    calls.clear()
    durations[:] = [0.005, 0.0004, 0.0004, 0.0004]  # a hiccup, then its own speed: timed on, the lower quartile
    assert KT._time([kernel], torch.zeros(1), best=499.0, first=400.0) == pytest.approx(400.0) and len(calls) == 3
    calls.clear()
    durations[:] = [0.0004] * 20  # a slow check call (a kernel's set-up), then its own speed: timed for the budget
    assert KT._time([kernel], torch.zeros(1), best=499.0, first=5000.0) == pytest.approx(400.0) and len(calls) == 8
    assert KT.FAR_BEHIND == 2.0


def test_a_pass_adds_up_each_roles_calls(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    call = lambda dt: lambda x: now.update(t=now["t"] + dt)  # noqa: E731
    assert KT._pass([("a", call(1.0), None), ("b", call(0.5), None), ("a", call(2.0), None)]) == {"a": 3.0, "b": 0.5}


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
    assert len(slow) == 3
    slow.clear()
    KT._time([lambda x: step(x, 0.0)], torch.zeros(1))  # a clock that never moves
    assert len(slow) == 200
    assert KT.TIME_BUDGET_S == 0.003


def _step_todo(model, kinds=("linear", "mkl")):
    return {role: (K._role_linears(model, role), (list(kinds), {})) for role in K.ROLES}


def test_measure_step_runs_each_kind_through_the_step_in_model_order(model, monkeypatch):
    """Block by block (c_attn, attn.c_proj, c_fc, mlp.c_proj), the head last, each call on its own layer's input
    width; the per-role figures choose per role."""
    seen = []

    head = {L._Linear: 1.0, L._Mkl: 2.0}  # us a call; the blocks' layers: 3.0 and 1.5
    cost = fake_pass(lambda k: head[type(k)] if k.w.shape[0] == 96 else {L._Linear: 3.0, L._Mkl: 1.5}[type(k)])
    monkeypatch.setattr(KT, "_pass", lambda calls: seen.append([(role, type(k), tuple(x.shape)) for role, k, x in calls]) or cost(calls))
    choices = KT.measure_step(_step_todo(model), 2, torch.float32)
    n = model.config.n_layer
    assert [r for r, _, _ in seen[0]] == [*K.ROLES[:4]] * n + ["lm_head"]
    assert {k for _, k, _ in seen[0]} == {L._Linear} and {k for _, k, _ in seen[1]} == {L._Mkl}
    assert seen[0][2] == ("mlp.c_fc", L._Linear, (2, 16)) and seen[0][3] == ("mlp.c_proj", L._Linear, (2, 64))
    assert {r: c.kind for r, c in choices.items()} == {**{r: "mkl" for r in K.ROLES[:4]}, "lm_head": "linear"}
    assert choices["lm_head"].us == {"linear": 1.0, "mkl": 2.0} and choices["lm_head"].rows == 2


def test_measure_step_rejects_wrong_numbers_per_role(model, monkeypatch):
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: 1.0))
    real = L._Mkl.__call__
    monkeypatch.setattr(L._Mkl, "__call__", lambda self, x: real(self, x) + (self.wt.shape[1] == 96))  # wrong on the head
    choices = KT.measure_step(_step_todo(model, ("mkl", "linear")), 1, torch.float32)
    assert "output differs from the float32 reference" in choices["lm_head"].rejected["mkl"]
    assert choices["lm_head"].kind == "linear" and choices["mlp.c_fc"].kind == "mkl" and not choices["mlp.c_fc"].rejected


def test_measure_step_keeps_block_order_with_two_layers(monkeypatch):
    two = tiny_gpt(n_layer=2, n_head=2, n_embd=16, n_positions=8, vocab_size=96)
    seen = []
    monkeypatch.setattr(KT, "_pass", lambda calls: seen.append([r for r, _, _ in calls]) or fake_pass(lambda k: 1.0)(calls))
    KT.measure_step(_step_todo(two, ("linear",)), 1, torch.float32)
    assert seen[0] == [*K.ROLES[:4]] * 2 + ["lm_head"] and len(seen) == 1 + KT.FAR_ROUNDS  # alone: uncontested


def test_measure_step_times_a_kind_only_where_it_is_a_candidate(model, monkeypatch):
    """A kind offered for some roles only is timed on those."""
    seen = set()
    monkeypatch.setattr(KT, "_pass", lambda calls: seen.update((type(k), r) for r, k, _ in calls) or fake_pass(lambda k: 1.0)(calls))
    todo = _step_todo(model, ("linear", "mkl", "onednn"))
    todo["lm_head"] = (todo["lm_head"][0], (["linear"], {"mkl": "why"}))
    choices = KT.measure_step(todo, 1, torch.float32)
    assert {k for k, r in seen if r == "lm_head"} == {L._Linear} and len(seen) == 3 * 4 + 1
    assert set(choices["lm_head"].us) == {"linear"} and choices["lm_head"].rejected == {"mkl": "why"}
    assert set(choices["mlp.c_fc"].us) == {"linear", "mkl", "onednn"}


def test_measure_step_rejects_small_float32_errors_and_goes_on_with_the_next_roles(model, monkeypatch):
    """An exact kernel 1e-2 off in float32 is wrong (the 0.05 tolerance is for approximations and bf16); a
    kind wrong on one role is still timed on the roles after it."""
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: 1.0))
    real = L._Mkl.__call__

    def off(self, x):
        y = real(self, x)
        return y + 0.01 * (1 + y.abs().max()) if self.wt.shape[1] == 64 else y  # wrong on mlp.c_fc only

    monkeypatch.setattr(L._Mkl, "__call__", off)
    choices = KT.measure_step(_step_todo(model, ("mkl", "linear")), 1, torch.float32)
    assert "tolerance 0.0001" in choices["mlp.c_fc"].rejected["mkl"] and set(choices["mlp.c_fc"].us) == {"linear"}
    for role in ("attn.c_attn", "attn.c_proj", "mlp.c_proj", "lm_head"):
        assert set(choices[role].us) == {"mkl", "linear"} and not choices[role].rejected


def test_time_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(KT, "TIME_BUDGET_S", 4.0)
    now = {"t": 0.0}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    calls = []
    KT._time([lambda x: calls.append(1) or now.update(t=now["t"] + 1.0)], torch.zeros(1))
    assert len(calls) == 4  # one kernel, no warm-up (its check called it); deadline 4 s: calls end at 1, 2, 3 and 4 s


def test_c_fc_is_timed_with_its_gelu_the_other_roles_without():
    """c_fc's work is its product and GPT-2's GELU, which a kernel may fuse (oneDNN's post-op): both timers call
    `gelu` for that role and the plain product for the others."""
    ran = []

    class Spy:
        def __call__(self, x):
            ran.append(("product", x))

        def gelu(self, x):
            ran.append(("gelu", x))

    KT._pass([("mlp.c_fc", Spy(), "x_fc"), ("mlp.c_proj", Spy(), "x_proj")])
    assert ran == [("gelu", "x_fc"), ("product", "x_proj")]
    ran.clear()
    KT._pass([("mlp.c_fc", Spy(), "x_fc"), ("mlp.c_proj", Spy(), "x_proj")] * 3)
    assert set(ran[::2]) == {("gelu", "x_fc")} and set(ran[1::2]) == {("product", "x_proj")}
    ran.clear()
    KT._time([Spy()], None, gelu=True)
    assert {name for name, _ in ran} == {"gelu"}
    ran.clear()
    KT._time([Spy()], None)
    assert {name for name, _ in ran} == {"product"}


def test_measure_step_keeps_the_kernels_of_the_kind_it_chooses_in_a_near_tie(model, monkeypatch):
    """Two kinds 0.003 us apart round to the same figure; the faster round for round is chosen; the kernels kept
    are every kind's, of every layer of each role (the head's too, here a whole layer); an exact tie keeps the kind
    offered first."""
    cost = {L._Linear: 1.004, L._Mkl: 1.001}
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: cost[type(k)]))
    kept = {}
    choices = KT.measure_step(_step_todo(model, ("linear", "mkl")), 1, torch.float32, kept)
    assert choices["lm_head"].us == {"linear": 1.0, "mkl": 1.0} and choices["lm_head"].kind == "mkl"
    assert choices["lm_head"].paired == {"linear": 1.003}
    assert isinstance(kept["lm_head"]["mkl"][0], L._Mkl) and isinstance(kept["lm_head"]["linear"][0], L._Linear)
    assert {(role, kind): len(ks) for role, kinds in kept.items() for kind, ks in kinds.items()} == {
        **{(role, kind): 5 for role in K.ROLES[:4] for kind in ("linear", "mkl")}, ("lm_head", "linear"): 1, ("lm_head", "mkl"): 1}
    cost[L._Mkl] = 1.004
    choices = KT.measure_step(_step_todo(model, ("linear", "mkl")), 1, torch.float32, kept)
    assert {c.kind for c in choices.values()} == {"linear"} and choices["lm_head"].paired == {"mkl": 1.0}


def test_timed_weights():
    lins = [torch.nn.Linear(8, 5000), torch.nn.Linear(8, 5000, bias=False)]
    decode = KT.timed_weights(lins, K.SHORT_ROWS - 1)
    assert [w is lin.weight.detach() or torch.equal(w, lin.weight) for (w, _), lin in zip(decode, lins)] == [True, True]
    assert torch.equal(decode[0][1], lins[0].bias) and decode[1][1] is None
    for rows, out in ((K.SHORT_ROWS, KT.SHORT_OUT_TIMED), (K.PREFILL_ROWS, KT.PREFILL_OUT_TIMED), (K.PREFILL_ROWS + 1, 512)):
        (w, b), = KT.timed_weights(lins, rows)  # a prompt's rows: one layer  # fmt: skip
        assert w.shape == (out, 8) and torch.equal(w, lins[0].weight[:out]) and torch.equal(b, lins[0].bias[:out])
        assert not w.requires_grad and not b.requires_grad
    (w, b), = KT.timed_weights(lins[1:], K.PREFILL_ROWS)  # fmt: skip
    assert b is None and KT.PREFILL_OUT_TIMED == 512 and KT.SHORT_OUT_TIMED == 4096
    (w, b), = KT.timed_weights([torch.nn.Linear(8, 3072)], K.SHORT_ROWS, "mlp.c_fc")  # fmt: skip
    assert w.shape == (3072, 8)  # a whole block layer of GPT-2 124M (its c_fc), at a short prompt's rows
    (w, b), = KT.timed_weights([torch.nn.Linear(8, 3072)], K.SHORT_ROWS, KT.HEAD_ROLE)  # fmt: skip
    assert w.shape == (KT.PREFILL_OUT_TIMED, 8)  # not the head's


def test_at_short_rows_a_block_layer_is_timed_whole_and_the_head_on_a_slice(monkeypatch):
    sizes = []
    real = KT.make_kernel
    monkeypatch.setattr(KT, "make_kernel", lambda kind, w, b, rows, like=None: sizes.append(len(w)) or real(kind, w, b, rows, like=like))
    lin = [torch.nn.Linear(8, 600)]
    for role in (KT.HEAD_ROLE, "attn.c_attn"):
        c = KT.measure(role, lin, K.SHORT_ROWS, (["linear"], {}), torch.float32)
        assert c.kind == "linear" and c.role == role
    assert sizes == [KT.PREFILL_OUT_TIMED, 600]


def test_prompt_roles_whose_timed_slices_are_alike_are_measured_once(monkeypatch):
    """Two biased 600 x 8 layers give alike 512 x 8 slices at a prompt's rows: measured once, each role its own Choice,
    and so does one without a bias (the head's). With c_fc's GELU, with other candidates or at decode rows (every layer
    timed), each on its own; at SHORT_ROWS (a prompt's fewest; whole 600 x 8 layers) alike ones are shared again."""
    calls = []
    monkeypatch.setattr(KT, "measure", lambda role, lins, rows, cands, dtype: calls.append((role, rows)) or KT.Choice(role, rows, cands[0][0], {cands[0][0]: 1.0}))
    lin = lambda bias=True: [torch.nn.Linear(8, 600, bias=bias)]  # noqa: E731
    both = (["linear", "mkl"], {})
    todo = {("attn.c_attn", 256): (lin(), both), ("attn.c_proj", 256): (lin(), both), ("lm_head", 256): (lin(False), both),
            ("mlp.c_fc", 256): (lin(), both), ("mlp.c_proj", 256): (lin(), (["mkl"], {})),
            ("attn.c_attn", 1): (lin(), both), ("attn.c_proj", 1): (lin(), both), ("attn.c_attn", 32): (lin(), both),
            ("attn.c_proj", 32): (lin(), both)}  # fmt: skip
    out = KT.measure_prompts(todo, torch.float32)
    assert calls == [("attn.c_attn", 256), ("mlp.c_fc", 256), ("mlp.c_proj", 256), ("attn.c_attn", 1), ("attn.c_proj", 1),
                     ("attn.c_attn", 32)]  # fmt: skip
    assert out[("lm_head", 256)].us == out[("attn.c_attn", 256)].us and out[("lm_head", 256)].role == "lm_head"
    assert list(out) == list(todo) and all(c.role == role and c.rows == rows for (role, rows), c in out.items())
    assert out[("attn.c_proj", 256)].us == out[("attn.c_attn", 256)].us and out[("mlp.c_proj", 256)].kind == "mkl"


def _linears(n=2, bias=True):
    torch.manual_seed(0)
    lins = [torch.nn.Linear(16, 24, bias=bias) for _ in range(n)]
    with torch.no_grad():
        for lin in lins:
            if bias:
                lin.bias.normal_()
    return lins


def test_measure_rejects_wrong_numbers_and_keeps_the_fastest_right_one(monkeypatch):
    class DropsBias(L._Mkl):
        def __call__(self, x):
            return torch.mm(x, self.wt)

    class Nan(L._Linear):
        def __call__(self, x):
            return super().__call__(x) * float("nan")

    monkeypatch.setitem(L.KERNELS, "mkl", DropsBias)
    monkeypatch.setitem(L.KERNELS, "onednn", Nan)
    monkeypatch.setattr(KT, "_time", lambda ks, x, gelu=False, best=None, first=None: 2.0)
    c = KT.measure("mlp.c_fc", _linears(), 3, (["linear", "mkl", "onednn"], {"bf16": "why"}), torch.float32)
    assert (c.role, c.rows, c.kind, c.us, c.cached) == ("mlp.c_fc", 3, "linear", {"linear": 2.0}, False)
    assert re.fullmatch(
        r"output differs from the float32 reference by \d\.\d\de[-+]\d\d \(tolerance 0\.0001\)", c.rejected["mkl"]
    )
    assert c.rejected["onednn"] == "output differs from the float32 reference by nan (tolerance 0.0001)"
    assert c.rejected["bf16"] == "why"


def test_measure_checks_c_fc_with_its_gelu_which_a_kernel_may_fuse(monkeypatch):
    """c_fc is checked on the call that is timed, its product and GELU: a kind whose product is right and whose fused
    GELU is not is out there, and in on the other roles."""

    class WrongGelu(L._Mkl):
        def gelu(self, x):
            return torch.nn.functional.gelu(self(x))  # erf, not GPT-2's tanh: ~1e-3 off

    monkeypatch.setitem(L.KERNELS, "mkl", WrongGelu)
    monkeypatch.setattr(KT, "_time", lambda ks, x, gelu=False, best=None, first=None: 1.0)
    fc = KT.measure("mlp.c_fc", _linears(), 32, (["linear", "mkl"], {}), torch.float32)
    proj = KT.measure("mlp.c_proj", _linears(), 32, (["linear", "mkl"], {}), torch.float32)
    assert fc.rejected["mkl"].startswith(KT.WRONG) and fc.kind == "linear"
    assert proj.us == {"linear": 1.0, "mkl": 1.0} and not proj.rejected


def test_measure_tolerance_is_loose_for_approximate_kernels_and_low_precision(monkeypatch):
    class Off(L._Linear):
        exact = True

        def __call__(self, x):
            y = super().__call__(x)
            return y + 0.01 * (1 + y.abs().max())  # relative error 1e-2: wrong for float32, fine for bf16

    class FarOff(L._Linear):
        exact = False

        def __call__(self, x):
            y = super().__call__(x)
            return y + 0.5 * (1 + y.abs().max())  # wrong even for an approximation

    monkeypatch.setitem(L.KERNELS, "bf16", FarOff)
    monkeypatch.setitem(L.KERNELS, "linear", Off)
    monkeypatch.setattr(KT, "_time", lambda ks, x, gelu=False, best=None, first=None: 1.0)
    assert "bf16" in KT.measure("r", _linears(), 2, (["bf16"], {}), torch.float32).rejected
    assert "linear" in KT.measure("r", _linears(), 2, (["linear"], {}), torch.float32).rejected
    bf16 = [lin.to(torch.bfloat16) for lin in _linears()]
    assert KT.measure("r", bf16, 2, (["linear"], {}), torch.bfloat16).us == {"linear": 1.0}
    monkeypatch.setattr(Off, "exact", False)
    assert KT.measure("r", _linears(), 2, (["linear"], {}), torch.float32).us == {"linear": 1.0}


def test_measure_error_is_relative_to_one_plus_the_largest_output(monkeypatch):
    class Near(L._Linear):  # an error of tol * (1.5 + max |y|): just above the bound tol * (1 + max |y|)
        def __call__(self, x):
            y = super().__call__(x)
            return y + 1e-4 * (1.5 + y.abs().max())

    monkeypatch.setitem(L.KERNELS, "linear", Near)
    assert "linear" in KT.measure("r", _linears(), 2, (["linear"], {}), torch.float32).rejected


def test_measure_with_nothing_left_falls_back_to_linear(monkeypatch):
    c = KT.measure("r", _linears(), 2, ([], {}), torch.float32)
    assert c.kind == "linear" and list(c.us) == ["linear"] and c.us["linear"] != c.us["linear"]  # NaN: not timed


def test_measure_skips_timing_a_kernel_whose_first_call_is_ten_times_slower(monkeypatch):
    """A first call over 10x the best so far and over SLOW_FIRST_CALL_US is not timed; a short slow first
    call (a kernel's one-time set-up) is."""
    monkeypatch.setattr(KT, "SLOW_FIRST_CALL_US", 3.0)
    monkeypatch.setattr(KT, "_scout", lambda *a: None)  # no trial call on a slice (test_kernel_sweep.py)
    reads = iter([0.0, 1e-6, 1.0, 1.0 + 5.3e-6])  # first calls: linear 1 us, mkl 5.3 us > 10 x linear's 0.5 us
    timed = []
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: next(reads)))
    monkeypatch.setattr(KT, "_time", lambda ks, x, gelu=False, best=None, first=None: timed.append(type(ks[0])) or 0.5)
    c = KT.measure("r", _linears(), 2, (["linear", "mkl"], {}), torch.float32)
    assert timed == [L._Linear] and c.us["linear"] == 0.5 and c.us["mkl"] == pytest.approx(5.3) and c.kind == "linear"
    reads = iter([0.0, 1e-6, 0.0, 5e-6])  # exactly 10 x the best so far: still timed
    timed.clear()
    c = KT.measure("r", _linears(), 2, (["linear", "mkl"], {}), torch.float32)
    assert timed == [L._Linear, L._Mkl]
    monkeypatch.setattr(KT, "SLOW_FIRST_CALL_US", 6.0)  # 5.3 us is 10x the best but short: timed
    reads = iter([0.0, 1e-6, 1.0, 1.0 + 5.3e-6])
    timed.clear()
    c = KT.measure("r", _linears(), 2, (["linear", "mkl"], {}), torch.float32)
    assert timed == [L._Linear, L._Mkl]


def test_measure_times_the_kernels_of_every_given_layer_on_the_first(monkeypatch):
    seen = []
    clock = iter(range(10**6))
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: next(clock) / 1e6))  # first calls: 1 us
    monkeypatch.setattr(KT, "_time", lambda ks, x, gelu=False, best=None, first=None: seen.append((len(ks), tuple(x.shape), x.dtype, best, first)) or 1.0)
    lins = _linears(3)
    KT.measure("r", lins, 5, (["mkl"], {}), torch.float32)
    assert seen == [(3, (5, 16), torch.float32, float("inf"), pytest.approx(1.0))]  # the check call's 1 us, as `first`
    c = KT.measure("r", _linears(2, bias=False), 5, (["mkl", "linear"], {}), torch.float32)
    assert c.us == {"mkl": 1.0, "linear": 1.0} and c.kind == "mkl"  # a tie keeps the first
    assert seen[-1][-2] == 1.0  # linear is told mkl's time
