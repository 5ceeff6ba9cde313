"""How a token is shown to a person: its exact bytes as readable text.

GPT-2's tokens are byte strings. Most are whole UTF-8 text, often with a leading space (" cat"); some are
pieces of one multi-byte character (an emoji is split over two or three tokens), and decoding those alone
gives U+FFFD. `token_label` keeps what is there: the valid UTF-8 as text, with a leading space shown as
"␣" and newlines/tabs as "↵"/"⇥", and every byte that is not valid UTF-8 on its own as "<0xE2>".
"""

from __future__ import annotations

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def token_label(data: bytes) -> str:
    """A token's bytes -> a one-line readable label (leading space and control characters visible)."""
    parts: list[str] = []
    i = 0
    while i < len(data):
        for j in range(min(len(data), i + 4), i, -1):  # the longest valid UTF-8 piece starting at i
            try:
                parts.append(data[i:j].decode("utf-8"))
                i = j
                break
            except UnicodeDecodeError:
                continue
        else:
            parts.append(f"<0x{data[i]:02X}>")
            i += 1
    text = "".join(parts)
    out = []
    for k, ch in enumerate(text):
        if ch == " ":
            out.append("␣" if k == 0 or text[k - 1] == " " else " ")  # a leading (or repeated) space shows
        else:
            out.append(VISIBLE.get(ch, ch if ch.isprintable() else f"\\x{ord(ch):02x}"))
    return "".join(out)


def token_text(data: bytes) -> str:
    """A token's bytes as plain text for display inside running text (invalid pieces as U+FFFD)."""
    return data.decode("utf-8", errors="replace")
