"""Chat with a GPT-2 model in the terminal: a multi-turn transcript kept in the context.

Type a message and press Enter; '/reset' forgets the conversation, '/quit' or Ctrl-D ends. A base GPT-2
continues a "User: / Assistant:" transcript (the chat template in gpt2kit/generate/chat_template.py, the
same one the HTTP chat endpoint uses); it was never trained to follow instructions.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpt2kit.cli.common import add_model_arguments, add_sampling_arguments

if TYPE_CHECKING:
    from gpt2kit.generate.chat import ChatSession


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preamble", default=None, help="text that opens the transcript (default: a one-line description)")
    add_model_arguments(p)
    add_sampling_arguments(p, max_new_tokens=80)


def run(args: argparse.Namespace) -> None:
    from gpt2kit.cli.common import generate_options, load_model_and_tokenizer, sampling_params
    from gpt2kit.generate.chat import ChatSession
    from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, ChatTemplate

    params, options = sampling_params(args), generate_options(args)
    model, tok = load_model_and_tokenizer(args)
    template = DEFAULT_TEMPLATE if args.preamble is None else ChatTemplate(preamble=args.preamble)
    run_chat(ChatSession(model, tok, params, template=template, options=options))


def run_chat(session: ChatSession, read: Callable[[str], str] = input, write: Callable[[str], None] | None = None) -> None:
    """The interactive loop over a ChatSession: read a line, stream the reply; '/reset' forgets, '/quit' or EOF ends."""
    from gpt2kit.generate.chat_template import ROLE_PREFIX

    def out(s: str) -> None:
        sys.stdout.write(s)
        sys.stdout.flush()

    write = write or out
    while True:
        try:
            line = read(f"{ROLE_PREFIX['user']}: ")
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
        write(f"{ROLE_PREFIX['assistant']}:")
        for piece in session.send(cmd):
            write(piece)
        write("\n")
