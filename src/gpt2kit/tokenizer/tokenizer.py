"""Tokenizer: GPT-2's byte-level BPE, id-for-id with OpenAI's, fully offline.

The fast path is a `tiktoken.Encoding` built from the vendored, hash-checked vocabulary (no download).
The special-token policy is tiktoken's: `encode` refuses text containing `<|endoftext|>` unless you say
how to treat it, because silently turning user text into a control token is a classic prompt-injection
and data-corruption bug. `encode_ordinary` treats it as plain text; `allowed_special` lets it through.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from typing import Literal

import tiktoken

from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import InputError
from gpt2kit.tokenizer.gpt2_vocab import ENDOFTEXT, GPT2_PATTERN, mergeable_ranks


class Tokenizer:
    """GPT-2's tokenizer. `Tokenizer()` loads the vendored vocabulary (cached after the first call)."""

    def __init__(self) -> None:
        self._enc = _encoding()

    # ---- properties -------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        """50257: 50,256 BPE tokens + <|endoftext|>."""
        return self._enc.n_vocab

    @property
    def eot_token(self) -> int:
        """The id of <|endoftext|> (50256): document separator, and GPT-2's BOS for unconditional text."""
        return self._enc.eot_token

    @property
    def special_tokens(self) -> set[str]:
        return set(self._enc.special_tokens_set)

    # ---- encode -----------------------------------------------------------------------------------
    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, treating every character as plain text (`<|endoftext|>` becomes 7 ordinary tokens)."""
        return self._enc.encode_ordinary(_check_text(text))

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Text -> ids. Special-token text is refused unless listed in `allowed_special` (then it becomes
        its id) or removed from `disallowed_special` (then it is encoded as plain text)."""
        try:
            return self._enc.encode(_check_text(text), allowed_special=allowed_special, disallowed_special=disallowed_special)
        except ValueError as e:
            raise InputError(
                f"the text contains the special token {ENDOFTEXT!r}. Pass allowed_special={{{ENDOFTEXT!r}}} to encode it "
                "as the end-of-text token, or use encode_ordinary() to encode it as plain text."
            ) from e

    def encode_batch(self, texts: Sequence[str], *, num_threads: int = 8, ordinary: bool = True) -> list[list[int]]:
        """Many texts at once, in parallel threads (tiktoken releases the GIL)."""
        texts = [_check_text(t) for t in texts]
        if ordinary:
            return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)
        return self._enc.encode_batch(texts, num_threads=num_threads, allowed_special="all", disallowed_special=())

    # ---- decode -----------------------------------------------------------------------------------
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Ids -> the exact bytes (a token can end mid-way through a UTF-8 character)."""
        return self._enc.decode_bytes(self._check_ids(ids))

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Ids -> text; incomplete UTF-8 sequences become U+FFFD (errors='replace') or raise ('strict')."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(self._check_ids([token_id])[0])

    @functools.cached_property
    def token_bytes_table(self) -> list[bytes]:
        """`table[id]` = that token's bytes, for every id in [0, n_vocab): what the engine's detokenizer,
        stop strings and content filter read. Built on first use (~50k lookups), then kept by this object."""
        return [self._enc.decode_single_token_bytes(i) for i in range(self.n_vocab)]

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.n_vocab:
                raise InputError(f"token id {i} is outside GPT-2's vocabulary [0, {self.n_vocab}).")
        return ids

    def __repr__(self) -> str:
        return f"Tokenizer(gpt2, n_vocab={self.n_vocab}, eot_token={self.eot_token})"


def _check_text(text: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"expected text (str), got {type(text).__name__}; decode bytes first, e.g. b.decode('utf-8').")
    return text


@functools.cache
def _encoding() -> tiktoken.Encoding:
    enc = tiktoken.Encoding(
        name="gpt2kit-gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=mergeable_ranks(),
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
        explicit_n_vocab=50257,
    )
    return enc
