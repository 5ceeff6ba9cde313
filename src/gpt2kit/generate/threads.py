"""Fewer threads while other processes keep this machine's cores busy, where that is measured faster.

A decode step is ~60 parallel products and attentions, each ending when its last thread is done. When another
process holds one of the cores, the thread that shares it with that process is descheduled for a time slice
now and then, and every product waits for it: the share of the work it leaves is taken by the others
(gemv.c's share.h), but not the wait for it to arrive. On a 2-core AMD EPYC VM (Zen 3) with one other process
spinning, GPT-2 124M float32 decoded at 15-17 tok/s with 2 threads and 25-33 with 1 (44-55 with 2 on the quiet
machine). With a process that spun half of every 10 ms and slept the rest, 2 threads were the faster (27-34
against 23-24): while it sleeps, its core is the step's. What the other processes' CPU time says does not tell the
two apart (a spinner squeezed by 2 threads and the half-time process each took ~0.5-0.8 of a core), so the two
counts are timed against each other on the steps themselves.

The engine (generate/engine.py) runs each prefill and step under `ThreadGovernor.step`. Every INTERVAL_S it reads
how much of this process's CPUs' time the other processes took (machine.busy_meter). While that is under
BUSY_CORE of a core, steps run with torch's thread count. Over it, the next 2 x TRIAL_STEPS decode steps alternate
between torch's count and that count less the cores the others kept busy (`threads_left`), each step timed; the
count whose steps took the lower median runs the steps after, until RETRY_S have passed (then the two are timed
again, the load may have changed) or the machine is quiet again. The thread count is set for the step and restored
after it (~1 us), so nothing outside the engine sees it change. GPT2KIT_ADAPT_THREADS=0 turns it off.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time

import torch

from gpt2kit import machine

SWITCH = "GPT2KIT_ADAPT_THREADS"  # "0": every step runs with torch's thread count
# How often the other processes' load is read: /proc/stat counts in 10 ms ticks, so a window of 0.5 s on 2 CPUs
# is 100 ticks, and reading it costs ~30 us.
INTERVAL_S = 0.5
# Other processes' load, in cores, from which one core counts as taken. A process that spins on one core of two
# took ~0.6-0.8 of a core while 2 threads decoded beside it (the scheduler shares 2 cores among 3 threads), and all
# of one while 1 thread did; an idle desktop's background work stays well under it.
BUSY_CORE = 0.4
TRIAL_STEPS = 6  # decode steps timed at each of the two counts, alternating, on a busy machine
RETRY_S = 5.0  # how long a busy machine's faster count is kept before the two are timed again


def threads_left(base: int, share: float | None, cpus: int) -> int:
    """The threads to run with, of `base`, when other processes took `share` (0 to 1, None: not known) of `cpus`
    CPUs' time: base less the cores they kept busy (scaled to base's part of the CPUs), at least 1."""
    if share is None or base <= 1:
        return base
    taken = math.floor(round(share * cpus + 1 - BUSY_CORE, 9))  # cores: 0.4 of one or more is one
    return max(1, min(base, base - math.ceil(taken * base / cpus)))


class ThreadGovernor:
    """Runs steps with the threads other processes leave free, where that is faster (`step`); `threads` is the
    count the last step had. torch's thread count is the process's: steps that overlap (another thread's, or one
    inside another) share the count the first of them set, and the last one out restores torch's. One governor
    serves every engine (`shared`)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = os.environ.get(SWITCH, "1") != "0" if enabled is None else enabled
        self.cpus = machine.metered_cpus()  # the CPUs the meter's share is over
        self._meter = machine.busy_meter()
        self._since = time.monotonic()
        self._share: float | None = None  # the other processes' share in the last window read
        self.threads = self._base = torch.get_num_threads()
        self._inside = 0  # steps running now
        self._lock = threading.Lock()
        self._trial: dict[int, list[float]] = {}  # a busy machine's trial: seconds of each count's timed steps
        self._timing = False  # whether the running step is one of a trial's
        self.chosen: tuple[tuple[int, int], int, float] | None = None  # ((base, fewer), the faster, when chosen)

    def _read(self) -> float | None:
        """The other processes' share of the last window, read again once it is INTERVAL_S long."""
        if time.monotonic() - self._since >= INTERVAL_S:
            self._share = self._meter()
            self._meter, self._since = machine.busy_meter(), time.monotonic()
        return self._share

    def _pick(self, base: int) -> int:
        """The count for the next step: `base` on a quiet machine; on a busy one, the two counts in turn while
        they are timed (`_timing`), then the faster one for RETRY_S."""
        pair = (base, threads_left(base, self._read(), self.cpus))
        self._timing = False
        if pair[1] == base:
            self._trial, self.chosen = {}, None
            return base
        if self.chosen is not None and self.chosen[0] == pair and time.monotonic() - self.chosen[2] < RETRY_S:
            return self.chosen[1]
        if set(self._trial) != set(pair):  # a new trial (or another pair than the one being timed)
            self._trial = {n: [] for n in pair}
        if min(len(ts) for ts in self._trial.values()) < TRIAL_STEPS:
            self._timing = True
            return pair[sum(len(ts) for ts in self._trial.values()) % 2]
        self.chosen = pair, min(pair, key=lambda n: statistics.median(self._trial[n])), time.monotonic()
        self._trial = {}
        return self.chosen[1]

    def step(self, timed: bool = False) -> _Step:
        """A context that runs its block with the count `_pick` gives, and yields it. `timed`: a decode step, whose
        time counts in a busy machine's trial (a prefill's depends on its prompt). A class, not a generator: the engine
        enters two a token, when the token's weight stream has just evicted what they run (~40 us each as a generator)."""
        return _Step(self, timed)

    def _enter(self) -> int:
        with self._lock:
            if not self._inside:
                self._base = torch.get_num_threads()
                self.threads = self._pick(self._base) if self.enabled else self._base
                if self.threads != self._base:
                    torch.set_num_threads(self.threads)
            self._inside += 1
        return self.threads

    def _exit(self, timed: bool, spent: float) -> None:
        with self._lock:
            self._inside -= 1
            if not self._inside:
                if timed and self._timing:
                    self._trial.setdefault(self.threads, []).append(spent)
                if self.threads != self._base:
                    torch.set_num_threads(self._base)


class _Step:
    """One `ThreadGovernor.step`."""

    __slots__ = ("governor", "timed", "t0")

    def __init__(self, governor: ThreadGovernor, timed: bool) -> None:
        self.governor, self.timed = governor, timed

    def __enter__(self) -> int:
        threads = self.governor._enter()
        self.t0 = time.perf_counter()
        return threads

    def __exit__(self, *exc) -> None:
        self.governor._exit(self.timed, time.perf_counter() - self.t0)


_shared: ThreadGovernor | None = None


def shared() -> ThreadGovernor:
    """The process's governor (made at first use), for every engine on the CPU."""
    global _shared
    if _shared is None:
        _shared = ThreadGovernor()
    return _shared
