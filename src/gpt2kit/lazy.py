"""A package's public names imported on first use (PEP 562), so that importing the package loads nothing heavy.

    __getattr__, __dir__ = lazy.exports(__name__, {"Engine": "gpt2kit.generate.engine", ...})

`from gpt2kit.generate import Engine` then imports engine.py (and torch) when it runs, and `gpt2kit.generate.params`
alone loads without them: the `gpt2kit` command derives its flags from such torch-free config modules, so `gpt2kit
generate --help` answers in a tenth of a second instead of the ~1.5 s of importing torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping


def exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for `package`: a name in `where` comes from the module it names, a submodule's name
    imports it; each is looked up once."""

    def __getattr__(name: str) -> object:
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
        elif importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
