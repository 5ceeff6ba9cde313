"""Engine logprob records -> OpenAI's two response shapes. Formatting only: the numbers come from the
engine (`gpt2kit.generate.logprobs`: log-softmax of the raw next-token distribution).

Legacy completions (`logprobs: k`, k in 0..5), per choice:

    {"tokens": [str], "token_logprobs": [float | None], "top_logprobs": [{str: float} | None],
     "text_offset": [int]}

  `top_logprobs` holds the k most likely tokens plus the chosen one (so up to k + 1 entries, as OpenAI says
  "the API will always return the logprob of the sampled token"). With `echo` the prompt's tokens come
  first and the first has null logprobs. `text_offset` is each token's character offset in the choice's
  text (echoed prompt included), counted over the tokens' decoded texts (vLLM's convention).

Chat (`logprobs: true`, `top_logprobs: k` in 0..20), per choice:

    {"content": [{"token": str, "logprob": float, "bytes": [int], "top_logprobs": [{token, logprob, bytes}]}],
     "refusal": None}

A token's text is its bytes decoded with errors="replace": a token holding part of a UTF-8 character
reads as U+FFFD, and `bytes` (chat) gives the exact bytes.
"""

from __future__ import annotations

from gpt2kit.generate.logprobs import TokenLogprob
from gpt2kit.tokenizer import Tokenizer


def token_text(tok: Tokenizer, token: int) -> str:
    return tok.token_bytes(token).decode("utf-8", errors="replace")


class ChoiceLogprobs:
    """One choice's logprobs as they arrive; `take()` formats what came since the last take (a stream
    chunk) or everything (a whole response)."""

    def __init__(self, tok: Tokenizer, chat: bool) -> None:
        self.tok, self.chat = tok, chat
        self.offset = 0  # text_offset of the next token (completions)
        self._pending: list[tuple[int, TokenLogprob | None]] = []

    def add_prompt(self, ids: list[int], records: list[TokenLogprob | None]) -> None:
        """The echoed prompt's tokens ([T] ids, [T] records, the first None)."""
        assert len(ids) == len(records), "prompt logprobs must align with the prompt's tokens"
        self._pending.extend(zip(ids, records))

    def add(self, record: TokenLogprob) -> None:
        self._pending.append((record.token, record))

    def take(self, always: bool = False) -> dict | None:
        """The pending tokens in OpenAI's shape, then forget them; None when nothing is pending (unless always)."""
        items, self._pending = self._pending, []
        if not items and not always:
            return None
        return self._chat(items) if self.chat else self._completion(items)

    def _completion(self, items: list[tuple[int, TokenLogprob | None]]) -> dict:
        tokens, logprobs, tops, offsets = [], [], [], []
        for token, rec in items:
            text = token_text(self.tok, token)
            tokens.append(text)
            offsets.append(self.offset)
            self.offset += len(text)
            if rec is None:  # the first token of an echoed prompt: nothing before it to condition on
                logprobs.append(None)
                tops.append(None)
                continue
            logprobs.append(rec.logprob)
            top: dict[str, float] = {}
            for alt, lp in rec.top:  # most likely first: two ids with the same text keep the likelier
                top.setdefault(token_text(self.tok, alt), lp)
            top.setdefault(text, rec.logprob)
            tops.append(top)
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}

    def _chat(self, items: list[tuple[int, TokenLogprob | None]]) -> dict:
        content = []
        for token, rec in items:
            assert rec is not None, "chat logprobs cover generated tokens only"
            entry = self._entry(token, rec.logprob)
            entry["top_logprobs"] = [self._entry(alt, lp) for alt, lp in rec.top]
            content.append(entry)
        return {"content": content, "refusal": None}

    def _entry(self, token: int, logprob: float) -> dict:
        data = self.tok.token_bytes(token)
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}
