"""A measurement made while other processes took the CPU is not cached (kernels.write_measured): how busy the machine
was comes from /proc/stat (machine.busy_meter), here a fake one on a fake clock."""

import json
import logging
from types import SimpleNamespace

import pytest

from conftest import REAL_BUSY_METER
from gpt2kit import machine
from gpt2kit.model import kernels as K
from test_kernel_choice import fixed_times_fixture, model_fixture  # noqa: F401 (fixtures)


def _stat(path, busy_ticks, idle_ticks=0, steal=2):
    """A /proc/stat whose busy ticks (user, nice, system, irq, softirq, steal) add up to busy_ticks."""
    u, n, s, i, so, st = busy_ticks - 4 - steal, 1, 1, 1, 1, steal
    path.write_text(f"cpu  {u} {n} {s} {idle_ticks} 5 {i} {so} {st} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1 2 3\n")


def test_the_meter_gives_other_processes_share_of_the_cpu_time(tmp_path, monkeypatch):
    """(busy seconds of the system - this process's own - two ticks a CPU) / (wall seconds x CPUs)."""
    clock = {"wall": 100.0, "own": 5.0}
    monkeypatch.setattr(machine, "time", SimpleNamespace(monotonic=lambda: clock["wall"], process_time=lambda: clock["own"]))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(machine.os, "sysconf", lambda name: 100)
    stat = tmp_path / "stat"
    _stat(stat, 1000)
    share = REAL_BUSY_METER(str(stat))
    _stat(stat, 1000 + 300 + 4, idle_ticks=999, steal=102)  # 3.04 s busy in 2 s of 2 CPUs (1 s stolen: another
    # VM's time is not ours either), 1 s of it this process's
    clock.update(wall=102.0, own=6.0)
    assert share() == pytest.approx((3.04 - 1.0 - 0.04) / 4.0) == 0.5
    _stat(stat, 1000 + 100 + 4)  # this process alone: nothing else
    assert share() == 0.0
    stat.write_text("garbled\n")
    assert share() is None and REAL_BUSY_METER(str(tmp_path / "absent"))() is None  # no /proc/stat: not known
    _stat(stat, 1000)
    clock.update(wall=100.0)
    share = REAL_BUSY_METER(str(stat))
    _stat(stat, 1003)  # a measurement of no time: 3 ticks of others, within the allowance, and no division by 0
    assert share() == 0.0


def test_a_choice_measured_on_a_busy_machine_holds_for_the_run_only(model, fixed_times, monkeypatch, caplog):
    """Over BUSY_SHARE (a quarter of the CPU time taken by others): measured, used, not cached, and said at INFO on
    gpt2kit.kernels; at BUSY_SHARE exactly, or where the meter cannot tell, cached."""
    busy = {"share": 0.55}
    monkeypatch.setattr(machine, "busy_meter", lambda path=None: lambda: busy["share"])
    with caplog.at_level(logging.INFO, logger="gpt2kit.kernels"):
        first = K.plan_kernels(model, batch=2)
    assert {c.kind for c in first} == {"mkl"} and not fixed_times.exists()
    assert caplog.records[-1].getMessage() == ("this machine was busy while its kernels were timed (other processes took 55 % "
                                               "of its CPU time): the choice holds for this run only, and is timed again next time")  # fmt: skip
    busy["share"] = 0.26
    assert not any(c.cached for c in K.plan_kernels(model, batch=2))  # timed again
    for share in (K.BUSY_SHARE, None):
        busy["share"] = share
        fixed_times.unlink(missing_ok=True)
        K.plan_kernels(model, batch=2)
        assert len(json.loads(fixed_times.read_text())[K.machine_key()]) == 15
    assert K.BUSY_SHARE == 0.25
