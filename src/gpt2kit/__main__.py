"""`python -m gpt2kit` is the same as the `gpt2kit` command."""

from gpt2kit.cli.__main__ import console

console()
