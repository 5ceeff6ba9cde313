"""GPT-2's byte-level BPE tokenizer: a fast tiktoken path and a readable pure-Python reference."""

from gpt2kit.tokenizer.bpe import ReferenceBPE
from gpt2kit.tokenizer.tokenizer import Tokenizer

__all__ = ["ReferenceBPE", "Tokenizer"]
