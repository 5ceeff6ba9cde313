"""The errors gpt2kit raises at its edges (config, files, CLI, HTTP).

Each one carries a message that says what was wrong and how to fix it. They subclass the builtin a
caller would expect (ValueError, FileNotFoundError), so `except ValueError` keeps working, and they all
share `Gpt2kitError`, so the CLI can print them as one clean line instead of a traceback.
"""


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
