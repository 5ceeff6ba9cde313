"""Multi-turn chat with a base GPT-2: a transcript prompt that keeps the whole conversation in the context.

GPT-2 was never instruction-tuned, so "chat" is a completion of a transcript:

    The following is a conversation between a curious user and a helpful AI assistant.

    User: <message 1>
    Assistant: <reply 1>
    User: <message 2>
    Assistant:

and the reply ends at the next "\\nUser:" (or a blank line, or <|endoftext|>). When the transcript no longer
fits the context (n_positions minus max_new_tokens), the oldest turns are dropped; the preamble stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gpt2kit.errors import InputError
from gpt2kit.generate.sampling import SamplingParams
from gpt2kit.generate.text import GenerateOptions, TextGenerator, TokenizerLike
from gpt2kit.model.gpt import GPT

PREAMBLE = "The following is a conversation between a curious user and a helpful AI assistant.\n\n"


@dataclass
class ChatSession:
    model: GPT
    tokenizer: TokenizerLike
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=80, top_k=40, temperature=0.8))
    preamble: str = PREAMBLE
    user: str = "User"
    assistant: str = "Assistant"
    options: GenerateOptions | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._tg = TextGenerator(self.model, self.tokenizer, self.options)
        stops = tuple(dict.fromkeys((*self.params.stop, f"\n{self.user}:", "\n\n")))
        self.params = _replace(self.params, stop=stops, n=1)

    def prompt_for(self, message: str) -> str:
        """The transcript the model completes, oldest turns dropped until it fits."""
        budget = self.model.config.n_positions - self.params.max_new_tokens
        turns = list(self.turns)
        while True:
            text = self.preamble + "".join(f"{self.user}: {u}\n{self.assistant}: {a}\n" for u, a in turns)
            text += f"{self.user}: {message}\n{self.assistant}:"
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


def run_chat(session: ChatSession, read: Callable[[str], str] = input, write: Callable[[str], None] | None = None) -> None:
    """The interactive loop: read a line, stream the reply; '/reset' forgets, '/quit' or EOF ends."""
    import sys

    def out(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    write = write or out
    while True:
        try:
            line = read(f"{session.user}: ")
        except EOFError:
            write("\n")
            return
        cmd = line.strip()
        if cmd in ("/quit", "/exit"):
            return
        if cmd == "/reset":
            session.reset()
            write("(conversation cleared)\n")
            continue
        if not cmd:
            continue
        write(f"{session.assistant}:")
        for piece in session.send(cmd):
            write(piece)
        write("\n")


def _replace(p: SamplingParams, **changes) -> SamplingParams:
    import dataclasses

    return dataclasses.replace(p, **changes)
