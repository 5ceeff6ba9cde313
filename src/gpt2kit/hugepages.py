"""Huge pages for the weights: the `gpt2kit` command runs with 2 MiB pages where Linux offers them.

Decoding one token streams every weight from memory once, so tokens/s is memory bandwidth over weight
bytes. With 4 KiB pages that stream misses the TLB every 4 KiB, and in a virtual machine each miss walks
two page tables: on a 2-core Xeon VM a float32 `sum` over 1 GiB reads at 20 GB/s with 4 KiB pages and at
30 GB/s with 2 MiB ones, and every product kernel gains with it (benchmarks/RESULTS.md).

Linux gives a process transparent huge pages for memory it asks for (THP mode "madvise", the common
default) or for all of it (mode "always"). glibc 2.35+ asks for them on every block malloc takes from the
kernel when the process starts with GLIBC_TUNABLES=glibc.malloc.hugetlb=1. That one setting covers torch's
tensors, the KV cache and the packed weights of MKL, oneDNN and fbgemm alike (fbgemm allocates its own).
glibc reads a tunable only at start-up, so the `gpt2kit` command starts itself again once with it
(`relaunch`), before torch is imported. GPT2KIT_HUGEPAGES=0 turns this off. A program that uses gpt2kit
as a library gets the same by starting Python with `environment()`'s variable set.

No torch here: this runs before anything heavy is imported.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "GPT2KIT_HUGEPAGES"  # "0": run with the pages the system gives by default
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
    """The environment to start gpt2kit with for huge pages; None when nothing needs to change: already set,
    turned off (GPT2KIT_HUGEPAGES=0), THP "always" (every large block has them) or "never", or no glibc 2.35+.
    mode (thp_mode) and glibc (glibc_version) are this machine's unless given."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(OPT_OUT) == "0" or "glibc.malloc.hugetlb=" in tunables:
        return None
    mode = thp_mode() if mode == _THIS_MACHINE else mode
    glibc = glibc_version() if glibc == _THIS_MACHINE else glibc
    if mode != "madvise" or glibc is None or glibc < (2, 35):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


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
    if "glibc.malloc.hugetlb=1" in os.environ.get("GLIBC_TUNABLES", ""):
        return f"on (THP {mode}, GLIBC_TUNABLES={TUNABLE}){held}"
    why = f"{OPT_OUT}=0" if os.environ.get(OPT_OUT) == "0" else f"THP {mode}, started without GLIBC_TUNABLES={TUNABLE}"
    return f"off ({why}){held}"
