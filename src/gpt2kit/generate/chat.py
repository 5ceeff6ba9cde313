"""Multi-turn chat with a base GPT-2: the whole conversation, rendered by the chat template, is the prompt.

GPT-2 was never instruction-tuned, so "chat" is a completion of a transcript (`chat_template.py` has the
format, shared with the HTTP chat endpoint). When the transcript no longer fits the context (n_positions
minus max_new_tokens), the oldest turns are dropped; the preamble stays. The terminal loop that reads
messages and prints replies is the CLI's (`gpt2kit/cli/chat.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

from gpt2kit.errors import InputError
from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, ChatTemplate, ChatTurn
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.text import GenerateOptions, TextGenerator, TokenizerLike
from gpt2kit.model.gpt import GPT


@dataclass
class ChatSession:
    model: GPT
    tokenizer: TokenizerLike
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=80, top_k=40, temperature=0.8))
    template: ChatTemplate = DEFAULT_TEMPLATE
    options: GenerateOptions | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)  # (user message, assistant reply), oldest first

    def __post_init__(self) -> None:
        options = self.options or GenerateOptions()
        if options.huge_pages == "auto":  # a chat lives on: its engine pays the one-time cost
            options = dataclasses.replace(options, huge_pages="on")
        self._tg = TextGenerator(self.model, self.tokenizer, options)
        stops = tuple(dict.fromkeys((*self.params.stop, *self.template.stop)))  # the caller's first, as the server does
        self.params = dataclasses.replace(self.params, stop=stops, n=1)

    def prompt_for(self, message: str) -> str:
        """The transcript the model completes, oldest turns dropped until it fits."""
        budget = self.model.config.n_positions - self.params.max_new_tokens
        turns = list(self.turns)
        while True:
            conversation = [t for u, a in turns for t in (ChatTurn("user", u), ChatTurn("assistant", a))]
            text = self.template.render([*conversation, ChatTurn("user", message)])
            if len(self._tg.encode(text)) <= budget:
                return text
            if not turns:
                raise InputError(f"the message is too long for the context ({budget} tokens after max_new_tokens); shorten it.")
            turns.pop(0)

    def send(self, message: str) -> Iterator[str]:
        """Stream the assistant's reply to `message`; the turn is recorded when the reply is complete."""
        message = message.strip()
        if not message:
            raise InputError("empty message.")
        pieces = []
        for piece in self._tg.stream_text(self.prompt_for(message), self.params):
            pieces.append(piece)
            yield piece
        self.turns.append((message, "".join(pieces).strip()))

    def reset(self) -> None:
        self.turns.clear()
