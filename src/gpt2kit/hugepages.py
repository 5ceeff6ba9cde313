"""Huge pages for the weights, on request: GPT2KIT_HUGEPAGES=1 runs the `gpt2kit` command with 2 MiB pages.

Decoding one token streams every weight from memory once, so tokens/s is memory bandwidth over weight
bytes. With 4 KiB pages that stream misses the TLB every 4 KiB, and in a virtual machine each miss walks
two page tables: on a 2-core Xeon VM a float32 `sum` over 1 GiB reads at 20 GB/s with 4 KiB pages and at
28-30 GB/s with 2 MiB ones, and decode gains with it (benchmarks/RESULTS.md, the "huge pages" sides).

It is not the default because fresh huge pages can be slow to get: on that same VM, whose host takes back
the guest's free 2 MiB blocks (virtio-balloon free page reporting), the first write to each fresh 2 MiB
page cost ~1.4 ms, against ~0.1 ms of zeroing. Loading and packing a 124M model then took 1-2.5 s longer,
more than 128 decoded tokens saved, and a one-shot `gpt2kit generate` was slower end to end. A long run on
such a machine, or any run where the kernel hands out huge pages cheaply (most bare-metal Linux), gains.

Linux gives a process transparent huge pages for memory it asks for (THP mode "madvise", the common
default) or for all of it (mode "always"). glibc 2.35+ asks for them on every block malloc takes from the
kernel when the process starts with GLIBC_TUNABLES=glibc.malloc.hugetlb=1. That one setting covers torch's
tensors, the KV cache and the packed weights of MKL, oneDNN and fbgemm alike (fbgemm allocates its own).
glibc reads a tunable only at start-up, so with GPT2KIT_HUGEPAGES=1 the `gpt2kit` command starts itself
again once with it (`relaunch`), before torch is imported. A program that uses gpt2kit as a library gets
the same by starting Python with that variable set.

No torch here: this runs before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "GPT2KIT_HUGEPAGES"  # "1": start the command with glibc's hugetlb tunable
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"); None where there is none."""
    try:
        with open(path, encoding="ascii") as f:
            found = re.search(r"\[(\w+)\]", f.read())
    except OSError:  # not Linux, or a kernel without THP
        return None
    return found.group(1) if found else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library's glibc; None for another C library (musl, macOS, Windows)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


_THIS_MACHINE = "this machine's"


def environment(environ: Mapping[str, str] = os.environ, mode: str | None = _THIS_MACHINE,
                glibc: tuple[int, int] | None | str = _THIS_MACHINE) -> dict[str, str] | None:  # fmt: skip
    """The environment to start gpt2kit with when GPT2KIT_HUGEPAGES=1 asks for huge pages; None when nothing
    needs to change: not asked for, already set, THP "always" (every large block has them) or "never", or no
    glibc 2.35+. mode (thp_mode) and glibc (glibc_version) are this machine's unless given."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(SWITCH) != "1" or "glibc.malloc.hugetlb=" in tunables:
        return None
    mode = thp_mode() if mode == _THIS_MACHINE else mode
    glibc = glibc_version() if glibc == _THIS_MACHINE else glibc
    if mode != "madvise" or glibc is None or glibc < (2, 35):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def in_use(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a process started with `environ` has glibc ask for huge pages (the tunable is set to 1)."""
    return TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":")


def relaunch() -> None:
    """Replace this process by the same command started with huge pages, when `environment()` asks for it.
    Call it first thing in a command's entry point: nothing is done twice, the new process finds the
    variable set and goes on."""
    env = environment()
    if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def status(smaps: str = "/proc/self/smaps_rollup") -> str:
    """One line on this process's pages, for `gpt2kit info --kernels`: the setting and how much memory is
    in huge pages now."""
    mode = thp_mode()
    if mode is None:
        return "not available (no transparent huge pages on this system)"
    try:
        with open(smaps, encoding="ascii") as f:
            kib = sum(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
        held = f", {kib / 1024:,.0f} MiB of this process in huge pages"
    except (OSError, ValueError, IndexError):
        held = ""
    if mode == "always":
        return f"on (the kernel's THP mode is always){held}"
    if in_use():
        return f"on (THP {mode}, GLIBC_TUNABLES={TUNABLE}){held}"
    return f"off (THP {mode}; {SWITCH}=1 turns them on){held}"
