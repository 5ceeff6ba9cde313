"""Incremental, UTF-8-safe detokenization: token ids -> text deltas that never split a character.

GPT-2's byte-level BPE splits many characters across tokens: an emoji is 4 UTF-8 bytes and often 2-3
tokens, a CJK character 3 bytes. Decoding each token alone would print U+FFFD garbage. The detokenizer
appends each token's bytes to an incremental UTF-8 decoder, which returns only the complete characters
and keeps an unfinished one (at most 3 bytes) for the next token. Invalid bytes (a model can emit
any byte sequence) become U+FFFD exactly as `bytes.decode("utf-8", errors="replace")` of the whole
output would, so the concatenated stream always equals the final text.

It never sees a tokenizer: it gets the token-bytes table `token_bytes[id] -> bytes` (the CLI builds it
from `gpt2kit.Tokenizer`), keeping `generate/` independent of `tokenizer/`.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Sequence


class IncrementalDetokenizer:
    """Token bytes in, text deltas out.

    d = IncrementalDetokenizer(token_bytes)
    deltas = [d.add_bytes(d.token_bytes[tok]) for tok in tokens] + [d.flush()]
    """

    def __init__(self, token_bytes: Sequence[bytes] | None = None) -> None:
        self.token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add_bytes(self, data: bytes) -> str:
        """One token's bytes -> the text they complete (possibly "" while a character is unfinished)."""
        return self._decoder.decode(data)

    def flush(self) -> str:
        """End of output: an unfinished character at the very end becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)


def decode_tokens(token_bytes: Sequence[bytes], ids: Iterable[int]) -> str:
    """Whole-sequence reference: the text of `ids` (what the streamed deltas must add up to)."""
    return b"".join(token_bytes[i] for i in ids).decode("utf-8", errors="replace")
