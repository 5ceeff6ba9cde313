"""The errors gpt2kit raises at its edges (config, files, CLI, HTTP).

Each one carries a message that says what was wrong and how to fix it. They subclass the builtin a
caller would expect (ValueError, FileNotFoundError), so `except ValueError` keeps working, and they all
share `Gpt2kitError`, so the CLI can print them as one clean line instead of a traceback.

Warnings (work goes on, but the user should know: a missing optional package, no validation split) have
one channel too: `warn(...)`, which is Python's `warnings` with the category `Gpt2kitWarning`. `warnings`
rather than `logging`: a warning is addressed to the caller, who can filter it by category, turn it into
an error (`-W error`) or catch it in a test (`pytest.warns`), while `logging` is for event streams such
as the server's request log. The CLI prints each warning as one line, `gpt2kit: warning: ...`.
"""

import warnings


class Gpt2kitError(Exception):
    """Base class of every error gpt2kit raises on bad input."""


class ConfigError(Gpt2kitError, ValueError):
    """A configuration value is invalid (bad shape, unknown field, out-of-range number)."""


class InputError(Gpt2kitError, ValueError):
    """Input data is invalid: token ids out of range, a sequence too long, an empty prompt."""


class ModelNotFoundError(Gpt2kitError, FileNotFoundError):
    """A model name or folder could not be resolved to weights."""


class CheckpointError(Gpt2kitError, ValueError):
    """A weights file or checkpoint is corrupt, incomplete or of the wrong architecture."""


class DataError(Gpt2kitError, ValueError):
    """A data file (shards, JSONL, text) is missing, malformed or of the wrong format."""


class GenerationError(Gpt2kitError, RuntimeError):
    """A sequence failed while being generated (no token could be drawn); other sequences are unaffected."""


class Gpt2kitWarning(UserWarning):
    """Something the user should know that does not stop the work."""


_warned: set[str] = set()  # the messages warn(..., once=True) has shown in this process


def warn(message: str, *, once: bool = False) -> None:
    """Warn through Python's `warnings` as a Gpt2kitWarning; with `once`, at most once per process (a
    missing package is news the first time only, not at every evaluation of a run)."""
    if once:
        if message in _warned:
            return
        _warned.add(message)
    warnings.warn(message, Gpt2kitWarning, stacklevel=2)
