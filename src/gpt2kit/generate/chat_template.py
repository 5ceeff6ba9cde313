"""The chat template: how a conversation becomes a GPT-2 prompt, and where the reply ends.

One template for every chat: `gpt2kit chat` in the terminal (`generate/chat.py`) and the HTTP endpoint
`/v1/chat/completions` (`serve/protocol.py`) render the same conversation to the same prompt and cut the
reply at the same stop strings. docs/generation.md ("Chat") describes it for users.

GPT-2 was never trained on a chat format, so there is no "right" template; this one reads like the
transcripts GPT-2 saw on the web, which is what a base model continues sensibly:

    The following is a conversation between a curious user and a helpful AI assistant.
                                         (blank line)
    User: <user text>
    Assistant: <assistant text>
    User: <user text>
    Assistant:                           <- the prompt ends here; the model writes the reply

The first line is the preamble: the system/developer messages (joined by newlines) when there are any, else
`PREAMBLE`. It tells a base model what kind of text follows, so it stays in the transcript longer. Each turn
is its role's prefix (`ROLE_PREFIX`) + ": " + the message text, stripped, + "\\n". The reply ends at the
first stop string: "\\nUser:" or "\\nAssistant:" (the model starts a new turn, which is what a base model
does next) or "\\n\\n" (a blank line ends the transcript; what GPT-2 writes after one is rarely part of the
reply). The reply's leading space, which follows "Assistant:", is not part of the reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpt2kit.errors import InputError

ROLE_PREFIX = {"user": "User", "assistant": "Assistant"}  # role -> the name that starts its lines
SYSTEM_ROLES = ("system", "developer")  # their text replaces the preamble
PREAMBLE = "The following is a conversation between a curious user and a helpful AI assistant."


@dataclass(frozen=True)
class ChatTurn:
    role: str  # system | developer | user | assistant
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    """Renders a conversation to a prompt ending in the assistant's prefix; gives the stops that end a reply."""

    preamble: str = PREAMBLE  # opens a conversation that has no system/developer message ("" = no preamble)

    @property
    def stop(self) -> tuple[str, ...]:
        return (*(f"\n{name}:" for name in ROLE_PREFIX.values()), "\n\n")

    def render(self, turns: Sequence[ChatTurn]) -> str:
        """[turns] -> prompt text. Raises InputError for an empty conversation or an unknown role."""
        if not turns:
            raise InputError("messages is empty: give at least one message, e.g. [{'role': 'user', 'content': 'Hi'}].")
        system = [t.content.strip() for t in turns if t.role in SYSTEM_ROLES and t.content.strip()]
        lines = []
        for t in turns:
            if t.role in SYSTEM_ROLES:
                continue
            if t.role not in ROLE_PREFIX:
                raise InputError(f"message role {t.role!r} is not supported; use system, developer, user or assistant.")
            lines.append(f"{ROLE_PREFIX[t.role]}: {t.content.strip()}\n")
        head = "\n".join(system) if system else self.preamble.strip()
        return (head + "\n\n" if head else "") + "".join(lines) + ROLE_PREFIX["assistant"] + ":"


DEFAULT_TEMPLATE = ChatTemplate()
