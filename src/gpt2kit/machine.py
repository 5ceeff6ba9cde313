"""This machine, as the kernel choice and the kernels' build see it: its CPU (model name and flags) and the
user cache directory where what is measured or built for it is kept. No torch here."""

from __future__ import annotations

import os
from pathlib import Path

CPUINFO = "/proc/cpuinfo"
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
