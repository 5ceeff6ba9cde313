"""kernels.py's choice by measurement, made deterministic: the timer is a fake clock or a fixed table, so each
test knows which kernel must win, what is cached under which key and how many calls a measurement makes.
The real timing, the engine parity and `gpt2kit info --kernels` are in test_kernels.py."""

import json
import re
from types import SimpleNamespace

import pytest
import torch

from conftest import tiny_gpt
from gpt2kit.errors import ConfigError
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L

CPU = torch.device("cpu")
COST = {L._Linear: 3.0, L._Mkl: 1.004, L._OneDnn: 2.0}  # microseconds per call, by kernel class


@pytest.fixture
def model():
    return tiny_gpt(n_layer=5, n_head=2, n_embd=16, n_positions=8, vocab_size=96)


@pytest.fixture
def fixed_times(monkeypatch, tmp_path):
    """_time and _time_step from COST (mkl wins, then onednn), every first call 1 us, every kernel available, the
    cache in tmp_path."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("GPT2KIT_KERNEL", raising=False)
    monkeypatch.setattr(K, "_time", lambda ks, x: COST.get(type(ks[0]), 5.0))
    monkeypatch.setattr(K, "_time_step", lambda calls, best: ({r: COST.get(type(k), 5.0) for r, k, _ in calls}, 1.0))
    clock = iter(range(10**9))
    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=lambda: next(clock) / 1e6))  # 1 us per read
    for cls in (L._OneDnn, L._Int8, L._Bf16OneDnn):
        monkeypatch.setattr(cls, "available", classmethod(lambda cls, device, dtype: device.type == "cpu"))
    return tmp_path / "kernels.json"


def test_cache_path_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert K.kernel_cache_path() == tmp_path / "a" / "kernels.json"
    monkeypatch.delenv("GPT2KIT_CACHE_DIR")
    assert K.kernel_cache_path() == tmp_path / "x" / "gpt2kit" / "kernels.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert K.kernel_cache_path() == tmp_path / "home" / ".cache" / "gpt2kit" / "kernels.json"


def test_machine_key_names_the_cpu_flags_torch_and_threads(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000: rev 2\nflags\t\t: avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: Other CPU\nflags\t\t: sse\n")  # fmt: skip
    real_path = K.Path
    monkeypatch.setattr(K, "Path", lambda p: real_path(info) if p == "/proc/cpuinfo" else real_path(p))
    import hashlib

    digest = hashlib.sha256(b"avx2 fma").hexdigest()[:12]
    threads = torch.get_num_threads()
    assert K.machine_key() == f"Test CPU 9000: rev 2 | flags {digest} | torch {torch.__version__} | {threads} threads"
    info.write_text("flags: sse\n")  # no model name (an ARM box): the platform's name instead
    monkeypatch.setattr(K.platform, "processor", lambda: "")
    monkeypatch.setattr(K.platform, "machine", lambda: "aarch64")
    assert K.machine_key().startswith("aarch64 | flags " + hashlib.sha256(b"sse").hexdigest()[:12] + " | ")
    monkeypatch.setattr(K.platform, "processor", lambda: "armv8")
    assert K.machine_key().startswith("armv8 | ")
    info.unlink()  # no /proc/cpuinfo (macOS, Windows): still a key
    assert K.machine_key().startswith("armv8 | flags " + hashlib.sha256(b"").hexdigest()[:12])


def test_the_fastest_exact_kernel_is_chosen_and_cached(model, fixed_times):
    choices = K.plan_kernels(model, batch=2)
    assert [(c.role, c.rows) for c in choices] == [(r, n) for r in K.ROLES for n in (2, K.PREFILL_ROWS)]
    assert {c.kind for c in choices} == {"mkl"} and not any(c.cached for c in choices)
    assert choices[0].us == {"linear": 3.0, "mkl": 1.0, "onednn": 2.0} and choices[0].rejected == {}  # rounded to 0.01 us
    store = json.loads(fixed_times.read_text())
    table = store[K.machine_key()]
    key = "torch.float32 | auto | attn.c_attn 48x16 | 2 rows"
    assert table[key] == {"role": "attn.c_attn", "rows": 2, "kind": "mkl", "us": choices[0].us, "rejected": {}}
    assert f"torch.float32 | auto | lm_head 96x16 | {K.PREFILL_ROWS} rows" in table and len(table) == 10
    table[key]["kind"] = "onednn"  # what an earlier run measured is believed ...
    fixed_times.write_text(json.dumps(store))
    again = K.plan_kernels(model, batch=2)
    assert again[0].kind == "onednn" and again[0].cached and all(c.cached for c in again) and len(again) == 10
    assert K.plan_kernels(model, batch=2, remeasure=True)[0].kind == "mkl"  # ... until it is measured again
    assert json.loads(fixed_times.read_text())[K.machine_key()][key]["kind"] == "mkl"
    before = fixed_times.read_text()
    fresh = K.plan_kernels(model, batch=2, use_cache=False)
    assert not any(c.cached for c in fresh) and fixed_times.read_text() == before  # not read, not written


def test_batch_zero_plans_for_one_row(model, fixed_times):
    assert {c.rows for c in K.plan_kernels(model, batch=0)} == {1, K.PREFILL_ROWS}
    assert {c.rows for c in K.plan_kernels(model)} == {1, K.PREFILL_ROWS}  # batch 1 by default


def test_nothing_is_cached_when_a_kernel_is_forced(model, fixed_times, monkeypatch):
    fixed_times.write_text(json.dumps({K.machine_key(): {}}))
    monkeypatch.setenv("GPT2KIT_KERNEL", "onednn")
    assert {c.kind for c in K.plan_kernels(model)} == {"onednn"}
    assert json.loads(fixed_times.read_text()) == {K.machine_key(): {}}


def test_weight_modes(model, fixed_times):
    for bad in ("model", "fp8"):
        with pytest.raises(ConfigError, match=re.escape(f"kernel weights must be one of ['auto', 'bf16', 'int8'], got {bad!r}.")):
            K.plan_kernels(model, weights=bad)
    int8 = {(c.role, c.rows): c for c in K.plan_kernels(model, batch=1, weights="int8")}
    c = int8[("mlp.c_fc", 1)]
    approx = {"int8", "int8-dynamic"}  # int8-f32 only where int8 cannot run
    assert set(c.us) == approx and c.kind in approx  # decode: only what was asked for
    assert set(int8[("mlp.c_fc", K.PREFILL_ROWS)].us) == approx | {"linear", "mkl", "onednn"}
    assert int8[("mlp.c_fc", K.PREFILL_ROWS)].kind == "mkl"  # prompt processing may still take an exact one


def test_a_bf16_model_is_measured_in_bf16(model, fixed_times):
    bf16 = tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=96).to(torch.bfloat16)
    choices = {(c.role, c.rows): c for c in K.plan_kernels(bf16, batch=1, weights="bf16")}
    c = choices[("mlp.c_fc", 1)]
    assert c.rejected == {"bf16": "not available on this CPU/torch"}  # weight-only bf16 of a bf16 model: nothing to do
    assert "torch.bfloat16 | bf16 | mlp.c_fc 64x16 | 1 rows" in json.loads(fixed_times.read_text())[K.machine_key()]
    exact = {(c.role, c.rows): c for c in K.plan_kernels(bf16, batch=1)}
    assert exact[("mlp.c_fc", 1)].kind == "mkl" and not exact[("mlp.c_fc", 1)].rejected  # bf16 products pass at 0.05


def test_candidates():
    cands = K._candidates
    assert cands("auto", 1, torch.device("meta"), torch.float32, 64, None) == (["linear"], {})
    assert cands("int8", 1, torch.device("meta"), torch.float32, 64, "mkl") == (["linear"], {})
    kinds, rejected = cands("auto", 1, CPU, torch.float32, 64, None)
    assert kinds == [k for k in K.EXACT if L.KERNELS[k].available(CPU, torch.float32)]
    assert cands("bf16", 8, CPU, torch.bfloat16, 64, None) == ([], {"bf16": "not available on this CPU/torch",
                                                                    "bf16-onednn": "not available on this CPU/torch"})  # fmt: skip
    kinds, rejected = cands("bf16", 9, CPU, torch.bfloat16, 64, None)
    assert set(rejected) == {"bf16", "bf16-onednn"} and kinds == [
        k for k in K.EXACT if L.KERNELS[k].available(CPU, torch.bfloat16)
    ]
    kinds, rejected = cands("int8", 1, CPU, torch.float32, 40, None)
    assert "int8" not in kinds and (rejected["int8"] == "does not support in_features=40" or "int8" in rejected)
    assert cands("auto", 1, CPU, torch.float32, 64, "linear") == (["linear"], {})
    with pytest.raises(ConfigError, match=re.escape("GPT2KIT_KERNEL='fast' is not a kernel; use one of ['bf16', 'bf16-onednn',")):
        cands("auto", 1, CPU, torch.float32, 64, "fast")
    with pytest.raises(ConfigError, match=re.escape("GPT2KIT_KERNEL='bf16' does not run on this machine/shape; unset it")):
        cands("auto", 1, CPU, torch.bfloat16, 64, "bf16")
    with pytest.raises(ConfigError, match=re.escape("GPT2KIT_KERNEL='int8' does not run on this machine/shape;")):
        cands("auto", 1, CPU, torch.float32, 40, "int8")


def test_unsupported_width_is_rejected_with_the_reason(monkeypatch):
    monkeypatch.setattr(L._Int8, "available", classmethod(lambda cls, device, dtype: True))
    kinds, rejected = K._candidates("int8", 1, CPU, torch.float32, 40, None)
    assert rejected == {"int8": "does not support in_features=40"} and kinds == ["int8-dynamic", "int8-f32"]  # the fallback


def test_timed_weights():
    lins = [torch.nn.Linear(8, 5000), torch.nn.Linear(8, 5000, bias=False)]
    decode = K._timed_weights(lins, K.PREFILL_ROWS - 1)
    assert [w is lin.weight.detach() or torch.equal(w, lin.weight) for (w, _), lin in zip(decode, lins)] == [True, True]
    assert torch.equal(decode[0][1], lins[0].bias) and decode[1][1] is None
    (w, b), = K._timed_weights(lins, K.PREFILL_ROWS)  # fmt: skip
    assert w.shape == (K.PREFILL_OUT_TIMED, 8) and torch.equal(w, lins[0].weight[:4096]) and torch.equal(b, lins[0].bias[:4096])
    assert not w.requires_grad and not b.requires_grad
    (w, b), = K._timed_weights(lins[1:], K.PREFILL_ROWS)  # fmt: skip
    assert b is None and K.PREFILL_OUT_TIMED == 4096


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
    monkeypatch.setattr(K, "_time", lambda ks, x: 2.0)
    c = K._measure("mlp.c_fc", _linears(), 3, (["linear", "mkl", "onednn"], {"bf16": "why"}), torch.float32)
    assert (c.role, c.rows, c.kind, c.us, c.cached) == ("mlp.c_fc", 3, "linear", {"linear": 2.0}, False)
    assert re.fullmatch(
        r"output differs from the float32 reference by \d\.\d\de[-+]\d\d \(tolerance 0\.0001\)", c.rejected["mkl"]
    )
    assert c.rejected["onednn"] == "output differs from the float32 reference by nan (tolerance 0.0001)"
    assert c.rejected["bf16"] == "why"


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
    monkeypatch.setattr(K, "_time", lambda ks, x: 1.0)
    assert "bf16" in K._measure("r", _linears(), 2, (["bf16"], {}), torch.float32).rejected
    assert "linear" in K._measure("r", _linears(), 2, (["linear"], {}), torch.float32).rejected
    bf16 = [lin.to(torch.bfloat16) for lin in _linears()]
    assert K._measure("r", bf16, 2, (["linear"], {}), torch.bfloat16).us == {"linear": 1.0}
    monkeypatch.setattr(Off, "exact", False)
    assert K._measure("r", _linears(), 2, (["linear"], {}), torch.float32).us == {"linear": 1.0}


def test_measure_error_is_relative_to_one_plus_the_largest_output(monkeypatch):
    class Near(L._Linear):  # an error of tol * (1.5 + max |y|): just above the bound tol * (1 + max |y|)
        def __call__(self, x):
            y = super().__call__(x)
            return y + 1e-4 * (1.5 + y.abs().max())

    monkeypatch.setitem(L.KERNELS, "linear", Near)
    assert "linear" in K._measure("r", _linears(), 2, (["linear"], {}), torch.float32).rejected


def test_measure_with_nothing_left_falls_back_to_linear(monkeypatch):
    c = K._measure("r", _linears(), 2, ([], {}), torch.float32)
    assert c.kind == "linear" and list(c.us) == ["linear"] and c.us["linear"] != c.us["linear"]  # NaN: not timed


def test_measure_skips_timing_a_kernel_whose_first_call_is_ten_times_slower(monkeypatch):
    """A first call over 10x the best so far and over SLOW_FIRST_CALL_US is not timed; a short slow first
    call (a kernel's one-time set-up) is."""
    monkeypatch.setattr(K, "SLOW_FIRST_CALL_US", 3.0)
    reads = iter([0.0, 1e-6, 1.0, 1.0 + 5.3e-6])  # first calls: linear 1 us, mkl 5.3 us > 10 x linear's 0.5 us
    timed = []
    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=lambda: next(reads)))
    monkeypatch.setattr(K, "_time", lambda ks, x: timed.append(type(ks[0])) or 0.5)
    c = K._measure("r", _linears(), 2, (["linear", "mkl"], {}), torch.float32)
    assert timed == [L._Linear] and c.us["linear"] == 0.5 and c.us["mkl"] == pytest.approx(5.3) and c.kind == "linear"
    reads = iter([0.0, 1e-6, 0.0, 5e-6])  # exactly 10 x the best so far: still timed
    timed.clear()
    c = K._measure("r", _linears(), 2, (["linear", "mkl"], {}), torch.float32)
    assert timed == [L._Linear, L._Mkl]
    monkeypatch.setattr(K, "SLOW_FIRST_CALL_US", 6.0)  # 5.3 us is 10x the best but short: timed
    reads = iter([0.0, 1e-6, 1.0, 1.0 + 5.3e-6])
    timed.clear()
    c = K._measure("r", _linears(), 2, (["linear", "mkl"], {}), torch.float32)
    assert timed == [L._Linear, L._Mkl]


def test_measure_times_the_kernels_of_every_given_layer_on_the_first(monkeypatch):
    seen = []
    clock = iter(range(10**6))
    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=lambda: next(clock) / 1e6))  # first calls: 1 us
    monkeypatch.setattr(K, "_time", lambda ks, x: seen.append((len(ks), tuple(x.shape), x.dtype)) or 1.0)
    lins = _linears(3)
    K._measure("r", lins, 5, (["mkl"], {}), torch.float32)
    assert seen == [(3, (5, 16), torch.float32)]
    c = K._measure("r", _linears(2, bias=False), 5, (["mkl", "linear"], {}), torch.float32)
    assert c.us == {"mkl": 1.0, "linear": 1.0} and c.kind == "mkl"  # a tie keeps the first


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

    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=perf_counter))
    us = K._time([kernel("a"), kernel("b"), kernel("c")], torch.zeros(1))
    # warm-up: a, b, c (1, 2, 3 ms); then calls until the 8 ms budget is spent: 4 + 5 ms, then 6 ms: 3 calls
    assert calls == ["a", "b", "c", "a", "b", "c"]
    import statistics

    assert us == pytest.approx(statistics.quantiles([0.004, 0.005, 0.006], n=4)[0] * 1e6, rel=1e-9)  # microseconds


def test_time_runs_real_kernels_on_the_input():
    w, b, x = torch.randn(8, 16), torch.randn(8), torch.randn(2, 16)
    assert K._time([L.make_kernel("linear", w, b), L.make_kernel("mkl", w, b)], x) > 0


def test_time_makes_at_least_three_and_at_most_200_calls(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    slow = []

    def step(x, dt):
        slow.append(1)
        now["t"] += dt

    K._time([lambda x: step(x, 1.0)], torch.zeros(1))  # each call longer than the whole budget
    assert len(slow) == 1 + 3
    slow.clear()
    K._time([lambda x: step(x, 0.0)], torch.zeros(1))  # a clock that never moves
    assert len(slow) == 1 + 200
    assert K.TIME_BUDGET_S == 0.008


def test_inference_copy_uses_the_decode_choice_up_to_the_threshold(model, fixed_times, monkeypatch):
    plans, asked = {1: "mkl", K.PREFILL_ROWS: "onednn"}, []

    def plan(m, b, w):
        asked.append((m, b, w))
        return [K.Choice(r, n, plans[n] if r != "lm_head" else "linear") for r in K.ROLES for n in (max(1, b), K.PREFILL_ROWS)]

    monkeypatch.setattr(K, "plan_kernels", plan)
    assert K.inference_copy(model, weights="model") is model and asked == []
    copy = K.inference_copy(model)
    assert asked == [(model, 1, "auto")]
    assert (
        copy.transformer.wte.weight is model.transformer.wte.weight
        and copy.transformer.ln_f.weight is model.transformer.ln_f.weight
    )
    K.inference_copy(model, 1, "int8")
    assert asked[-1] == (model, 1, "int8")
    kl = copy.transformer.h[4].mlp.c_proj
    assert isinstance(kl, L.KernelLinear) and kl.kinds == ("mkl", "onednn") and kl.rows == 4
    assert copy.lm_head.kinds == ("linear", "linear") and copy.lm_head.small is copy.lm_head.large
    assert K.kernels_in_use(copy) == {**{r: ("mkl", "onednn") for r in K.ROLES[:4]}, "lm_head": ("linear", "linear")}
    assert K.kernels_in_use(model) == {}
    plans[3] = "mkl"
    assert K.inference_copy(model, batch=3).transformer.h[0].attn.c_attn.rows == 6
    assert not copy.training
    x = torch.randint(0, 96, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(copy(x)[0], model(x)[0], atol=1e-5, rtol=1e-5)


def test_role_slots_and_linears(model):
    slots = K._role_slots(model, "mlp.c_fc")
    assert [(p, n, m) for p, n, m in slots] == [(b.mlp, "c_fc", b.mlp.c_fc) for b in model.transformer.h]
    assert K._role_slots(model, "lm_head") == [(model, "lm_head", model.lm_head)]
    assert K._role_linears(model, "attn.c_proj") == [b.attn.c_proj for b in model.transformer.h]


def test_cache_file_read_and_write_failures(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    assert K._read_cache() == {}
    (tmp_path / "kernels.json").write_text("[1, 2]")
    assert K._read_cache() == {}
    (tmp_path / "kernels.json").write_text('{"m": {"k": 1}}')
    assert K._read_cache() == {"m": {"k": 1}}
    K._write_cache({"b": 1, "a": {"y": 2, "x": 1}})
    text = (tmp_path / "kernels.json").read_text()
    assert text == json.dumps({"a": {"x": 1, "y": 2}, "b": 1}, indent=1, sort_keys=True)
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path / "kernels.json"))  # a file where the folder should be
    K._write_cache({"a": 1})  # no error: measured again next time


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

    monkeypatch.setattr(K, "_time_step", fake)
    choices = K._measure_step(_step_todo(model), 2, torch.float32)
    n = model.config.n_layer
    assert [r for r, _, _ in seen[0]] == [*K.ROLES[:4]] * n + ["lm_head"]
    assert {k for _, k, _ in seen[0]} == {L._Linear} and {k for _, k, _ in seen[1]} == {L._Mkl}
    assert seen[0][2] == ("mlp.c_fc", L._Linear, (2, 16)) and seen[0][3] == ("mlp.c_proj", L._Linear, (2, 64))
    assert {r: c.kind for r, c in choices.items()} == {**{r: "mkl" for r in K.ROLES[:4]}, "lm_head": "linear"}
    assert choices["lm_head"].us == {"linear": 1.0, "mkl": 2.0} and choices["lm_head"].rows == 2


def test_measure_step_rejects_wrong_numbers_per_role(model, monkeypatch):
    monkeypatch.setattr(K, "_time_step", lambda calls, best: ({r: 1.0 for r, _, _ in calls}, 0.01))
    real = L._Mkl.__call__
    monkeypatch.setattr(L._Mkl, "__call__", lambda self, x: real(self, x) + (self.wt.shape[1] == 96))  # wrong on the head
    choices = K._measure_step(_step_todo(model, ("mkl", "linear")), 1, torch.float32)
    assert "output differs from the float32 reference" in choices["lm_head"].rejected["mkl"]
    assert choices["lm_head"].kind == "linear" and choices["mlp.c_fc"].kind == "mkl" and not choices["mlp.c_fc"].rejected


def test_time_step_skips_the_warm_up_and_stops_a_slow_kind(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=lambda: now["t"]))

    durations = {"a": iter([9.0, 1.0, 1.0, 1.0]), "b": iter([9.0, 2.0, 2.0, 2.0])}  # a slow warm-up pass, left out

    def kernel(name):
        def run(x):
            now["t"] += next(durations[name])

        return run

    calls = [("a", kernel("a"), None), ("b", kernel("b"), None)]  # each pass outlasts the budget: 1 + 3 passes
    per_role, pass_s = K._time_step(calls, float("inf"))
    assert per_role == {"a": pytest.approx(1e6), "b": pytest.approx(2e6)} and pass_s == pytest.approx(3.0)
    ran = []
    slow = [("a", lambda x: ran.append(1) or now.update(t=now["t"] + 0.2), None)]  # 0.2 s > 10 x 0.01 and > 50 ms
    per_role, pass_s = K._time_step(slow, 0.01)
    assert len(ran) == 1 and per_role == {"a": pytest.approx(2e5)} and pass_s == pytest.approx(0.2)


def test_decode_is_timed_through_the_step_and_prefill_one_role_at_a_time(model, fixed_times, monkeypatch):
    """The decode row count goes through _measure_step (here onednn wins there), prompt processing through
    _measure (mkl); a batch of PREFILL_ROWS or more is not a decode step: both row counts go through _measure."""
    step_cost = {L._Linear: 3.0, L._Mkl: 2.0, L._OneDnn: 1.0}
    monkeypatch.setattr(K, "_time_step", lambda calls, best: ({r: step_cost[type(k)] for r, k, _ in calls}, 1.0))
    kinds = {(c.role, c.rows): c.kind for c in K.plan_kernels(model, batch=2, use_cache=False)}
    assert kinds == {**{(r, 2): "onednn" for r in K.ROLES}, **{(r, K.PREFILL_ROWS): "mkl" for r in K.ROLES}}
    for batch in (K.PREFILL_ROWS, K.PREFILL_ROWS + 1):
        choices = K.plan_kernels(model, batch=batch, use_cache=False)
        assert {c.rows for c in choices} == {batch, K.PREFILL_ROWS} and {c.kind for c in choices} == {"mkl"}


def test_a_cached_choice_stands_only_if_it_judged_every_candidate_offered_now():
    cands = (["linear", "mkl", "onednn"], {"bf16": "not available on this CPU/torch"})
    assert K._covers({"kind": "mkl", "us": {"linear": 3.0, "mkl": 1.0}, "rejected": {"onednn": "wrong numbers"}}, cands)
    assert not K._covers({"kind": "mkl", "us": {"linear": 3.0, "mkl": 1.0}, "rejected": {}}, cands)  # onednn is new: measure
    assert not K._covers({"kind": "linear", "us": {"linear": 3.0}, "rejected": {"mkl": "wrong", "bf16": "not available"}}, cands)
    assert K._covers({"kind": "linear", "us": {"linear": 3.0}}, (["linear"], {"bf16": "not available"}))  # unavailable: nothing to judge
    # a kernel no longer offered (e.g. int8-f32 where int8 runs) is not kept, whatever was judged
    assert not K._covers({"kind": "int8-f32", "us": {"int8": 2.0, "int8-f32": 1.0, "int8-dynamic": 3.0}}, (["int8", "int8-dynamic"], {}))
    assert K._covers({"kind": "int8", "us": {"int8": 2.0, "int8-f32": 9.0, "int8-dynamic": 3.0}}, (["int8", "int8-dynamic"], {}))
    assert not K._covers({"role": "r", "rows": 1, "kind": "linear"}, cands)  # an entry that judged nothing
    assert K._covers({"role": "r", "rows": 1, "kind": "linear"}, ([], {"bf16": "not available"}))


def test_a_kernel_rejected_for_wrong_numbers_is_not_measured_again(model, fixed_times, monkeypatch):
    real = L._Mkl.__call__
    monkeypatch.setattr(L._Mkl, "__call__", lambda self, x: real(self, x) + 1)
    first = K.plan_kernels(model, batch=2)
    assert {c.kind for c in first} == {"onednn"} and all("mkl" in c.rejected for c in first)
    assert all(c.cached for c in K.plan_kernels(model, batch=2))
    store = json.loads(fixed_times.read_text())
    key = "torch.float32 | auto | mlp.c_fc 64x16 | 2 rows"
    store[K.machine_key()][key] = {"role": "mlp.c_fc", "rows": 2, "kind": "linear"}  # judged nothing: measured again
    fixed_times.write_text(json.dumps(store))
    again = {(c.role, c.rows): c for c in K.plan_kernels(model, batch=2)}
    assert not again[("mlp.c_fc", 2)].cached and again[("mlp.c_fc", 2)].kind == "onednn"
    assert again[("mlp.c_proj", 2)].cached


def test_measure_step_keeps_block_order_with_two_layers(monkeypatch):
    two = tiny_gpt(n_layer=2, n_head=2, n_embd=16, n_positions=8, vocab_size=96)
    seen = []
    monkeypatch.setattr(K, "_time_step", lambda calls, best: seen.append([r for r, _, _ in calls]) or ({}, 0.01))
    K._measure_step(_step_todo(two, ("linear",)), 1, torch.float32)
    assert seen == [[*K.ROLES[:4]] * 2 + ["lm_head"]]


def test_measure_step_times_a_kind_only_where_it_is_a_candidate_and_passes_on_the_best_pass(model, monkeypatch):
    """A kind offered for some roles only is timed on those; each kind's _time_step is told the fastest pass of
    the kinds before it."""
    bests, passes = [], iter([0.03, 0.01, 0.02])

    def fake(calls, best):
        bests.append(best)
        return {r: 1.0 for r, _, _ in calls}, next(passes)

    monkeypatch.setattr(K, "_time_step", fake)
    todo = _step_todo(model, ("linear", "mkl", "onednn"))
    todo["lm_head"] = (todo["lm_head"][0], (["linear"], {"mkl": "why"}))
    choices = K._measure_step(todo, 1, torch.float32)
    assert bests == [float("inf"), 0.03, 0.01]
    assert set(choices["lm_head"].us) == {"linear"} and choices["lm_head"].rejected == {"mkl": "why"}
    assert set(choices["mlp.c_fc"].us) == {"linear", "mkl", "onednn"}


def test_measure_step_rejects_small_float32_errors_and_goes_on_with_the_next_roles(model, monkeypatch):
    """An exact kernel 1e-2 off in float32 is wrong (the 0.05 tolerance is for approximations and bf16); a
    kind wrong on one role is still timed on the roles after it."""
    monkeypatch.setattr(K, "_time_step", lambda calls, best: ({r: 1.0 for r, _, _ in calls}, 0.01))
    real = L._Mkl.__call__

    def off(self, x):
        y = real(self, x)
        return y + 0.01 * (1 + y.abs().max()) if self.wt.shape[1] == 64 else y  # wrong on mlp.c_fc only

    monkeypatch.setattr(L._Mkl, "__call__", off)
    choices = K._measure_step(_step_todo(model, ("mkl", "linear")), 1, torch.float32)
    assert "tolerance 0.0001" in choices["mlp.c_fc"].rejected["mkl"] and set(choices["mlp.c_fc"].us) == {"linear"}
    for role in ("attn.c_attn", "attn.c_proj", "mlp.c_proj", "lm_head"):
        assert set(choices[role].us) == {"mkl", "linear"} and not choices[role].rejected


def _step_clock(monkeypatch, durations):
    """A fake clock that moves only when a fake kernel runs: kernel(name) takes the next of durations[name]."""
    now = {"t": 0.0}
    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    inputs = []

    def kernel(name):
        def run(x):
            inputs.append((name, x))
            now["t"] += next(durations[name])

        return run

    return kernel, inputs


def test_time_step_passes_until_the_budget_per_role_is_spent(monkeypatch):
    """After the warm-up pass: at least 3 passes, then more while TIME_BUDGET_S x roles lasts (a pass that would
    start at the deadline is not made), 20 at most."""
    monkeypatch.setattr(K, "TIME_BUDGET_S", 1.0)
    kernel, inputs = _step_clock(monkeypatch, {"a": iter([0.25] * 100), "b": iter([0.25] * 100)})
    xa, xb = torch.zeros(1), torch.ones(1)
    per_role, pass_s = K._time_step([("a", kernel("a"), xa), ("b", kernel("b"), xb)], float("inf"))
    # warm-up ends at 0.5 s, deadline 0.5 + 2 x 1.0 s; passes end at 1.0, 1.5, 2.0 and 2.5 (= the deadline)
    assert len(inputs) == 2 * 5 and all(x is {"a": xa, "b": xb}[name] for name, x in inputs)
    assert per_role == {"a": 0.25e6, "b": 0.25e6} and pass_s == 0.5
    kernel, inputs = _step_clock(monkeypatch, {"a": iter([0.0] * 100)})  # a clock that never moves
    K._time_step([("a", kernel("a"), xa)], float("inf"))
    assert len(inputs) == 1 + 20


def test_time_step_takes_the_lower_quartile_of_the_timed_passes(monkeypatch):
    import statistics

    kernel, _ = _step_clock(monkeypatch, {"a": iter([9.0, 1.0, 2.0, 4.0])})  # each pass outlasts the budget
    per_role, pass_s = K._time_step([("a", kernel("a"), None)], float("inf"))
    assert per_role == {"a": statistics.quantiles([1.0, 2.0, 4.0], n=4)[0] * 1e6} == {"a": 1e6} and pass_s == 1.0


def test_time_step_stops_after_a_warm_up_over_both_bounds_only(monkeypatch):
    """The warm-up pass is the figure itself only when it is over 10x the best pass and over
    SLOW_FIRST_CALL_US; at either bound exactly it is timed."""

    def passes(warm_up, best):
        kernel, inputs = _step_clock(monkeypatch, {"a": iter([warm_up] + [1.0] * 10)})
        per_role, pass_s = K._time_step([("a", kernel("a"), None)], best)
        return len(inputs), per_role["a"], pass_s

    assert passes(1.3125, 0.125) == (1, 1.3125e6, 1.3125)  # 10.5x the best: not timed further
    assert passes(1.25, 0.125)[0] == 4  # exactly 10x: timed
    assert K.SLOW_FIRST_CALL_US == 50_000
    assert passes(0.05, 0.001)[0] == 4  # exactly 50 ms: timed
    assert passes(0.0625, 0.001) == (1, 0.0625e6, 0.0625)


def test_time_stops_at_the_deadline(monkeypatch):
    monkeypatch.setattr(K, "TIME_BUDGET_S", 4.0)
    now = {"t": 0.0}
    monkeypatch.setattr(K, "time", SimpleNamespace(perf_counter=lambda: now["t"]))
    calls = []
    K._time([lambda x: calls.append(1) or now.update(t=now["t"] + 1.0)], torch.zeros(1))
    assert len(calls) == 1 + 4  # warm-up ends at 1 s, deadline 5 s: calls end at 2, 3, 4 and 5 s


def test_measuring_leaves_the_global_random_stream_alone(model, fixed_times):
    """The inputs are drawn from a generator of their own: a seeded run samples the same tokens whether its
    kernel choice was measured or read from the cache."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    K.plan_kernels(model, batch=2, use_cache=False)  # decode through _measure_step, prefill through _measure
    assert torch.equal(torch.rand(4), expected)
