"""kernel_timing.py's runoffs: each decode kind the sweep timed close to a role's best meets it again, the two called
back to back on each layer from emptied caches; on fake clocks, so each test knows the calls and figures."""

import json
from types import SimpleNamespace

import torch

from conftest import needs_gemv
from gpt2kit.model import kernel_timing as KT
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L
from test_kernel_choice import COST, fixed_times_fixture, model_fixture  # noqa: F401 (fixtures)
from test_kernel_timing import _step_todo


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
    clock["empty"] = lambda: clock["log"].append("empty")  # the runoff's emptying of the caches, logged
    layers = {}

    def make_kernel(kind, w, b, rows, like=None):
        i, bias = layers[w.data_ptr()]
        clock["made"].append((kind, i, b is not None and b.data_ptr() == bias, rows))
        return _Fake(kind, i, clock)

    monkeypatch.setattr(KT, "make_kernel", make_kernel)

    def role(model, name):
        linears = K._role_linears(model, name)
        layers.update({lin.weight.data_ptr(): (i, lin.bias is not None and lin.bias.data_ptr()) for i, lin in enumerate(linears)})
        return KT.timed_weights(linears, 1)  # every layer's (weight, bias)

    return clock, role


def test_runoff_times_the_kinds_back_to_back_from_empty_caches(model, monkeypatch):
    """Each pass starts by emptying the caches and calls every kind on each layer in turn, the order rotating pass by
    pass; the first pass warms up and is left out; each kind's times line up call group by call group."""
    clock, role = _runoff_clock(monkeypatch, {"a": 0.75, "b": 0.5}, warm={"b": 50.0})
    layers = role(model, "attn.c_proj")
    held = ("a", {i: _Fake("a", i, clock) for i in range(5)})
    times, kernels = KT._runoff("attn.c_proj", layers, torch.zeros(3, 16), ("a", "b"), held, 3, clock["empty"])
    assert times == {"a": [0.75] * 25, "b": [0.5] * 25}  # 5 timed passes of 5 layers; b's 50 s warm-up left out
    assert kernels["a"] is held[1] and [(k.kind, k.layer) for k in kernels["b"].values()] == [("b", i) for i in range(5)]
    assert clock["made"] == [("b", i, True, 3) for i in range(5)]  # a's kernels: the held ones
    assert clock["inputs"] == {(3, 16)}
    log = clock["log"]
    assert log.count("empty") == 1 + KT.RUNOFF_PASSES[0]  # the budget (0.05 s) is spent by then
    assert all(log[i] == "empty" for i in range(0, len(log), 11)) and len(log) == 11 * (1 + KT.RUNOFF_PASSES[0])
    ab, ba = [(k, i) for i in range(5) for k in ("a", "b")], [(k, i) for i in range(5) for k in ("b", "a")]
    assert [log[p * 11 + 1 : p * 11 + 11] for p in range(4)] == [ab, ba, ab, ba]
    clock, role = _runoff_clock(monkeypatch, {"a": 1.0, "b": 1.1, "c": 0.9})
    times, _ = KT._runoff("mlp.c_fc", role(model, "mlp.c_fc"), torch.zeros(1, 16), ("a", "b", "c"), None, 1, clock["empty"])
    assert {k: [round(t, 9) for t in ts] for k, ts in times.items()} == {"a": [1.0] * 25, "b": [1.1] * 25, "c": [0.9] * 25}
    assert clock["log"][1:4] == [("a", 0, "gelu"), ("b", 0, "gelu"), ("c", 0, "gelu")]  # c_fc: timed with its GELU
    assert clock["log"][17:20] == [("b", 0, "gelu"), ("c", 0, "gelu"), ("a", 0, "gelu")]  # the next pass: rotated
    assert [m[0] for m in clock["made"]] == ["a"] * 5 + ["b"] * 5 + ["c"] * 5  # none held: all packed


@needs_gemv(torch.float32)
def test_a_runoff_packs_each_kinds_own_weights(model, monkeypatch):
    """gemv-l2 and gemv-hw could call gemv's packed weight (the sweep shares it), but in a runoff the calls on a layer
    run back to back: sharing, all but the first would read it from the cache. So each kind packs its own."""
    layers = KT.timed_weights(K._role_linears(model, "attn.c_proj"), 1)
    held = ("gemv", {i: L.make_kernel("gemv", w, b) for i, (w, b) in enumerate(layers)})
    monkeypatch.setattr(KT, "RUNOFF_PASSES", (1, 1))
    _, kernels = KT._runoff("attn.c_proj", layers, torch.zeros(1, 16), ("gemv", "gemv-l2", "gemv-hw"), held, 1, lambda: None)
    assert kernels["gemv"] is held[1]
    for i, k in held[1].items():
        ptrs = {k.packed.w.data_ptr(), kernels["gemv-l2"][i].packed.w.data_ptr(), kernels["gemv-hw"][i].packed.w.data_ptr()}
        assert len(ptrs) == 3 and (kernels["gemv-l2"][i].prefetch, kernels["gemv-hw"][i].prefetch) == (1, 2)


def test_runoff_passes_until_its_budget_is_spent_and_twenty_at_most(model, monkeypatch):
    """After the warm-up pass and RUNOFF_PASSES[0] timed ones, passes go on while the budget (from the end of the
    warm-up) lasts: a pass that would start at the deadline is not made."""
    monkeypatch.setattr(KT, "RUNOFF_PASSES", (1, 20))
    monkeypatch.setattr(KT, "RUNOFF_BUDGET_S", 0.5)
    clock, role = _runoff_clock(monkeypatch, {"a": 0.125, "b": 0.125})  # a pass: 0.25 s
    KT._runoff("lm_head", role(model, "lm_head"), torch.zeros(1, 16), ("a", "b"), None, 1, clock["empty"])
    assert clock["log"].count("empty") == 3  # passes end at 0.25, 0.5, 0.75 = the deadline
    assert clock["made"] == [("a", 0, False, 1), ("b", 0, False, 1)]  # the head has no bias
    monkeypatch.setattr(KT, "RUNOFF_PASSES", (5, 20))
    clock, role = _runoff_clock(monkeypatch, {"a": 0.0, "b": 0.0})  # a clock that never moves
    KT._runoff("lm_head", role(model, "lm_head"), torch.zeros(1, 16), ("a", "b"), None, 1, clock["empty"])
    assert clock["log"].count("empty") == 1 + 20


def test_a_runoff_past_its_first_passes_goes_on_only_while_in_doubt(model, monkeypatch):
    """b at 1.5x or 0.6x a's time is clear after the first timed passes; at 1.1x it goes on while the budget lasts."""
    monkeypatch.setattr(KT, "RUNOFF_PASSES", (2, 20))
    monkeypatch.setattr(KT, "RUNOFF_BUDGET_S", 100.0)
    for b, passes in ((1.5, 3), (0.6, 3), (1.1, 21), (1 / 1.1, 21)):
        clock, role = _runoff_clock(monkeypatch, {"a": 0.1, "b": 0.1 * b})
        KT._runoff("attn.c_proj", role(model, "attn.c_proj"), torch.zeros(1, 16), ("a", "b"), None, 1, clock["empty"])
        assert clock["log"].count("empty") == passes, b
    assert KT.RUNOFF_CLEAR == 1.25


def test_cache_sweeper_reads_twice_the_largest_cache(monkeypatch):
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 4096)
    sweep = KT._cache_sweeper()
    assert sweep.__self__.numel() * 4 == 8192 and float(sweep()) == 2048.0


def test_measure_step_lets_runoffs_overturn_the_sweep(model, monkeypatch):
    """Timed one after the other, a kind can meet a faster memory phase than its rivals: the sweep puts mkl first,
    onednn and linear within the margin; each meets the kind chosen so far, fastest first, the faster call for
    call (the median of the call groups' ratios) is chosen and its kernels kept, and each loser's figure is recorded.
    Outside the margin no runoff runs."""
    monkeypatch.setattr(KT, "RUNOFF_MARGIN", 1.25)
    sweep = {L._Mkl: 1.0, L._OneDnn: 1.1, L._Linear: 1.2}
    monkeypatch.setattr(KT, "_time_step", lambda calls, best: ({r: sweep[type(k)] for r, k, _ in calls}, 0.01))
    truth = {"mkl": [1.0, 1.0, 2.0], "onednn": [0.9, 0.9, 1.8], "linear": [0.95, 0.95, 1.9]}  # per call group
    runoffs, sweepers = [], []
    todo = _step_todo(model, ("mkl", "onednn", "linear"))
    monkeypatch.setattr(KT, "_cache_sweeper", lambda: sweepers.append(len(sweepers)) or sweepers[-1])

    def runoff(role, layers, x, kinds, held, rows, empty_caches):  # the tiny model: swept whole
        assert [w.data_ptr() for w, _ in layers] == [lin.weight.data_ptr() for lin in todo[role][0]]
        assert x.shape == (1, layers[0][0].shape[1]) and rows == 1
        assert empty_caches == sweepers[-1]  # one sweeper for every runoff of the step
        runoffs.append((role, kinds, held and held[0]))
        return {k: truth[k] for k in kinds}, {k: f"{k}'s kernels" for k in kinds}

    monkeypatch.setattr(KT, "_runoff", runoff)
    kept = {}
    choices = KT.measure_step(todo, 1, torch.float32, kept)
    assert runoffs[:2] == [("attn.c_attn", ("mkl", "onednn"), "mkl"), ("attn.c_attn", ("onednn", "linear"), "onednn")]
    assert [r for r, _, _ in runoffs] == [r for r in K.ROLES for _ in range(2)]
    assert {c.kind for c in choices.values()} == {"onednn"} and kept["lm_head"] == ("onednn", "onednn's kernels")
    assert choices["lm_head"].paired == {"mkl": 1.111, "linear": 1.056}
    assert choices["lm_head"].us == {"mkl": 1.0, "onednn": 1.1, "linear": 1.2} and sweepers == [0]
    runoffs.clear()
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32)  # nothing kept
    assert runoffs[:2] == [("attn.c_attn", ("mkl", "onednn"), None), ("attn.c_attn", ("onednn", "linear"), "onednn")]
    truth.update(onednn=[1.0, 1.0, 2.0], linear=[1.3, 1.3, 2.6])  # the sweep's best holds; a tie too
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32)
    assert {c.kind for c in choices.values()} == {"mkl"} and choices["mlp.c_fc"].paired == {"onednn": 1.0, "linear": 1.3}
    sweep.update({L._OneDnn: 1.3, L._Linear: 1.3})  # outside the margin
    runoffs.clear()
    sweepers.clear()
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32)
    assert not runoffs and not sweepers and {c.kind for c in choices.values()} == {"mkl"} and not choices["mlp.c_fc"].paired


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


def test_info_kernels_shows_each_runoff(fixed_times, monkeypatch, capsys):
    """A decode choice a runoff overturned says so in `gpt2kit info --kernels`, with each loser's figure, and the
    JSON report carries them; the cache keeps them for the next run."""
    from gpt2kit.cli.__main__ import main

    monkeypatch.setattr(KT, "RUNOFF_MARGIN", 2.0)  # onednn (2.0 us) is within 2x of mkl (1.004): a runoff each
    monkeypatch.setattr(KT, "_runoff", lambda role, layers, x, kinds, held, rows, empty_caches:
                        ({"mkl": [2.0], "onednn": [1.0]}, {k: None for k in kinds}))  # onednn: half the time
    assert main(["info", "--kernels", "--json"]) in (0, None)
    decode = [c for c in json.loads(capsys.readouterr().out)["choices"] if c["rows"] == 1 and c["role"] in K.ROLES]
    assert len(decode) == 5 and all(c["chosen"] == "onednn" and c["paired"] == {"mkl": 2.0} for c in decode)
    assert main(["info", "--kernels"]) in (0, None)
    out = capsys.readouterr().out
    assert out.count("runoffs (a loser's time over its winner's, call for call): mkl 2.00x") == 5 and "(cached)" in out
