"""Chat with a GPT-2 model in the terminal: a multi-turn transcript kept in the context.

Type a message and press Enter; '/reset' forgets the conversation, '/quit' or Ctrl-D ends. A base GPT-2
continues a "User: / Assistant:" transcript; it was never trained to follow instructions.
"""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments, add_sampling_arguments

HELP = "interactive multi-turn chat (the conversation stays in the context)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preamble", default=None, help="text that opens the transcript (default: a one-line description)")
    add_model_arguments(p)
    add_sampling_arguments(p, max_new_tokens=80)


def run(args: argparse.Namespace) -> None:
    from gpt2kit.cli.common import generate_options, load_model_and_tokenizer, sampling_params
    from gpt2kit.generate.chat import PREAMBLE, ChatSession, run_chat

    params, options = sampling_params(args), generate_options(args)
    model, tok = load_model_and_tokenizer(args)
    preamble = PREAMBLE if args.preamble is None else args.preamble.rstrip("\n") + "\n\n"
    run_chat(ChatSession(model, tok, params, preamble=preamble, options=options))
