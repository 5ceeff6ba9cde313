"""A small, readable, pure-Python GPT-2 BPE: OpenAI's original algorithm (gpt-2/src/encoder.py).

This is the reference the fast tiktoken path is tested against, token for token. It is slow (tens
of thousands of tokens per second, more with its per-word cache); use `Tokenizer` for real work.

How GPT-2 tokenizes:
  1. The regex `GPT2_PATTERN` splits text into pre-tokens ("Hello", " world", "'s", "  ").
  2. Each pre-token's UTF-8 bytes are mapped to printable unicode characters (`bytes_to_unicode`),
     so every byte is a symbol and no text is ever "unknown".
  3. Adjacent symbols are merged greedily, always the pair that appears earliest in vocab.bpe,
     until no mergeable pair is left; each resulting symbol is one token in encoder.json.
"""

from __future__ import annotations

import functools

import regex

from gpt2kit.tokenizer.gpt2_vocab import GPT2_PATTERN, encoder_and_merges


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> a printable unicode char. Printable ASCII/Latin-1 map to themselves; the other 68 bytes
    (controls, space, …) map to chars from U+0100 on, so BPE never sees whitespace or control bytes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


class ReferenceBPE:
    """encode(text) -> ids and decode(ids) -> text, exactly as OpenAI's encoder.py (no special tokens)."""

    def __init__(self) -> None:
        self.encoder, merges = encoder_and_merges()
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.bpe_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        self.cache: dict[str, list[str]] = {}

    def bpe(self, word: str) -> list[str]:
        """Merge the symbols of one pre-token (already in the unicode alphabet) into BPE tokens."""
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break  # no pair left that vocab.bpe knows how to merge
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of `best`, left to right
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[tok] for tok in self.bpe(word))
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(self.byte_decoder[c] for i in ids for c in self.decoder[i])

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
