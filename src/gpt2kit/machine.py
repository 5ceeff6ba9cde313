"""This machine, as the kernel choice and the kernels' build see it: its CPU (model name and flags) and the
user cache directory where what is measured or built for it is kept. No torch here."""

from __future__ import annotations

import os
from pathlib import Path

CPUINFO = "/proc/cpuinfo"


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
