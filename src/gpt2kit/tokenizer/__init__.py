"""GPT-2's byte-level BPE tokenizer (a fast tiktoken path). The readable pure-Python reference the tests check
it against, `gpt2kit.tokenizer.bpe.ReferenceBPE`, is not part of the public API."""

from gpt2kit.tokenizer.tokenizer import Tokenizer

__all__ = ["Tokenizer"]
