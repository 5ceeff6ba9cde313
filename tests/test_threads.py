"""Fewer threads while other processes keep the cores busy (generate/threads.py), and the meter they are read from
(machine.busy_meter) on this process's own CPUs: here on fake meters, clocks and /proc/stat files."""

import time
from types import SimpleNamespace

import pytest
import torch

from conftest import REAL_BUSY_METER, tiny_gpt
from gpt2kit import machine
from gpt2kit.generate import Engine, SamplingParams, sequence
from gpt2kit.generate import threads as TH


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "base, share, cpus, left",
    [
        (2, 0.0, 2, 2),
        (2, 0.19, 2, 2),  # 0.38 of a core: not one taken
        (2, 0.2, 2, 1),  # 0.4 of a core (BUSY_CORE): one
        (2, 0.5, 2, 1),
        (2, 1.0, 2, 1),  # never fewer than 1
        (2, None, 2, 2),  # not known (no /proc/stat)
        (1, 0.9, 2, 1),
        (8, 1 / 16, 16, 7),  # one core of 16 taken; torch runs on half of them
        (8, 0.5, 16, 4),
        (8, 0.01, 16, 8),
        (4, 0.25, 2, 2),  # more threads than CPUs: a core taken is two of the threads
        (3, 1 / 3, 3, 2),
    ],
)
def test_threads_left_take_the_busy_cores_off(base, share, cpus, left):
    assert TH.threads_left(base, share, cpus) == left


def _governor(monkeypatch, share=0.5, enabled=None):
    """A governor of 2 CPUs on a fake clock (`t`, seconds; monotonic and perf_counter alike), whose meter gives
    `share` (a key of the dict returned, to change) for every window; returns (governor, state, times read)."""
    state = {"t": 0.0, "share": share}
    read = []
    monkeypatch.setattr(TH, "time", SimpleNamespace(monotonic=lambda: state["t"], perf_counter=lambda: state["t"]))

    def meter():
        return lambda: read.append(state["t"]) or state["share"]

    monkeypatch.setattr(machine, "busy_meter", meter)
    monkeypatch.setattr(machine, "usable_cpus", lambda: {0, 1})
    return TH.ThreadGovernor(enabled), state, read


def _steps(gov, state, n, took, timed=True):
    """n steps, each taking took[threads] seconds on the fake clock; the thread count of each, checked with torch's."""
    counts = []
    for _ in range(n):
        with gov.step(timed) as threads:
            assert torch.get_num_threads() == threads == gov.threads
            counts.append(threads)
            state["t"] += took[threads]
        assert torch.get_num_threads() == 2
    return counts


def test_a_busy_machine_times_both_counts_then_keeps_the_faster(two_threads, monkeypatch):
    """Others took half of 2 CPUs (one core): the steps alternate between 2 threads and 1, TRIAL_STEPS each, then
    run with the faster for RETRY_S; then the two are timed again; torch's count is 2 between steps."""
    gov, state, read = _governor(monkeypatch)
    assert _steps(gov, state, 1, {2: 0.01}) == [2] and not read  # the first window is not over: torch's count
    state["t"] = TH.INTERVAL_S
    one_faster = {2: 1 / 16, 1: 1 / 32}
    trial = _steps(gov, state, 2 * TH.TRIAL_STEPS, one_faster)
    assert trial == [2, 1] * TH.TRIAL_STEPS and read[0] == TH.INTERVAL_S
    assert len(read) == 2  # once a window: at 0.5 s, and at the first step from 1.0 s on
    kept = _steps(gov, state, int(TH.RETRY_S * 32), one_faster)  # 1/32 s a step: RETRY_S to the last bit
    assert set(kept) == {1} and gov.chosen[:2] == ((2, 1), 1)
    assert _steps(gov, state, 2 * TH.TRIAL_STEPS + 1, one_faster) == [*[2, 1] * TH.TRIAL_STEPS, 1]  # timed again
    torch.set_num_threads(4)  # another count asked for: its own pair (4 threads and 2) timed, not the choice kept
    with gov.step(timed=True) as n:
        assert n == 4
    torch.set_num_threads(2)
    two_faster = {2: 0.03, 1: 0.05}
    gov.chosen = None  # a new trial now
    assert _steps(gov, state, 2 * TH.TRIAL_STEPS + 2, two_faster)[-2:] == [2, 2] and gov.chosen[1] == 2


def test_untimed_blocks_take_the_count_in_turn_but_do_not_count(two_threads, monkeypatch):
    """A prefill (untimed: its time depends on its prompt) during a trial runs with the count whose turn it is,
    and the trial goes on where it was; a trial's steps must be all of one count to decide, by their medians."""
    gov, state, _ = _governor(monkeypatch)
    state["t"] = TH.INTERVAL_S
    assert _steps(gov, state, 3, {2: 0.05, 1: 0.02}) == [2, 1, 2]
    assert _steps(gov, state, 3, {1: 9.0}, timed=False) == [1, 1, 1]  # not counted: nine seconds each, yet 1 wins
    slow = [0.9]  # one slow 1-thread step: the median holds
    counts = []
    for _ in range(2 * TH.TRIAL_STEPS - 3):
        with gov.step(timed=True) as n:
            counts.append(n)
            state["t"] += 0.05 if n == 2 else slow.pop() if slow else 0.02
    assert counts == [1, 2, 1, 2, 1, 2, 1, 2, 1] and _steps(gov, state, 1, {1: 0.02}) == [1]


def test_a_quiet_machine_ends_the_trial_and_the_choice(two_threads, monkeypatch):
    gov, state, _ = _governor(monkeypatch)
    state["t"] = TH.INTERVAL_S
    _steps(gov, state, 2 * TH.TRIAL_STEPS + 1, {2: 0.06, 1: 0.03})
    assert gov.chosen is not None
    state["share"] = 0.0
    state["t"] += TH.INTERVAL_S
    assert _steps(gov, state, 3, {2: 0.06}) == [2, 2, 2] and gov.chosen is None
    state["share"] = 0.5
    state["t"] += TH.INTERVAL_S
    assert _steps(gov, state, 2, {2: 0.06, 1: 0.03}) == [2, 1]  # busy again: a new trial


def test_steps_on_a_busy_machine_that_fail_restore_torchs_count(two_threads, monkeypatch):
    gov, state, _ = _governor(monkeypatch)
    state["t"] = TH.INTERVAL_S
    _steps(gov, state, 1, {2: 0.06})
    with pytest.raises(RuntimeError), gov.step(timed=True):
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == 2


def test_overlapping_steps_share_one_count_and_the_last_out_restores_it(monkeypatch):
    """Steps inside a step (or another thread's at the same time) do not take the busy cores off again, nor
    restore torch's count while the first still runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # 4 threads on 2 CPUs: a busy core is two threads
    try:
        gov, state, _ = _governor(monkeypatch)
        state["t"] = TH.INTERVAL_S
        with gov.step(timed=True) as n:
            assert n == 4
            state["t"] += 0.05
        with gov.step() as outer:
            state["t"] += TH.INTERVAL_S
            with gov.step(timed=True) as inner:
                assert outer == inner == torch.get_num_threads() == 2  # not 1: 2 again less a core
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_every_engine_on_the_cpu_shares_the_process_governor():
    torch.manual_seed(0)
    model = tiny_gpt(n_layer=1, n_embd=32, n_head=4, n_positions=32)
    a, b = Engine(model, max_batch=1), Engine(model, max_batch=2)
    assert a.governor is b.governor is TH.shared() and a.governor.enabled


@pytest.mark.parametrize("usable, listed, cpus", [({0, 1}, 6, 2), ({3}, 6, 1), (None, 6, 6), ({3}, 2, 6)])
def test_the_governor_counts_the_cpus_the_meter_watches(tmp_path, monkeypatch, usable, listed, cpus):
    """Its CPUs are its affinity's (a container's cpuset), the system's where the system does not say (macOS) or
    /proc/stat does not list each of them (there the meter's share is over all of them)."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 0 0 1 0 0 0 0 0 0\n" + "".join(f"cpu{c} 1 0 0 1 0 0 0 0 0 0\n" for c in range(listed)))
    monkeypatch.setattr(machine, "STAT", str(stat))
    monkeypatch.setattr(machine, "usable_cpus", lambda: usable)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 6)
    gov = TH.ThreadGovernor()
    assert gov.cpus == cpus and gov.threads == torch.get_num_threads()


@pytest.mark.parametrize("how", ["switch", "argument"])
def test_the_governor_turned_off_keeps_torchs_count(two_threads, monkeypatch, how):
    if how == "switch":
        monkeypatch.setenv(TH.SWITCH, "0")
    gov, state, _ = _governor(monkeypatch, enabled=None if how == "switch" else False)
    state["t"] = TH.INTERVAL_S
    assert _steps(gov, state, 2 * TH.TRIAL_STEPS + 2, {2: 0.06}) == [2] * (2 * TH.TRIAL_STEPS + 2)


def test_an_engine_on_a_busy_machine_decodes_with_the_faster_count_and_the_same_tokens(two_threads, monkeypatch):
    """Others keep a core busy: the engine's decode steps alternate between 2 threads and 1, then run with 1 (on a
    clock where a step on 1 thread takes a third of one on 2), each count's step recorded for it; the prompt's
    scoring and prefill run with the count whose turn it is; the tokens are the quiet machine's and the model's own
    uncached greedy ones (biases and LayerNorms perturbed), and torch's count is 2 between steps and after."""
    torch.manual_seed(0)
    model = tiny_gpt(n_layer=2, n_embd=32, n_head=4, n_positions=64)
    params = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True, prompt_logprobs=1, logprobs=0)
    quiet = Engine(model, max_batch=1).generate([[5, 6, 7]], params)[0].token_ids
    tokens, logprobs = _greedy(model, [5, 6, 7], 20)
    clock = {"t": 0.0}

    def perf_counter():  # a step on 2 threads takes 3 units, on 1 thread 1
        clock["t"] += 3 if torch.get_num_threads() == 2 else 1
        return clock["t"]

    monkeypatch.setattr(TH, "time", SimpleNamespace(monotonic=time.monotonic, perf_counter=perf_counter))
    monkeypatch.setattr(TH, "INTERVAL_S", 0.0)  # read at every step
    monkeypatch.setattr(machine, "busy_meter", lambda path=None: lambda: 0.5)
    monkeypatch.setattr(TH, "_shared", None)  # a process started on the busy machine
    engine = Engine(model, max_batch=1)
    counts: dict[str, list[int]] = {"decode": [], "prefill": [], "score": []}

    def spy(name, fn):
        return lambda *a, **k: counts[name].append(torch.get_num_threads()) or fn(*a, **k)

    monkeypatch.setattr(engine.runner, "decode", spy("decode", engine.runner.decode))
    monkeypatch.setattr(engine.runner, "prefill", spy("prefill", engine.runner.prefill))
    monkeypatch.setattr(sequence, "prompt_logprobs", spy("score", sequence.prompt_logprobs))  # the prompt's forward
    counts["draw"] = []
    monkeypatch.setattr(engine, "_draw", spy("draw", engine._draw))
    done = engine.generate([[5, 6, 7]], params)[0]
    assert done.token_ids == quiet == tokens and torch.get_num_threads() == 2
    torch.testing.assert_close(torch.tensor([lp.logprob for lp in done.logprobs]), logprobs, atol=1e-4, rtol=0)
    trial = [2, 1] * TH.TRIAL_STEPS
    assert counts == {"decode": trial + [1] * 7, "prefill": [2], "score": [2], "draw": trial + [1] * 8}
    assert {key[-1] for key in engine.runner.graphs} == {1, 2}  # a replayed step recorded for each count


def _greedy(model, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens from the model's own uncached forward over the whole sequence, step by step, and each one's
    log-probability: the reference."""
    ids, logprobs = list(prompt), []
    with torch.inference_mode():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids]))
            lp = torch.log_softmax(logits[0, -1].double(), -1)
            ids.append(int(lp.argmax()))
            logprobs.append(float(lp[ids[-1]]))
    return ids[len(prompt) :], torch.tensor(logprobs)


def test_the_meter_counts_this_process_cpus_alone(tmp_path, monkeypatch):
    """Held to CPUs 2 and 3 of 4 (a container's cpuset): the others' work on CPUs 0 and 1 is not counted, theirs on
    2 and 3 is, over 2 CPUs; where /proc/stat does not list each of them, the whole system's line, over all CPUs."""
    clock = {"wall": 10.0, "own": 1.0}
    monkeypatch.setattr(machine, "time", SimpleNamespace(monotonic=lambda: clock["wall"], process_time=lambda: clock["own"]))
    monkeypatch.setattr(machine.os, "sysconf", lambda name: 100)
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {2, 3}, raising=False)
    stat = tmp_path / "stat"

    def write(per_cpu, listed=(0, 1, 2, 3)):  # busy ticks (user) per CPU, idle ticks 1000 each
        lines = [f"cpu  {sum(per_cpu)} 0 0 4000 0 0 0 0 0 0"]
        lines += [f"cpu{c} {per_cpu[c]} 0 0 1000 0 0 0 0 0 0" for c in listed]
        stat.write_text("\n".join(lines) + "\nintr 1 2\n")

    write([0, 0, 0, 0])
    share = REAL_BUSY_METER(str(stat))
    write([200, 200, 104, 0])  # 2 s of others' work on CPUs 0 and 1, 1.04 s on CPU 2, in 1 s
    clock["wall"] = 11.0
    assert share() == pytest.approx((1.04 - 0.04) / 2) == 0.5
    write([0, 0, 0, 0], listed=(0, 1, 2))  # CPU 3 not listed: the system's line, 4 CPUs
    clock.update(wall=10.0)
    share = REAL_BUSY_METER(str(stat))
    write([100, 100, 108, 0], listed=(0, 1, 2))
    clock["wall"] = 11.0
    assert share() == pytest.approx((3.08 - 0.08) / 4) == 0.75
