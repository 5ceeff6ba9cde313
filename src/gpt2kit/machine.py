"""This machine, as the kernel choice and the kernels' build see it: its CPU (model name and flags) and the
user cache directory where what is measured or built for it is kept. No torch here."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
STAT = "/proc/stat"
CACHES = "/sys/devices/system/cpu/cpu0/cache"
DEFAULT_CACHE_BYTES = 32 << 20  # where the caches are not listed: a desktop CPU's last-level cache, or more


def cache_dir() -> Path:
    """$GPT2KIT_CACHE_DIR, else $XDG_CACHE_HOME/gpt2kit, else ~/.cache/gpt2kit."""
    root = os.environ.get("GPT2KIT_CACHE_DIR")
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2kit"


def cpu_info(path: str | None = None) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "flags", ...); {} where there is none
    (macOS, Windows)."""
    fields: dict[str, str] = {}
    try:
        for line in Path(path or CPUINFO).read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def largest_cache_bytes(path: str | None = None) -> int:
    """The size of the largest cache the first CPU sees (its last level, shared or not), from sysfs
    ("32768K"); DEFAULT_CACHE_BYTES where it is not listed (macOS, Windows, some containers)."""
    sizes = []
    for entry in Path(path or CACHES).glob("index*/size"):
        try:
            text = entry.read_text().strip().upper()
            sizes.append(int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1:], 0))
        except (OSError, ValueError):
            continue
    return max(sizes, default=DEFAULT_CACHE_BYTES)


def busy_meter(path: str | None = None) -> Callable[[], float | None]:
    """Start measuring how much of this process's CPUs' time other processes take: the function returned gives their
    share since this call (0 to 1: those CPUs' busy time, the hypervisor's steal included, less this process's own,
    over the wall time times the CPUs), or None where /proc/stat cannot be read (macOS, Windows). This process's CPUs
    are those it may run on (`usable_cpus`), where /proc/stat lists each of them, else all of the system's: a
    container held to 2 CPUs of a 64-CPU host does not count the others' work. The system counts in ticks (10 ms),
    so two ticks a CPU are allowed for: a measurement of a few milliseconds is never busy."""
    cpus = usable_cpus()
    start, own, wall = _busy_seconds(path, cpus), time.process_time(), time.monotonic()

    def share() -> float | None:
        end = _busy_seconds(path, cpus)
        if start is None or end is None:
            return None
        n = end[1]
        others = end[0] - start[0] - (time.process_time() - own) - 2 * n / os.sysconf("SC_CLK_TCK")
        elapsed = (time.monotonic() - wall) * n
        return max(0.0, others) / elapsed if elapsed > 0 else 0.0

    return share


def metered_cpus(path: str | None = None) -> int:
    """How many CPUs a `busy_meter` share is over: this process's where /proc/stat lists each of them, else all the
    system's (also where /proc/stat cannot be read, and a share is None)."""
    read = _busy_seconds(path, usable_cpus())
    return read[1] if read is not None else os.cpu_count() or 1


def usable_cpus() -> set[int] | None:
    """The CPUs this process may run on (its affinity), or None where the system does not say (macOS, Windows)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _busy_seconds(path: str | None, cpus: set[int] | None = None) -> tuple[float, int] | None:
    """(seconds of CPU time spent busy: user, nice, system, irq, softirq, steal; over how many CPUs), from /proc/stat:
    the lines of `cpus` where it lists each of them, else its first line (all CPUs, os.cpu_count() of them)."""
    try:
        lines = {f[0]: [int(v) for v in f[1:9]] for f in (line.split() for line in Path(path or STAT).read_text().splitlines())
                 if f and f[0].startswith("cpu")}  # fmt: skip
        each = cpus is not None and all(f"cpu{c}" in lines for c in cpus)
        picked = [lines[f"cpu{c}"] for c in sorted(cpus)] if each else [lines["cpu"]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (sum(col) for col in zip(*picked, strict=True))
    except (OSError, ValueError, KeyError):
        return None
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return busy, len(picked) if each else os.cpu_count() or 1
