"""Stop strings matched on the output bytes across token boundaries, without ever emitting part of one.

GPT-2's tokens are byte sequences, so the output text is the concatenation of the tokens' bytes. A stop
string can begin in one token and end three tokens later ("\\n\\nQ:" = "\\n" + "\\n" + "Q" + ":"), so the
matcher keeps a small buffer: bytes that might be the start of a stop string are held back until the
next token shows whether they are (then the output ends just before the stop string) or are not (then
they are released). Matching UTF-8 bytes is matching text: UTF-8 is self-synchronising, so the encoded
stop string occurs in the bytes exactly where the string occurs in the text.

    m = StopStringMatcher(["\\n\\n"])
    m.feed(b"Hello\\n")   -> (b"Hello", None)      # "\\n" is held back: it may start "\\n\\n"
    m.feed(b"\\nBye")     -> (b"", "\\n\\n")         # stop found: nothing more is emitted
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class FinishReason(str, Enum):
    """Why a sequence ended (the values are OpenAI's `finish_reason`, plus `cancelled` and `error`)."""

    STOP = "stop"  # <|endoftext|>, a stop token or a stop string
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"  # the caller cancelled it
    ERROR = "error"  # this sequence failed (no token could be drawn, or sampling raised); its neighbours go on


class StopStringMatcher:
    """Feed output bytes token by token; get back the bytes that are safe to emit and the stop hit."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s.encode("utf-8") for s in stops]
        self._buf = b""  # held-back bytes: a suffix of the output that is a prefix of some stop string

    def feed(self, data: bytes) -> tuple[bytes, str | None]:
        """Add one token's bytes. Returns (bytes to emit now, the stop string found or None).

        After a stop is found the output is over: the bytes before the stop are returned, the stop
        string and everything after it are dropped."""
        if not self.stops:
            return data, None
        buf = self._buf + data
        hit, cut = None, -1
        for s in self.stops:  # the earliest occurrence wins; ties go to the longer stop string
            i = buf.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                hit, cut = s, i
        if hit is not None:
            self._buf = b""
            return buf[:cut], hit.decode("utf-8")
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):  # longest proper prefix of s that ends buf
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._buf = buf[len(buf) - hold :]
        return buf[: len(buf) - hold], None

    def flush(self) -> bytes:
        """The output ended without a stop string: release what was held back."""
        out, self._buf = self._buf, b""
        return out
