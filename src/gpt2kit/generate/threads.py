"""Fewer threads while other processes keep this machine's cores busy.

A decode step is ~60 parallel products and attentions, each ending when its last thread is done. When another
process holds one of the cores, the thread that shares it with that process is descheduled for a time slice
now and then, and every product waits for it: the share of the work it leaves is taken by the others
(gemv.c's share.h), but not the wait for it to arrive. On a 2-core AMD EPYC VM (Zen 3) with one other process
spinning, GPT-2 124M float32 decoded at 15-17 tok/s with 2 threads and 25-30 with 1 (50 with 2 on the quiet
machine). So the runner (generate/decode.py) runs each step under `ThreadGovernor.step`: every INTERVAL_S it reads
how much of this process's CPUs' time the other processes took (machine.busy_meter), and from then on runs its
steps with the cores they left, torch's thread count less the cores they kept busy (BUSY_CORE of one or more
counts as one), and with torch's own count again once they stop. The thread count is set for the step and
restored after it (~1 us), so nothing outside the runner sees it change. GPT2KIT_ADAPT_THREADS=0 turns it off.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gpt2kit import machine

SWITCH = "GPT2KIT_ADAPT_THREADS"  # "0": every step runs with torch's thread count
# How often the other processes' load is read: /proc/stat counts in 10 ms ticks, so a window of 0.5 s on 2 CPUs
# is 100 ticks, and reading it costs ~30 us.
INTERVAL_S = 0.5
# Other processes' load, in cores, from which one core counts as taken. A process that spins on one core of two
# took ~0.6 of a core while 2 threads decoded beside it (the scheduler shares 2 cores among 3 threads), and all of
# one while 1 thread did; an idle desktop's background work stays well under it.
BUSY_CORE = 0.4


def threads_left(base: int, share: float | None, cpus: int) -> int:
    """The threads to run with, of `base`, when other processes took `share` (0 to 1, None: not known) of `cpus`
    CPUs' time: base less the cores they kept busy (scaled to base's part of the CPUs), at least 1."""
    if share is None or base <= 1:
        return base
    taken = math.floor(round(share * cpus + 1 - BUSY_CORE, 9))  # cores: 0.4 of one or more is one
    return max(1, min(base, base - math.ceil(taken * base / cpus)))


class ThreadGovernor:
    """Runs steps with the threads other processes leave free (`step`); `threads` is the count the last step had.
    torch's thread count is the process's: steps that overlap (another thread's, or one inside another) share the
    count the first of them set, and the last one out restores torch's. One governor serves every engine (`shared`)."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = os.environ.get(SWITCH, "1") != "0" if enabled is None else enabled
        self.cpus = len(machine.usable_cpus() or ()) or os.cpu_count() or 1
        self._meter = machine.busy_meter()
        self._since = time.monotonic()
        self._share: float | None = None  # the other processes' share in the last window read
        self.threads = self._base = torch.get_num_threads()
        self._inside = 0  # steps running now
        self._lock = threading.Lock()

    def _read(self) -> float | None:
        """The other processes' share of the last window, read again once it is INTERVAL_S long."""
        if time.monotonic() - self._since >= INTERVAL_S:
            self._share = self._meter()
            self._meter, self._since = machine.busy_meter(), time.monotonic()
        return self._share

    @contextmanager
    def step(self) -> Iterator[int]:
        """Run the block with torch's thread count less the cores other processes keep busy; yields that count."""
        with self._lock:
            if not self._inside:
                self._base = torch.get_num_threads()
                self.threads = threads_left(self._base, self._read(), self.cpus) if self.enabled else self._base
                if self.threads != self._base:
                    torch.set_num_threads(self.threads)
            self._inside += 1
        try:
            yield self.threads
        finally:
            with self._lock:
                self._inside -= 1
                if not self._inside and self.threads != self._base:
                    torch.set_num_threads(self._base)


_shared: ThreadGovernor | None = None


def shared() -> ThreadGovernor:
    """The process's governor (made at first use), for every engine on the CPU."""
    global _shared
    if _shared is None:
        _shared = ThreadGovernor()
    return _shared
