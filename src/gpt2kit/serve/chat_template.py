"""The plain-text chat template: how chat messages become a GPT-2 prompt.

GPT-2 was never trained on a chat format, so there is no "right" template; this one reads like the
transcripts GPT-2 saw on the web, which is what makes a base model continue them sensibly:

    <system text>                        (only if there is a system/developer message)
                                         (blank line)
    User: <user text>
    Assistant: <assistant text>
    User: <user text>
    Assistant:                           <- the prompt ends here; the model writes the reply

Each turn is one line prefix (`User: ` / `Assistant: `) + the message text + "\\n". The reply is cut at
the start of the next turn: the stop strings "\\nUser:" and "\\nAssistant:" are always added (a reply
that runs into a new turn is what a base model does next), and the reply's leading space is removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpt2kit.errors import InputError

ROLE_PREFIX = {"user": "User", "assistant": "Assistant"}
SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True)
class ChatTurn:
    role: str  # system | developer | user | assistant
    content: str


@dataclass(frozen=True)
class ChatTemplate:
    """Renders a conversation to a prompt ending in the assistant's prefix; gives the stops that end a reply."""

    user_prefix: str = "User:"
    assistant_prefix: str = "Assistant:"

    @property
    def stop(self) -> tuple[str, ...]:
        return ("\n" + self.user_prefix, "\n" + self.assistant_prefix)

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
            prefix = self.user_prefix if t.role == "user" else self.assistant_prefix
            lines.append(f"{prefix} {t.content.strip()}\n")
        head = "\n".join(system) + "\n\n" if system else ""
        return head + "".join(lines) + self.assistant_prefix


DEFAULT_TEMPLATE = ChatTemplate()
