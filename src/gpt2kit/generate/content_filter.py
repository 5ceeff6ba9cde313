"""Content filter: banned words/phrases that decoding may never complete.

The filter works on bytes, not on token ids, so a phrase is blocked however the model would spell it in
tokens ("badword" = "bad" + "word" or "b" + "adw" + "ord"): before each draw it masks every token whose
bytes, appended to the output so far, would complete a banned phrase. Matching is case-insensitive for
ASCII letters (both sides lowercased) and is a plain substring match, so list whole words with a leading
space (" ass") when a bare substring would also hit innocent words ("class").

For each phrase P, the tokens that can complete it are found once with a sorted index of the vocabulary:
  - tokens whose bytes contain P: always banned;
  - for each split i, tokens whose bytes start with P[i:]: banned while the output ends with P[:i].
The output tail before generation includes the prompt, so a phrase begun in the prompt is not completed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch


class VocabIndex:
    """The lowercased token-bytes table, sorted, for fast 'tokens starting with X' queries (built once)."""

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        self.lower = [b.lower() for b in token_bytes]
        order = sorted(range(len(self.lower)), key=self.lower.__getitem__)
        self._sorted_ids = order
        self._sorted_bytes = [self.lower[i] for i in order]

    def starting_with(self, prefix: bytes) -> list[int]:
        """Ids of the tokens whose lowercased bytes start with `prefix` (a contiguous run of the sorted table)."""
        lo = bisect.bisect_left(self._sorted_bytes, prefix)
        hi = lo
        n = len(self._sorted_bytes)
        while hi < n and self._sorted_bytes[hi].startswith(prefix):
            hi += 1
        return self._sorted_ids[lo:hi]

    def containing(self, needle: bytes) -> list[int]:
        return [i for i, b in enumerate(self.lower) if needle in b]


class BannedPhraseFilter:
    """One request's filter state: feed it the output bytes, ask which token ids are banned next."""

    def __init__(self, phrases: Sequence[str], index: VocabIndex, prompt_tail: bytes = b"") -> None:
        self.phrases = [p.encode("utf-8").lower() for p in phrases]
        always: set[int] = set()
        self._completions: list[tuple[bytes, bytes, list[int]]] = []  # (needed tail P[:i], P[i:], ids)
        for p in self.phrases:
            always.update(index.containing(p))
            for i in range(1, len(p)):
                ids = index.starting_with(p[i:])
                if ids:
                    self._completions.append((p[:i], p[i:], ids))
        self._always = sorted(always)
        self._keep = max((len(p) for p in self.phrases), default=1) - 1  # tail bytes that can matter
        self._tail = prompt_tail.lower()[-self._keep :] if self._keep else b""

    def feed(self, data: bytes) -> None:
        if self._keep:
            self._tail = (self._tail + data.lower())[-self._keep :]

    def banned_ids(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n,) long: the token ids that would complete a banned phrase after the current output."""
        ids = list(self._always)
        for head, _rest, completing in self._completions:
            if self._tail.endswith(head):
                ids.extend(completing)
        return torch.tensor(ids, dtype=torch.long, device=device)
