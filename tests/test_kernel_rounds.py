"""kernel_timing.py's decode rounds: each kind in turn passes through a decode step's products, the kinds compared
round by round; on fake clocks, so each test knows the calls and figures."""

import json
from types import SimpleNamespace

import torch

from conftest import fake_pass
from gpt2kit.model import kernel_timing as KT
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L
from test_kernel_choice import COST, fixed_times_fixture, model_fixture  # noqa: F401 (fixtures)
from test_kernel_timing import _step_todo


class _Fake:
    """A kernel on a fake clock: each call logs (kind, layer) and takes the next of clock["cost"][kind]'s seconds
    (a list, cycled; its first entry is the warm-up pass's)."""

    def __init__(self, kind, layer, clock):
        self.kind, self.layer, self.clock = kind, layer, clock

    def __call__(self, x):
        c = self.clock
        c["log"].append((self.kind, self.layer))
        costs = c["cost"][self.kind]
        c["t"] += costs[min(c["calls"].get(self.kind, 0) // c["layers"], len(costs) - 1)]
        c["calls"][self.kind] = c["calls"].get(self.kind, 0) + 1

    gelu = __call__


def _entrants(monkeypatch, cost, roles=("r", "s")):
    """Fake entrants on a fake clock: each kind of `cost` ({kind: seconds a call, pass by pass: a list whose last
    entry repeats}) with one layer per role."""
    clock = {"t": 0.0, "log": [], "cost": cost, "calls": {}, "layers": len(roles)}
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: clock["t"]))
    return clock, {kind: [(role, _Fake(kind, i, clock), None) for i, role in enumerate(roles)] for kind in cost}


def test_each_round_passes_every_kind_through_its_calls_the_order_rotating(monkeypatch):
    """A warm-up round, then FAR_ROUNDS timed rounds; a kind's pass makes all its calls in step order; the kinds'
    order rotates round by round; each kind's times per role line up round by round, the warm-up left out. b and c,
    2x and 3x a's time (over FAR), are out after those: nothing is left open, so no more rounds run."""
    clock, entrants = _entrants(monkeypatch, {"a": [5.0, 1.0], "b": [2.0], "c": [3.0]})
    times, live = KT._rounds(entrants)
    assert times == {"a": {"r": [1.0] * 2, "s": [1.0] * 2}, "b": {"r": [2.0] * 2, "s": [2.0] * 2}, "c": {"r": [3.0] * 2, "s": [3.0] * 2}}
    passes = [clock["log"][i][0] for i in range(0, len(clock["log"]), 2)]
    assert passes == list("abc" "abc" "bca") and KT.FAR_ROUNDS == 2 and KT.FAR == 1.5
    assert all(clock["log"][i + 1] == (clock["log"][i][0], 1) and clock["log"][i][1] == 0 for i in range(0, len(clock["log"]), 2))
    assert live == {"a": {"r", "s"}, "b": set(), "c": set()}


def _alternating(high: float, low: float, n: int = 30) -> list[float]:
    """Passes of `high`, `low`, `high`, ... seconds a call (a kind sometimes ahead), after a warm-up of `high`."""
    return [high] + [high if i % 2 == 0 else low for i in range(n)]


def test_rounds_go_on_past_the_first_only_while_a_role_is_open_and_the_budget_lasts(monkeypatch):
    """A kind over FAR of its role's leader, round for round, is out after FAR_ROUNDS rounds; one over CLEAR after
    ROUNDS[0], and so is one the leader beat in every one of them (a sign test: 5 of 5), and, after TIE_ROUNDS, one
    within TIE of it; one still open (1.2x the leader's time in most rounds, faster in the others) keeps rounds going
    while ROUNDS_BUDGET_S (from the end of the first ROUNDS[0]) lasts: rounds of 3.8 and 4.4 ms by turns, 13 more
    start within its 50 ms."""
    u = 0.001
    for b, rounds in (([1.6 * u], 2), ([u / 1.6], 2), ([1.49 * u], 5), ([1.3 * u], 5), ([u / 1.3], 5), ([1.2 * u], 5),
                      ([1.019 * u], 5), ([u / 1.019], 5), ([1.021 * u], 5),
                      (_alternating(1.2 * u, 0.9 * u), 18), (_alternating(0.9 * u, 1.2 * u), 18),
                      (_alternating(1.01 * u, 0.995 * u), KT.TIE_ROUNDS)):  # the last: a tie, though a won only half; fmt: skip
        clock, entrants = _entrants(monkeypatch, {"a": [u], "b": b})
        times, live = KT._rounds(entrants)
        assert len(times["a"]["r"]) == len(times["b"]["r"]) == rounds, b
        assert (live["a"] == {"r", "s"}) != (live["b"] == {"r", "s"}) or rounds == 18, b  # one left in, where decided
    assert KT.CLEAR == 1.25 and KT.TIE == 1.02 and KT.TIE_ROUNDS == 10 and KT.ROUNDS == (5, 20) and KT.ROUNDS_BUDGET_S == 0.05
    monkeypatch.setattr(KT, "ROUNDS_BUDGET_S", 0.5)
    monkeypatch.setattr(KT, "TIE", 0.99)  # no tie, no sign test: only the budget ends the rounds
    monkeypatch.setattr(KT, "SURE", 0.0)
    clock, entrants = _entrants(monkeypatch, {"a": [0.125], "b": [0.125]})  # a round: 0.5 s
    times, _ = KT._rounds(entrants)
    assert len(times["a"]["r"]) == 6  # the first 5 end at 3.0 s, the deadline 3.5: one more round, ending at it


def test_a_kind_the_leader_beat_in_7_of_8_rounds_is_out_after_the_eighth(monkeypatch):
    """1.1x the leader's time but faster in the fifth round: 4 of 5 (a coin: 6 in 32) leaves it open, 7 of 8 (9 in
    256, under SURE) does not."""
    u = 0.001
    clock, entrants = _entrants(monkeypatch, {"a": [u], "b": [1.1 * u] * 5 + [0.9 * u] + [1.1 * u] * 30})
    times, live = KT._rounds(entrants)
    assert len(times["b"]["r"]) == 8 and live == {"a": {"r", "s"}, "b": set()}
    assert KT._beaten([1.0] * 5, [2.0] * 5) and not KT._beaten([1.0] * 4 + [3.0], [2.0] * 5)
    assert KT._beaten([1.0] * 7 + [3.0], [2.0] * 8) and not KT._beaten([1.0] * 6 + [3.0] * 2, [2.0] * 8)
    assert not KT._beaten([1.0] * 5, [1.0] * 5) and KT.SURE == 0.05  # a tie is no win


def test_a_kind_out_of_some_roles_still_passes_through_all_its_calls(monkeypatch):
    """So that between two reads of a weight (two kinds may share one, linear.packing) the other layers stream from
    memory: b, out of role s (2x a there) but open on r, still calls both layers each round; out of both, none."""
    monkeypatch.setattr(KT, "ROUNDS_BUDGET_S", 1e9)
    clock, entrants = _entrants(monkeypatch, {"a": [1.0], "b": _alternating(1.1, 0.97)})
    slow_s = entrants["b"][1][1]
    slow_s.__class__ = type("SlowS", (_Fake,), {"__call__": lambda self, x: (_Fake.__call__(self, x), clock.update(t=clock["t"] + 1.0))})
    times, live = KT._rounds(entrants)
    assert live == {"a": {"r", "s"}, "b": {"r"}} and len(times["b"]["s"]) == len(times["b"]["r"]) == KT.ROUNDS[1]
    assert clock["log"].count(("b", 1)) == clock["log"].count(("b", 0)) == 1 + KT.ROUNDS[1]


def test_a_kind_slow_in_its_warm_up_keeps_that_figure_and_runs_no_more(monkeypatch):
    """Over 10x the best warm-up pass and over SLOW_FIRST_CALL_US: its warm-up figure is kept and it is out; at 10x
    exactly, or under 50 ms, it is timed (and then out of both roles after FAR_ROUNDS, 1 s a call)."""
    u = 2.0**-9  # seconds a call; a pass: 2 calls
    for a, warm, calls in ((2 * u, 21 * u, 1), (2 * u, 20 * u, 3), (u, 11 * u, 3)):  # 82 ms; 78 ms (10x); 43 ms (11x)
        clock, entrants = _entrants(monkeypatch, {"a": [a], "b": [warm, 1.0]})
        times, live = KT._rounds(entrants)
        assert clock["log"].count(("b", 0)) == calls and live["b"] == set(), (a, warm)
        assert times["b"]["r"] == ([warm] if calls == 1 else [1.0] * 2)
    assert KT.SLOW_FIRST_CALL_US == 50_000
    clock, entrants = _entrants(monkeypatch, {"a": [0.001], "b": [0.02499999, 1.0]})  # 25x, a hair under 50 ms: timed
    KT._rounds(entrants)
    assert clock["log"].count(("b", 0)) == 3


def test_the_leader_is_the_faster_round_for_round_not_by_median():
    """b met a slow memory phase once more than a (round 3): a's median is lower, but b took less time in 4 of 5
    rounds, so b leads; a tie keeps the kind offered first."""
    times = {"a": [1.0, 1.0, 1.0, 9.0, 9.0], "b": [0.95, 0.95, 8.0, 8.5, 8.5]}
    assert KT._leader(times, ["a", "b"]) == "b" and KT._leader(times, ["a"]) == "a"
    assert KT._leader({"a": [1.0, 2.0], "b": [1.0, 2.0]}, ["a", "b"]) == "a"
    assert KT._leader({"a": [1.0, 2.0], "b": [1.0, 2.0]}, ["b", "a"]) == "b"
    c = KT._standing("r", 1, times, {"a", "b"}, 2, {})
    assert (c.kind, c.us, c.paired) == ("b", {"a": 0.5e6, "b": 4.0e6}, {"a": round(1 / 0.95, 3)})
    c = KT._standing("r", 1, times, {"a"}, 2, {"x": "why"})  # b out of the role: the leader of those still in it
    assert (c.kind, c.paired, c.rejected) == ("a", {"b": 0.95}, {"x": "why"})
    assert KT._standing("r", 1, {}, set(), 2, {"x": "why"}).kind == "linear"  # nothing timed: the reference
    c = KT._standing("r", 1, {"b": [9.0]}, set(), 1, {})  # the role's one kind out after its slow warm-up: still its
    assert (c.kind, c.us, c.paired) == ("b", {"b": 9e6}, {})


def test_measure_step_keeps_the_chosen_kinds_kernels_and_records_the_rest(model, monkeypatch):
    """Per role, the faster round for round wins; `kept` receives every kind's kernels of the role's swept layers."""
    cost = {L._Mkl: 1.0, L._OneDnn: 0.9, L._Linear: 1.2}
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: cost[type(k)] * (2 if type(k) is L._Mkl and k.w.shape[0] == 96 else 1)))
    kept = {}
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32, kept)
    assert {c.kind for c in choices.values()} == {"onednn"} and all(set(kinds) == {"mkl", "onednn", "linear"} for kinds in kept.values())
    assert choices["lm_head"].paired == {"mkl": 2.222, "linear": 1.333} and choices["lm_head"].us == {"mkl": 2.0, "onednn": 0.9, "linear": 1.2}
    assert all(type(k) is L.KERNELS[kind] for kinds in kept.values() for kind, ks in kinds.items() for k in ks.values())
    cost[L._OneDnn] = 1.3  # mkl wins the blocks' roles and linear the head
    choices = KT.measure_step(_step_todo(model, ("mkl", "onednn", "linear")), 1, torch.float32, kept)
    assert {r: c.kind for r, c in choices.items()} == {**dict.fromkeys(K.ROLES[:4], "mkl"), "lm_head": "linear"}


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


def test_info_kernels_shows_each_kinds_time_over_the_chosen(fixed_times, monkeypatch, capsys):
    """`gpt2kit info --kernels` shows each decode choice's other kinds with their time over the chosen one's, round
    for round, and the JSON report carries them; the cache keeps them for the next run."""
    from gpt2kit.cli.__main__ import main

    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: {L._Mkl: 2.0, L._OneDnn: 1.0}.get(type(k), 4.0)))  # onednn: half mkl's
    assert main(["info", "--kernels", "--json"]) in (0, None)
    decode = [c for c in json.loads(capsys.readouterr().out)["choices"] if c["rows"] == 1 and c["role"] in K.ROLES]
    assert len(decode) == 5 and all(c["chosen"] == "onednn" and c["paired"]["mkl"] == 2.0 for c in decode)
    assert main(["info", "--kernels"]) in (0, None)
    out = capsys.readouterr().out
    assert out.count("round for round, over the chosen: mkl 2.00x, linear 4.00x") == 5 and "(cached)" in out
