"""Fewer threads while other processes keep the cores busy (generate/threads.py), and the meter they are read from
(machine.busy_meter) on this process's own CPUs: here on fake meters, clocks and /proc/stat files."""

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


def _governor(monkeypatch, shares, enabled=None):
    """A governor on a fake clock whose meter windows give `shares` in turn; returns (governor, clock, windows read)."""
    clock = {"t": 0.0}
    read = []
    monkeypatch.setattr(TH, "time", SimpleNamespace(monotonic=lambda: clock["t"]))

    def meter():
        return lambda: read.append(clock["t"]) or shares[len(read) - 1]

    monkeypatch.setattr(machine, "busy_meter", meter)
    monkeypatch.setattr(machine, "usable_cpus", lambda: {0, 1})
    return TH.ThreadGovernor(enabled), clock, read


def test_steps_run_with_the_cores_left_and_restore_torchs_count(two_threads, monkeypatch):
    gov, clock, read = _governor(monkeypatch, [0.5, 0.5, 0.0])
    with gov.step() as n:  # the first window is not over: torch's count
        assert n == torch.get_num_threads() == 2 and not read
    clock["t"] = TH.INTERVAL_S
    with gov.step() as n:  # others took half of 2 CPUs: one core
        assert n == torch.get_num_threads() == gov.threads == 1
    assert torch.get_num_threads() == 2 and read == [TH.INTERVAL_S]
    clock["t"] = 1.9 * TH.INTERVAL_S
    with gov.step() as n:  # within the next window: the last reading holds
        assert n == torch.get_num_threads() == 1 and len(read) == 1
    clock["t"] = 2 * TH.INTERVAL_S
    with gov.step():
        assert torch.get_num_threads() == 1 and len(read) == 2
    clock["t"] = 3 * TH.INTERVAL_S
    with gov.step() as n:  # they stopped: both threads again
        assert n == torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), gov.step():
        raise RuntimeError  # restored on the way out of a failed step too
    assert torch.get_num_threads() == 2


def test_steps_on_a_busy_machine_that_fail_restore_torchs_count(two_threads, monkeypatch):
    gov, clock, _ = _governor(monkeypatch, [0.5])
    clock["t"] = TH.INTERVAL_S
    with pytest.raises(RuntimeError), gov.step():
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == 2


def test_overlapping_steps_share_one_count_and_the_last_out_restores_it(monkeypatch):
    """Steps inside a step (or another thread's at the same time) do not take the busy cores off again, nor
    restore torch's count while the first still runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # 4 threads on 2 CPUs
    try:
        gov, clock, _ = _governor(monkeypatch, [0.5, 0.5])
        clock["t"] = TH.INTERVAL_S
        with gov.step() as outer:
            clock["t"] = 2 * TH.INTERVAL_S
            with gov.step() as inner:
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


@pytest.mark.parametrize("usable, cpus", [({0, 1}, 2), ({3}, 1), (None, 6)])
def test_the_governor_counts_the_cpus_this_process_may_run_on(monkeypatch, usable, cpus):
    """Its CPUs are its affinity's (a container's cpuset), the system's where the system does not say (macOS)."""
    monkeypatch.setattr(machine, "usable_cpus", lambda: usable)
    monkeypatch.setattr(TH.os, "cpu_count", lambda: 6)
    gov = TH.ThreadGovernor()
    assert gov.cpus == cpus and gov.threads == torch.get_num_threads()


@pytest.mark.parametrize("how", ["switch", "argument"])
def test_the_governor_turned_off_keeps_torchs_count(two_threads, monkeypatch, how):
    if how == "switch":
        monkeypatch.setenv(TH.SWITCH, "0")
    gov, clock, _ = _governor(monkeypatch, [0.5, 0.5], enabled=None if how == "switch" else False)
    clock["t"] = TH.INTERVAL_S
    with gov.step() as n:
        assert n == torch.get_num_threads() == 2


def test_an_engine_decodes_on_the_cores_left_with_the_same_tokens(two_threads, monkeypatch):
    """A busy machine: each prefill and step runs on one thread (the step recorded for one thread), the tokens
    those of the quiet machine's, and torch's count is 2 again between steps and after."""
    torch.manual_seed(0)
    model = tiny_gpt(n_layer=2, n_embd=32, n_head=4, n_positions=64)
    params = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True, prompt_logprobs=1)
    quiet = Engine(model, max_batch=1).generate([[5, 6, 7]], params)[0].token_ids
    monkeypatch.setattr(TH, "INTERVAL_S", 0.0)  # read at every step
    monkeypatch.setattr(machine, "busy_meter", lambda path=None: lambda: 0.5)
    monkeypatch.setattr(TH, "_shared", None)  # a process started on the busy machine
    engine = Engine(model, max_batch=1)
    counts, decode, prefill = [], engine.runner.decode, engine.runner.prefill
    monkeypatch.setattr(engine.runner, "decode", lambda *a: counts.append(("decode", torch.get_num_threads())) or decode(*a))
    monkeypatch.setattr(
        engine.runner, "prefill", lambda *a, **k: counts.append(("prefill", torch.get_num_threads())) or prefill(*a, **k)
    )
    score = sequence.prompt_logprobs  # the prompt's uncached forward (prompt_logprobs)
    monkeypatch.setattr(sequence, "prompt_logprobs", lambda *a: counts.append(("score", torch.get_num_threads())) or score(*a))
    busy = engine.generate([[5, 6, 7]], params)[0].token_ids
    assert busy == quiet and torch.get_num_threads() == 2
    assert set(counts) == {("score", 1), ("prefill", 1), ("decode", 1)} and len(counts) == 13
    assert {key[-1] for key in engine.runner.graphs} == {1}  # the replayed step was recorded on one thread


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
